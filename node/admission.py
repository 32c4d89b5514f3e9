"""Admission control: a node near the end of its core refuses new media calls.

aiortc's queues are unbounded: past about 90 % of a core, audio latency climbs to seconds with no
loss (DESIGN.md §7), so every call on the node suffers. Before that point the node refuses new
calls that bring media (WebRTC callers, SIP INVITEs) with a clear error naming other nodes to try;
calls in progress, agents' legs and signalling-only calls go on. The node is one process with one
event loop, so its load is the share of one core its process used, smoothed over a few seconds.

`refusal` is the pure decision; `CpuMeter` samples the process's CPU time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

SAMPLE_S = 0.5
SMOOTHING = 0.3
"""Weight of the newest sample in the moving average (about 1.5 s of memory at SAMPLE_S)."""


class Overloaded(Exception):
    code = "node_overloaded"


@dataclass(frozen=True, slots=True)
class Limits:
    max_cpu_share: float = 0.85
    """New media calls are refused while the process uses more than this share of one core
    (decoder threads count too, so it may pass 1); 0: no CPU limit."""
    max_media_calls: int = 0
    """New media calls are refused while this many are in progress here (0: no cap)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_cpu_share <= 1:
            raise ValueError(f"max_cpu_share must be in [0, 1], got {self.max_cpu_share}")
        if self.max_media_calls < 0:
            raise ValueError(f"max_media_calls must be >= 0, got {self.max_media_calls}")


def refusal(limits: Limits, cpu_share: float, media_calls: int) -> str:
    """Why a new media call is refused now ("" to admit it)."""
    if limits.max_cpu_share and cpu_share > limits.max_cpu_share:
        return f"at {cpu_share:.0%} of a core (limit {limits.max_cpu_share:.0%})"
    if limits.max_media_calls and media_calls >= limits.max_media_calls:
        return f"carrying {media_calls} media calls (limit {limits.max_media_calls})"
    return ""


class CpuMeter:
    """The smoothed share of one core this process used; `run()` samples it until cancelled."""

    def __init__(
        self,
        cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        on_sample: Callable[[float], None] = lambda share: None,
    ) -> None:
        self._on_sample = on_sample
        self._cpu = cpu
        self._clock = clock
        self._last = (clock(), cpu())
        self.share = 0.0

    def sample(self) -> float:
        now, used = self._clock(), self._cpu()
        elapsed = now - self._last[0]
        if elapsed > 0:
            current = max(0.0, used - self._last[1]) / elapsed
            self.share += SMOOTHING * (current - self.share)
        self._last = (now, used)
        self._on_sample(self.share)
        return self.share

    async def run(self, every_s: float = SAMPLE_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.sample()


class Admission:
    """The node's gate for new media calls: `check()` raises Overloaded with what to do."""

    def __init__(
        self,
        node_id: str,
        limits: Limits,
        meter: CpuMeter,
        media_calls: Callable[[], int],
        others: Callable[[], list[str]],
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._node_id = node_id
        self.limits = limits
        self.meter = meter
        self._media_calls = media_calls
        self._others = others
        self._on_refused = on_refused

    def check(self) -> None:
        why = refusal(self.limits, self.meter.share, self._media_calls())
        if not why:
            return
        self._on_refused()
        others = self._others()
        where = ", ".join(others[:3]) if others else "none is known up"
        raise Overloaded(
            f"node {self._node_id} is {why}: it takes no new media calls now; "
            f"place the call at another node ({where}) or try again in a few seconds"
        )
