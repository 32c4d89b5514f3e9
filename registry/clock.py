"""The hybrid logical clock (Kulkarni et al. 2014) that orders the registry's writes.

A timestamp is one integer: 48 bits of Unix milliseconds, then a 16-bit counter. Packed this way
the HLC rules become integer maxima, and a counter overflow carries into the milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from registry.errors import ClockSkew

COUNTER_BITS = 16
MAX_TIMESTAMP = (1 << 64) - 1


def wall_ms() -> int:
    """Milliseconds since the Unix epoch from the system clock."""
    return time.time_ns() // 1_000_000


def pack(ms: int, counter: int = 0) -> int:
    """Build a timestamp from milliseconds and a counter."""
    return (ms << COUNTER_BITS) | counter


def millis(timestamp: int) -> int:
    """The physical part of a timestamp, in Unix milliseconds."""
    return timestamp >> COUNTER_BITS


class HybridClock:
    """Issues strictly increasing timestamps close to physical time.

    `physical_ms` is injectable for tests. A remote timestamp more than `max_ahead_ms` ahead of
    the physical clock is refused with ClockSkew and counted in `refused`.
    """

    def __init__(
        self, physical_ms: Callable[[], int] = wall_ms, *, max_ahead_ms: int = 500
    ) -> None:
        if max_ahead_ms < 0:
            raise ValueError(f"max_ahead_ms must be >= 0, got {max_ahead_ms}")
        self._physical_ms = physical_ms
        self._max_ahead_ms = max_ahead_ms
        self._last = 0
        self.refused = 0

    @property
    def last(self) -> int:
        """The latest timestamp issued or observed."""
        return self._last

    def now(self) -> int:
        """A timestamp for a local event, greater than every one issued or observed before."""
        self._last = max(self._last + 1, self._physical_ms() << COUNTER_BITS)
        return self._last

    def check(self, remote: int) -> None:
        """Refuse (and count) a remote timestamp too far ahead of the physical clock."""
        limit_ms = self._physical_ms() + self._max_ahead_ms
        if remote >> COUNTER_BITS > limit_ms or remote > MAX_TIMESTAMP:
            self.refused += 1
            raise ClockSkew(
                f"remote timestamp {millis(remote)} ms is more than {self._max_ahead_ms} ms "
                f"ahead of the local clock ({limit_ms - self._max_ahead_ms} ms)"
            )

    def observe(self, remote: int) -> None:
        """Take in a remote timestamp (checked first); later local timestamps will exceed it."""
        self.check(remote)
        if remote > self._last:
            self._last = remote
