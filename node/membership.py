"""Site membership: each node registers under its site with its lease; peers are found by watch.

Key `/callmesh/sites/{site}/nodes/{node_id}` holds JSON {"grpc": host:port, "http": host:port,
"gateway": bool}, attached to the node's lease, so a dead node leaves by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from node.etcd import Etcd, EventKind, WatchCompacted

log = logging.getLogger(__name__)


def nodes_prefix(site: str) -> str:
    return f"/callmesh/sites/{site}/nodes/"


@dataclass(frozen=True, slots=True)
class Member:
    node_id: str
    grpc: str
    http: str
    gateway: bool

    def encode(self) -> bytes:
        return json.dumps(
            {"grpc": self.grpc, "http": self.http, "gateway": self.gateway}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, node_id: str, data: bytes) -> Member:
        fields = json.loads(data)
        return cls(node_id, str(fields["grpc"]), str(fields["http"]), bool(fields["gateway"]))


class Membership:
    """Registers `me` and keeps `members` current; calls `on_change` when the set changes."""

    def __init__(
        self, etcd: Etcd, site: str, me: Member, on_change: Callable[[dict[str, Member]], None]
    ) -> None:
        self._etcd = etcd
        self._prefix = nodes_prefix(site)
        self.me = me
        self._on_change = on_change
        self.members: dict[str, Member] = {}

    async def register(self) -> None:
        """Put this node's key under the current lease (again after a new lease)."""
        await self._etcd.put(self._prefix + self.me.node_id, self.me.encode(), leased=True)
        log.info("member %s registered at %s", self.me.node_id, self._prefix)

    async def deregister(self) -> None:
        await self._etcd.delete(self._prefix + self.me.node_id)

    async def watch(self) -> None:
        """Follow the site's members until cancelled."""
        while True:
            kvs, revision = await self._etcd.get_prefix(self._prefix)
            self.members = {}
            for kv in kvs:
                self._put(kv.key, kv.value)
            self._on_change(dict(self.members))
            try:
                async for event in self._etcd.watch_prefix(self._prefix, revision + 1):
                    if event.kind is EventKind.PUT:
                        self._put(event.key, event.value)
                    else:
                        self.members.pop(event.key.removeprefix(self._prefix), None)
                    self._on_change(dict(self.members))
            except WatchCompacted:
                log.warning("member watch %s compacted; re-reading", self._prefix)
                await asyncio.sleep(0)

    def _put(self, key: str, value: bytes) -> None:
        node_id = key.removeprefix(self._prefix)
        try:
            self.members[node_id] = Member.decode(node_id, value)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("member %s: unreadable registration (%s); ignored", node_id, error)
