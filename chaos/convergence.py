"""I4's figure: how long after the last heal every node's registry is the same.

A `RegistryWatch` polls every node's GET /registry (all at once, every `every_s`) for as long as it
runs and keeps whether each poll found them all equal; `converged_after(samples, since)` reads
the first agreement that began after the last heal (pure). A poll that began before the heal
does not count: it may show the state from before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of every node's registry: when it began and ended (monotonic seconds), and
    whether every node answered with the same registry."""

    began: float
    ended: float
    agreed: bool


def comparable(view: Mapping[str, Any]) -> str:
    """What must be equal between two nodes' GET /registry: agents, queues, nodes."""
    return repr((view.get("agents"), view.get("queues"), view.get("nodes")))


def agree(views: Mapping[str, object], nodes: Sequence[str]) -> bool:
    """Every node answered, and every answer is the same registry."""
    answers = [views.get(node) for node in nodes]
    found = {comparable(a) for a in answers if isinstance(a, Mapping)}
    return len(found) == 1 and all(isinstance(a, Mapping) for a in answers)


def converged_after(samples: Sequence[Sample], since: float) -> float | None:
    """Seconds from `since` (the last heal) to the end of the first agreeing poll that began
    after it; None when no such poll was seen."""
    for sample in samples:
        if sample.began >= since and sample.agreed:
            return round(sample.ended - since, 2)
    return None


class Reader(Protocol):
    """What the watch needs of chaos/client.py's Client (status 0 when a node is unreachable)."""

    async def get(self, node: str, path: str) -> tuple[int, Any]: ...


class RegistryWatch:
    """`async with RegistryWatch(client, nodes)`: polls until exit (its task is awaited there)."""

    def __init__(self, client: Reader, nodes: Sequence[str], every_s: float = 0.25) -> None:
        self.client = client
        self.nodes = list(nodes)
        self.every_s = every_s
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        began = time.monotonic()
        answers = await asyncio.gather(*(self.client.get(n, "/registry") for n in self.nodes))
        views = {
            n: view for n, (status, view) in zip(self.nodes, answers, strict=True) if status == 200
        }
        self.samples.append(Sample(began, time.monotonic(), agree(views, self.nodes)))

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            await self._poll()
            await asyncio.sleep(max(0.0, began + self.every_s - time.monotonic()))

    async def converged_after(self, since: float, bound_s: float) -> float | None:
        """Wait until the registries agreed after `since`, or until `bound_s` past it; the
        seconds it took, or None."""
        deadline = since + bound_s
        while True:
            found = converged_after(self.samples, since)
            if found is not None or time.monotonic() > deadline:
                return found
            await asyncio.sleep(min(self.every_s, max(0.0, deadline - time.monotonic()) + 0.01))

    async def __aenter__(self) -> RegistryWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
