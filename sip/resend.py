"""Retransmission over UDP (RFC 3261 17): a message is sent again after T1, then at doubling
intervals capped at T2, until stopped (its answer or ACK came) or 64*T1 has passed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

T1_S = 0.5
T2_S = 4.0
GIVE_UP_S = 64 * T1_S


class Resender:
    """Timers by key; `start` replaces a running one with the same key."""

    def __init__(self) -> None:
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._timers

    def start(
        self,
        key: Hashable,
        send: Callable[[], None],
        *,
        cap_s: float = T2_S,
        on_give_up: Callable[[], None] | None = None,
    ) -> None:
        self.stop(key)
        loop = asyncio.get_running_loop()

        def again(interval: float, spent: float) -> None:
            if spent >= GIVE_UP_S:
                self._timers.pop(key, None)
                if on_give_up is not None:
                    on_give_up()
                return
            send()
            wait = min(interval * 2, cap_s)
            self._timers[key] = loop.call_later(wait, again, wait, spent + wait)

        self._timers[key] = loop.call_later(T1_S, again, T1_S, T1_S)

    def stop(self, key: Hashable) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
