"""I4's figure: the first poll after the last heal that found every registry equal."""

from __future__ import annotations

import time
from typing import Any

from chaos.convergence import RegistryWatch, Sample, agree, converged_after

A = {"agents": [{"agent_id": "ann", "state": "available"}], "queues": [], "nodes": ["n1", "n2"]}
B = {**A, "agents": [{"agent_id": "ann", "state": "talking"}]}


def test_registries_agree_only_when_every_node_answers_the_same() -> None:
    assert agree({"n1": A, "n2": dict(A)}, ["n1", "n2"])
    assert not agree({"n1": A, "n2": B}, ["n1", "n2"])
    assert not agree({"n1": A}, ["n1", "n2"])  # n2 did not answer
    assert not agree({"n1": A, "n2": "oops"}, ["n1", "n2"])
    assert agree({"n1": {**A, "other": 1}, "n2": A}, ["n1", "n2"])  # only what must be equal


def test_the_figure_counts_from_the_last_heal_to_the_first_agreement_begun_after_it() -> None:
    samples = [
        Sample(9.0, 9.1, True),  # before the heal at 10
        Sample(9.9, 10.2, True),  # began before the heal: may show the state before it
        Sample(10.3, 10.4, False),
        Sample(11.0, 11.25, True),
        Sample(12.0, 12.1, True),
    ]
    assert converged_after(samples, 10.0) == 1.25
    assert converged_after(samples[:3], 10.0) is None
    assert converged_after(samples, 0.0) == 9.1
    assert converged_after([], 10.0) is None


class FakeClient:
    """Two nodes whose registries differ until `equal_at` (monotonic seconds)."""

    def __init__(self, equal_at: float) -> None:
        self.equal_at = equal_at

    async def get(self, node: str, path: str) -> tuple[int, Any]:
        assert path == "/registry"
        late = time.monotonic() < self.equal_at
        return 200, (B if late and node == "n2" else A)


async def test_the_watch_measures_how_long_after_the_heal_the_registries_agree() -> None:
    heal = time.monotonic()
    async with RegistryWatch(FakeClient(heal + 0.5), ["n1", "n2"], every_s=0.05) as watch:
        took = await watch.converged_after(heal, bound_s=5.0)
    assert took is not None
    assert 0.5 <= took < 1.5
    async with RegistryWatch(FakeClient(heal + 60), ["n1", "n2"], every_s=0.05) as watch:
        now = time.monotonic()
        assert await watch.converged_after(now, bound_s=0.3) is None
    assert watch.samples
    assert not any(s.agreed for s in watch.samples)
