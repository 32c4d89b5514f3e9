"""Which nodes this node's offers could not reach lately, so that routing skips their agents.

A site lost whole (its nodes and its etcd) leaves its agents in the registry as they were: only an
agent's home node may write its record (I5), and the home is gone. Without this, every call's
routing round would offer to those agents first and wait out a gRPC deadline for each. A failed
offer (a timeout or a refused connection) marks the agent's home node unreachable for a backoff
that doubles on each failure in a row, up to a cap; when it runs out, one offer goes through as a
probe (the others keep skipping the node until the probe's answer or its window ends); any answer,
yes or no, clears the mark. Pure and synchronous: the switchboard reports outcomes and asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 8.0


@dataclass(slots=True)
class _Mark:
    failures: int
    until: float


class Reachability:
    def __init__(
        self,
        *,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < first_backoff_s <= max_backoff_s:
            raise ValueError("backoffs must satisfy 0 < first_backoff_s <= max_backoff_s")
        self._first = first_backoff_s
        self._max = max_backoff_s
        self._clock = clock
        self._marks: dict[str, _Mark] = {}

    def failed(self, node: str) -> float:
        """An offer to `node` timed out or could not connect; the seconds it is now skipped."""
        mark = self._marks.get(node)
        failures = 1 if mark is None else mark.failures + 1
        backoff = min(self._max, self._first * 2.0 ** (failures - 1))
        self._marks[node] = _Mark(failures, self._clock() + backoff)
        return backoff

    def answered(self, node: str) -> None:
        """`node` answered an offer (either way): it is reachable."""
        self._marks.pop(node, None)

    def usable(self, node: str) -> bool:
        """Whether to offer to an agent of `node` now. Past its backoff, the first asker gets
        True (the probe) and the node stays skipped for one more first backoff meanwhile."""
        mark = self._marks.get(node)
        if mark is None:
            return True
        now = self._clock()
        if now < mark.until:
            return False
        mark.until = now + self._first
        return True

    def unreachable(self) -> list[str]:
        """The nodes marked now (skipped or being probed), sorted."""
        return sorted(self._marks)
