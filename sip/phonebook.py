"""Agents' external phone numbers, kept in the site's etcd so they outlive a node restart.

One key per agent, `/callmesh/sites/SITE/phones/AGENT` -> the number (UTF-8), written without a
lease: the number is part of the agent's profile, not of its session. Every node of the site
reads them all when SIP starts and watches the agents' offers for them (sip/phones.py): only the
agent's home node gets its offers, so only that node dials. A number registered later at
another node of the site is read here on this node's next start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from sip.phones import BadNumber, check_number

log = logging.getLogger(__name__)


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

    async def load(self) -> dict[str, str]:
        """Every agent's number in the site; an unusable stored value is skipped and logged."""
        found, _ = await self._store.get_prefix(self._prefix)
        numbers: dict[str, str] = {}
        for item in found:
            agent_id = item.key.removeprefix(self._prefix)
            try:
                numbers[agent_id] = check_number(item.value.decode())
            except (UnicodeDecodeError, BadNumber) as error:
                log.warning("agent %s phone: stored number refused: %s", agent_id, error)
        return numbers
