"""Agents' external phone numbers, kept in the site's etcd so they outlive a node restart.

One key per agent, `/callmesh/sites/SITE/phones/AGENT` -> the number (UTF-8), written without a
lease: the number is part of the agent's profile, not of its session. Every node of the site
follows them (`PhoneBook.follow`): it reads them all when SIP starts, then watches the prefix, so
a number registered or removed at another node of the site reaches every node's lines
(sip/phones.py) within a watch event. Each node watches the agents' offers for those numbers;
only the agent's home node gets its offers, so only that node dials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Protocol

from node.etcd import EtcdUnavailable, EventKind, WatchEvent
from sip.phones import BadNumber, check_number

log = logging.getLogger(__name__)

_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 8.0


class Stored(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def value(self) -> bytes: ...


class Store(Protocol):
    """What the phone book needs of the site's etcd (node/etcd.py's Etcd)."""

    async def get_prefix(self, prefix: str) -> tuple[Sequence[Stored], int]: ...

    async def put(self, key: str, value: bytes, *, leased: bool = False) -> int: ...

    async def delete(self, key: str) -> None: ...

    def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[WatchEvent, None]: ...


class Lines(Protocol):
    """Where followed numbers go (sip/phones.py's Phones)."""

    @property
    def numbers(self) -> Mapping[str, str]: ...

    def register(self, agent_id: str, number: str) -> None: ...


def phones_prefix(site: str) -> str:
    return f"/callmesh/sites/{site}/phones/"


class PhoneBook:
    def __init__(self, store: Store, site: str) -> None:
        self._store = store
        self._prefix = phones_prefix(site)

    async def save(self, agent_id: str, number: str) -> None:
        """Keep the agent's number ("" forgets it)."""
        key = self._prefix + agent_id
        if number:
            await self._store.put(key, check_number(number).encode())
        else:
            await self._store.delete(key)

    async def follow(self, lines: Lines) -> None:
        """Line up every stored number, then keep `lines` equal to the site's numbers as other
        nodes change them. Runs until cancelled (or the etcd client closes)."""
        numbers, revision = await self._load_until_read()
        for agent_id, number in numbers.items():
            lines.register(agent_id, number)
        watch = self._store.watch_prefix(self._prefix, revision + 1)
        async with contextlib.aclosing(watch):
            async for event in watch:
                agent_id = event.key.removeprefix(self._prefix)
                if event.kind is EventKind.DELETE:
                    number = ""
                else:
                    number = self._number(agent_id, event.value) or ""
                if lines.numbers.get(agent_id, "") != number:  # the writer's own, lined up
                    lines.register(agent_id, number)

    async def _load_until_read(self) -> tuple[dict[str, str], int]:
        delay = _RETRY_FIRST_S
        while True:
            try:
                return await self._load()
            except (EtcdUnavailable, ConnectionError) as error:
                log.warning("agents' phones not read yet (etcd), again in %.1f s: %s", delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _load(self) -> tuple[dict[str, str], int]:
        """Every agent's number in the site, and the revision read at; an unusable stored value
        is skipped and logged."""
        found, revision = await self._store.get_prefix(self._prefix)
        numbers: dict[str, str] = {}
        for item in found:
            agent_id = item.key.removeprefix(self._prefix)
            number = self._number(agent_id, item.value)
            if number:
                numbers[agent_id] = number
        return numbers, revision

    @staticmethod
    def _number(agent_id: str, stored: bytes) -> str | None:
        try:
            return check_number(stored.decode())
        except (UnicodeDecodeError, BadNumber) as error:
            log.warning("agent %s phone: stored number refused: %s", agent_id, error)
            return None
