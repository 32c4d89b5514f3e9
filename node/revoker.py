"""Spreads token revocations to every node of every site (node/revocations.py holds the facts).

- In a site: each revocation is a key in the site's etcd,
  `/callmesh/sites/{site}/revoked/{kind}/{subject}` = the entry as JSON. Every node reads the
  prefix when it starts and watches it, so a node of the site refuses a revoked token as soon as
  its watch delivers the key (and a restarted node still knows it).
- Between sites: the node that took the revocation pushes it at once to one up node of every
  other site it knows from the registry (its gateways first), over the nodes' gRPC channel with
  mutual TLS (the Revocations service, node/revocation_rpc.py), and that node writes it into its
  own site's etcd. Pushes can fail (a site cut off); so every gateway node also pushes its
  site's whole list every `sync_s` to every other site (anti-entropy: a site that missed an
  entry gets it after the partition heals, through any site that has it).
- A push names the pushing site and is signed with that site's key (node/sitekeys.py), not a
  token: it carries no credential worth stealing, and a replay only repeats a revocation. Over
  mutual TLS the push must also name the site of the pushing node's certificate, and a
  partner's certificate makes it a partner's push whatever the key ring says. A partner site
  may spread only its own users' revocations (node/tokens.py, `revocation_out_of_scope`): a push
  with any other entry is refused whole, and a partner node leaves the others (learnt from
  in-house sites) out of its own pushes.
- Expired entries (no token they refuse can be valid) are dropped from memory everywhere and
  deleted from etcd by the gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import TracebackType
from typing import Any, Protocol

from node.auth import Auth
from node.ca import Identity
from node.etcd import Etcd, EventKind, WatchCompacted
from node.revocations import Revocation
from node.tasks import Tasks
from node.tokens import OutOfScope
from registry.clock import wall_ms
from registry.errors import InvalidRecord
from registry.records import Trust
from registry.registry import Registry

log = logging.getLogger(__name__)

MAX_PUSH = 200
"""Entries per push (a push stays under the HTTP API's 64 KiB body)."""


class Pusher(Protocol):
    """How a push reaches one node of another site (node/revocation_rpc.py's RevocationLink)."""

    async def push(self, address: str, body: dict[str, Any]) -> None:
        """Deliver a `sealed` body to the node at `address` (its gRPC host:port); raise
        ConnectionError when it did not take it."""


def prefix(site: str) -> str:
    return f"/callmesh/sites/{site}/revoked/"


def key(site: str, entry: Revocation) -> str:
    return f"{prefix(site)}{entry.kind.value}/{entry.subject}"


def sealed(auth: Auth, entries: list[Revocation]) -> dict[str, Any]:
    """A push body: the entries, this site and its signature of them."""
    payload = json.dumps([e.to_json() for e in entries], separators=(",", ":"))
    return {"site": auth.site, "revocations": payload, "signature": auth.sign(payload)}


def unsealed(auth: Auth, body: dict[str, Any], peer: Identity | None = None) -> list[Revocation]:
    """The entries of a push body; raises InvalidRecord (400), AuthError (401: unknown site,
    bad signature) or OutOfScope (403: a partner revoking others' tokens, or a node pushing for
    a site its certificate does not name). `peer`: who pushed, by its certificate (None: not
    over mutual TLS)."""
    site, payload, signature = body.get("site"), body.get("revocations"), body.get("signature")
    if not isinstance(site, str) or not isinstance(payload, str) or not isinstance(signature, str):
        raise InvalidRecord('a push is {"site": ..., "revocations": JSON TEXT, "signature": ...}')
    if peer is not None and peer.site != site:
        raise OutOfScope(
            f"a node of site {peer.site} may push only its own site's revocations, "
            f"not site {site[:64]!r}'s"
        )
    trust = auth.check_revocations(site, payload, signature)
    if peer is not None and peer.trust is Trust.PARTNER:
        trust = Trust.PARTNER  # a partner's certificate bounds the push, whatever the key ring
    try:
        raw = json.loads(payload)
    except ValueError:
        raise InvalidRecord("revocations must be a JSON list") from None
    if not isinstance(raw, list) or len(raw) > MAX_PUSH:
        raise InvalidRecord(f"revocations must be a JSON list of at most {MAX_PUSH} entries")
    entries = [Revocation.from_json(item) for item in raw]
    for entry in entries:
        auth.check_revocation_scope(site, trust, entry)
    return entries


class Revoker:
    """One node's part: its site's etcd, the watch, the pushes to other sites."""

    def __init__(
        self,
        auth: Auth,
        etcd: Etcd,
        registry: Registry,
        site: str,
        pusher: Pusher,
        *,
        gateway: bool,
        sync_s: float,
    ) -> None:
        self.auth = auth
        self._etcd = etcd
        self._registry = registry
        self._site = site
        self._pusher = pusher
        self._gateway = gateway
        self._sync_s = sync_s
        self._tasks = Tasks("revocations")
        self._revision = 0

    async def __aenter__(self) -> Revoker:
        await self._load()
        self._tasks.spawn(self._watch(), "revocation watch")
        self._tasks.spawn(self._sync(), "revocation sync")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self._tasks.close()

    async def revoked(self, entry: Revocation) -> None:
        """A revocation taken here (already in `auth`): into the site's etcd, then at once to
        the other sites (in the background; the periodic sync retries)."""
        await self._store([entry])
        self._tasks.spawn(self._push_everywhere([entry]), "revocation push")

    async def received(self, entries: list[Revocation]) -> int:
        """Entries pushed by another site: merged, and the new ones stored; how many were new."""
        changed = self.auth.revocations.add_all(entries)
        await self._store(changed)
        return len(changed)

    async def _store(self, entries: list[Revocation]) -> None:
        for entry in entries:
            await self._etcd.put(key(self._site, entry), entry.encode())

    async def _load(self) -> None:
        values, self._revision = await self._etcd.get_prefix(prefix(self._site))
        self.auth.revocations.add_all(e for e in map(self._decode, values) if e is not None)

    @staticmethod
    def _decode(value: Any) -> Revocation | None:
        try:
            return Revocation.from_json(json.loads(value.value))
        except (ValueError, InvalidRecord) as error:
            log.warning("revocation %s unreadable: %s", value.key, error)
            return None

    async def _watch(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(
                    self._etcd.watch_prefix(prefix(self._site), self._revision + 1)
                ) as events:
                    async for event in events:
                        self._revision = event.mod_revision
                        if event.kind is EventKind.PUT:
                            entry = self._decode(event)
                            if entry is not None:
                                self.auth.revocations.add(entry)
                return
            except WatchCompacted:
                await self._load()

    async def _sync(self) -> None:
        while True:
            await asyncio.sleep(self._sync_s)
            try:
                await self._sync_once()
            except Exception as error:  # etcd away: the next round tries again
                log.warning("revocation sync failed: %s", error)

    async def _sync_once(self) -> None:
        gone = self.auth.revocations.prune(wall_ms())
        if self._gateway:
            for entry in gone:
                await self._etcd.delete(key(self._site, entry))
            entries = self.auth.revocations.entries()
            if entries:
                await self._push_everywhere(entries)

    async def _push_everywhere(self, entries: list[Revocation]) -> None:
        entries = [entry for entry in entries if self.auth.may_spread(entry)]
        if not entries:
            return  # a partner site's node: only its own users' revocations leave it
        sites: dict[str, list[str]] = {}
        # gateways first: another site may let only its gateway be reached from outside
        for info in sorted(self._registry.nodes(), key=lambda i: (not i.gateway, i.node_id)):
            if info.up and info.site != self._site:
                sites.setdefault(info.site, []).append(info.grpc)
        for site, addresses in sorted(sites.items()):
            if not await self._push(addresses, entries):
                log.info("revocations not delivered to site %s yet (will retry)", site)

    async def _push(self, addresses: list[str], entries: list[Revocation]) -> bool:
        """Push to the first node of a site that takes it; whether one did."""
        for address in addresses:
            try:
                for start in range(0, len(entries), MAX_PUSH):
                    await self._pusher.push(
                        address, sealed(self.auth, entries[start : start + MAX_PUSH])
                    )
                return True
            except ConnectionError as error:
                log.info("revocation push to %s failed: %s", address, error)
        return False
