"""Events for the agents homed on this node (offers, releases, state), fanned out to their
subscribers (the agent page's websocket). A slow subscriber loses its oldest events, never
blocks the node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

MAX_QUEUED = 100


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    def publish(self, agent_id: str, event: dict[str, Any]) -> None:
        for queue in self._subscribers.get(agent_id, ()):
            if queue.full():
                queue.get_nowait()  # drop the oldest: the page re-reads state on reconnect
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self, agent_id: str) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED)
        self._subscribers.setdefault(agent_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(agent_id, set())
            subscribers.discard(queue)
            if not subscribers:
                self._subscribers.pop(agent_id, None)

    def subscribers(self, agent_id: str) -> int:
        return len(self._subscribers.get(agent_id, ()))
