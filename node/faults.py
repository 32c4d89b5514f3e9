"""Fault injection for tests and chaos runs (only with `fault_injection`): links to other nodes
cut (gossip and the call exchange alike) and the registry clock skewed.

POST /debug/faults drives it. A node cuts only its own outgoing links, so a partition between
two groups of nodes is each side blocking the other's gRPC addresses (chaos/nemesis.py does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from registry.clock import wall_ms

log = logging.getLogger(__name__)

MAX_CLOCK_OFFSET_MS = 600_000


class _Gossip(Protocol):
    def block(self, addresses: Iterable[str]) -> None: ...


class _Link(Protocol):
    blocked: frozenset[str]


class SkewedClock:
    """The physical clock the node's HybridClock reads: the system clock plus an offset."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return wall_ms() + self.offset_ms


class NodeFaults:
    def __init__(self, gossip: _Gossip, link: _Link, clock: SkewedClock) -> None:
        self._gossip = gossip
        self._link = link
        self._clock = clock
        self.blocked: frozenset[str] = frozenset()

    @property
    def clock_offset_ms(self) -> int:
        return self._clock.offset_ms

    def block(self, addresses: Iterable[str]) -> None:
        """Cut the links to these gRPC addresses (host:port); an empty list heals them all."""
        self.blocked = frozenset(addresses)
        self._link.blocked = self.blocked
        self._gossip.block(self.blocked)

    def skew(self, offset_ms: int) -> None:
        """Run the registry clock `offset_ms` ahead (negative: behind) of the system clock."""
        if not -MAX_CLOCK_OFFSET_MS <= offset_ms <= MAX_CLOCK_OFFSET_MS:
            raise ValueError(f"clock offset must be within ±{MAX_CLOCK_OFFSET_MS} ms")
        self._clock.offset_ms = offset_ms
        log.warning("registry clock skewed by %+d ms", offset_ms)
