"""Agent sessions: which node holds each agent, fenced by an epoch in the site's etcd.

Keys, per agent, in the site's etcd:
- `/callmesh/sites/{site}/agents/{agent}/epoch`: the last epoch issued (no lease; only grows)
- `/callmesh/sites/{site}/agents/{agent}/session`: {"node", "epoch"} under the holder's lease,
  or, after a logout, {"node", "epoch", "out": true} with no lease

A login bumps the epoch and writes the session in one transaction on the epoch key's revision,
so one login wins; the registry record carries the epoch, and a higher epoch beats any write of
the old holder. The old holder drops the session when its watch sees the new one. When a session
key dies with its node's lease, a surviving node of the site takes the agent over with a higher
epoch (again one transaction) and writes it offline, so a dead node's agents go offline
everywhere within about one lease TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from node import metrics
from node.etcd import Etcd, EtcdUnavailable, EventKind, WatchCompacted
from registry.clock import wall_ms
from registry.errors import RegistryError
from registry.records import AgentRecord, AgentState, Skills, Trust
from registry.registry import Registry

log = logging.getLogger(__name__)

LOGIN_ATTEMPTS = 5
SWEEP_S = 5.0
"""How often each node looks for logged-in agents of its site whose session key is gone."""
RETRY_S = 1.0
SETTLE_S = 10.0
"""How long `settled` waits for a doubtful lease to be renewed or declared lost."""
SETTLE_POLL_S = 0.05


class SessionError(Exception):
    code = "session_error"


class NotHeldHere(SessionError):
    code = "session_not_here"


class Fenced(SessionError):
    code = "node_fenced"


@dataclass(frozen=True, slots=True)
class Profile:
    """What an agent brings to a login."""

    tier: int = 1
    skills: Skills = ()
    capacity: int = 1


def agents_prefix(site: str) -> str:
    return f"/callmesh/sites/{site}/agents/"


class Sessions:
    """The agent sessions held by this node, and the watch that keeps them honest."""

    def __init__(
        self,
        etcd: Etcd,
        registry: Registry,
        site: str,
        trust: Trust,
        on_write: Callable[[], None],
        on_available: Callable[[str], None] = lambda agent_id: None,
        on_agent: Callable[[AgentRecord], None] = lambda record: None,
    ) -> None:
        self._etcd = etcd
        self._registry = registry
        self._site = site
        self._trust = trust
        self._on_write = on_write
        self._on_available = on_available
        self._on_agent = on_agent
        self._prefix = agents_prefix(site)
        self.held: dict[str, int] = {}  # agent id -> epoch of the session held here
        self.session_revisions: dict[str, int] = {}  # agent id -> mod revision of its session key
        self._fenced = True  # until the node holds a lease

    @property
    def fenced(self) -> bool:
        """No live lease: act on nothing (the lease may have expired while the node was paused)."""
        return self._fenced or not self._etcd.has_lease

    @property
    def lease_lost(self) -> bool:
        """The lease was declared lost (or none is held yet): the sessions were dropped, and
        their keys and slots die with the lease."""
        return self._fenced

    async def settled(self, agent_id: str, within_s: float = SETTLE_S) -> bool:
        """Whether this node holds the agent's session, once a doubtful lease is decided.

        `fenced` is also true when the lease's deadline passed before the keep-alive's answer
        came (a stalled loop, a slow or restarting etcd): the lease may still be renewed, and
        the sessions are kept until the keep-alive says. An action that must not be lost (a
        release, the end of a wrap-up) waits here instead of giving up while its session lives
        on: dropped, the agent stayed reserved for good, its session alive (a path to the
        chaos checker's seed-13 finding)."""
        for _ in range(max(1, round(within_s / SETTLE_POLL_S))):
            # polled: a renewal moves only the lease's deadline, and nothing announces that
            if agent_id not in self.held or not self.fenced:
                break
            await asyncio.sleep(SETTLE_POLL_S)
        return agent_id in self.held and not self.fenced

    @property
    def node_id(self) -> str:
        return self._registry.node_id

    def _keys(self, agent_id: str) -> tuple[str, str]:
        return f"{self._prefix}{agent_id}/epoch", f"{self._prefix}{agent_id}/session"

    def _write(self, record: AgentRecord) -> AgentRecord:
        try:
            stamped = self._registry.write_agent(record)
        except RegistryError as error:
            metrics.registry_refused("local", error.code)
            raise
        self._on_write()
        self._on_agent(stamped)
        return stamped

    async def _bump_epoch(self, agent_id: str, *, hold: bool) -> int | None:
        """One transaction: the next epoch for `agent_id`, and with `hold` its session here.

        None when reaping (not `hold`) and another node bumped the epoch first."""
        epoch_key, session_key = self._keys(agent_id)
        held = self._registry.agent(agent_id)
        known = held.epoch if held is not None else 0
        for _ in range(LOGIN_ATTEMPTS):
            current = await self._etcd.get(epoch_key)
            epoch = max(int(current.value) if current else 0, known) + 1
            session = json.dumps({"node": self.node_id, "epoch": epoch}).encode()
            also = [(session_key, session, True)] if hold else []
            if await self._etcd.put_if(
                epoch_key,
                str(epoch).encode(),
                mod_revision=current.mod_revision if current else 0,
                also=also,
                # reaping: only while no session is held (a login meanwhile wins)
                guards=() if hold else [(session_key, 0)],
            ):
                return epoch
            if not hold:
                return None  # reaping: someone else acted first
        raise SessionError(f"agent {agent_id}: login lost {LOGIN_ATTEMPTS} races; try again")

    async def login(self, agent_id: str, profile: Profile) -> AgentRecord:
        if self.fenced:
            raise Fenced(f"node {self.node_id} holds no etcd lease; log in at another node")
        epoch = await self._bump_epoch(agent_id, hold=True)
        assert epoch is not None  # holding never gives up: it raises after LOGIN_ATTEMPTS
        self.held[agent_id] = epoch
        _, session_key = self._keys(agent_id)
        session = await self._etcd.get(session_key)
        if session is not None and json.loads(session.value).get("epoch") == epoch:
            self.session_revisions[agent_id] = session.mod_revision
        record = self._write(
            AgentRecord(
                agent_id=agent_id,
                home_node=self.node_id,
                site=self._site,
                trust=self._trust,
                tier=profile.tier,
                skills=profile.skills,
                state=AgentState.AVAILABLE,
                state_since_ms=wall_ms(),
                capacity=profile.capacity,
                epoch=epoch,
            )
        )
        log.info("agent %s logged in at %s (epoch %d)", agent_id, self.node_id, epoch)
        self._on_available(agent_id)
        return record

    def _drop(self, agent_id: str) -> None:
        self.held.pop(agent_id, None)
        self.session_revisions.pop(agent_id, None)

    def session_key(self, agent_id: str) -> str:
        return self._keys(agent_id)[1]

    def slot_key(self, agent_id: str, slot: int) -> str:
        """One of the agent's `capacity` reservation slots (node/agentdesk.py)."""
        return f"{self._prefix}{agent_id}/slots/{slot}"

    def held_record(self, agent_id: str) -> AgentRecord:
        """The record of an agent whose session this node holds (NotHeldHere, Fenced)."""
        return self._held_record(agent_id)

    def write(self, record: AgentRecord) -> AgentRecord:
        """Write a held agent's record (its state as calls come and go)."""
        return self._write(record)

    def _held_record(self, agent_id: str) -> AgentRecord:
        if self.fenced:
            raise Fenced(f"node {self.node_id} holds no etcd lease")
        record = self._registry.agent(agent_id)
        epoch = self.held.get(agent_id)
        if epoch is not None and record is not None and record.epoch > epoch:
            self._drop(agent_id)  # a login elsewhere (maybe another site) took it over
            log.info("agent %s taken over at epoch %d; dropped here", agent_id, record.epoch)
        if agent_id not in self.held or record is None:
            raise NotHeldHere(f"agent {agent_id} has no session at node {self.node_id}")
        return record

    def set_state(self, agent_id: str, state: AgentState, reason: str = "") -> AgentRecord:
        record = self._held_record(agent_id)
        if state is AgentState.OFFLINE:
            raise SessionError("log out to go offline")
        if state not in (AgentState.AVAILABLE, AgentState.NOT_READY):
            raise SessionError(f"an agent sets only available or not-ready, not {state.name}")
        if record.active_calls > 0:
            raise SessionError(f"agent {agent_id} is on a call; finish it first")
        updated = self._write(replace(record, state=state, reason=reason, state_since_ms=wall_ms()))
        log.info("agent %s %s -> %s", agent_id, record.state.name, state.name)
        if state is AgentState.AVAILABLE:
            self._on_available(agent_id)
        return updated

    async def logout(self, agent_id: str) -> AgentRecord:
        record = self._held_record(agent_id)
        self._drop(agent_id)
        offline = self._write(
            replace(record, state=AgentState.OFFLINE, reason="", state_since_ms=wall_ms())
        )
        _, session_key = self._keys(agent_id)
        current = await self._etcd.get(session_key)
        if current is not None and json.loads(current.value).get("node") == self.node_id:
            # A logged-out marker, not a delete: a delete means "lease expired" to the reapers.
            marker = {"node": self.node_id, "epoch": record.epoch, "out": True}
            await self._etcd.put_if(
                session_key, json.dumps(marker).encode(), mod_revision=current.mod_revision
            )
        log.info("agent %s logged out of %s", agent_id, self.node_id)
        return offline

    async def leave(self) -> None:
        """Log every held agent out (a clean shutdown)."""
        for agent_id in list(self.held):
            try:
                await self.logout(agent_id)
            except (SessionError, RegistryError) as error:
                log.warning("agent %s: logout on leave failed: %s", agent_id, error)

    def fence(self) -> None:
        """The lease is lost: drop every session (their keys die with the lease) and stop acting."""
        if self.held:
            log.warning("node %s fenced: dropping sessions %s", self.node_id, sorted(self.held))
        self._fenced = True
        self.held.clear()
        self.session_revisions.clear()

    def unfence(self) -> None:
        self._fenced = False

    async def watch(self, sweep_s: float = SWEEP_S) -> None:
        """Follow the site's session keys until cancelled: the watch reaps a session when its
        key dies; a sweep every `sweep_s` reaps those whose death no watch acted on (this node
        was fenced, or etcd did not answer the reap, when the key died). An etcd error ends
        neither: both go on once etcd answers again."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow())
            group.create_task(self._sweep(sweep_s))

    async def _follow(self) -> None:
        while True:
            try:
                _, revision = await self._etcd.get_prefix(self._prefix)
                async for event in self._etcd.watch_prefix(self._prefix, revision + 1):
                    if event.key.endswith("/session"):
                        agent_id = event.key.removeprefix(self._prefix).removesuffix("/session")
                        if event.kind is EventKind.PUT:
                            self._session_moved(agent_id, event.value)
                        else:
                            await self._session_gone(agent_id)
            except WatchCompacted:
                log.warning("session watch %s compacted; re-reading", self._prefix)
            except EtcdUnavailable as error:
                log.warning("session watch %s: %s; again in %g s", self._prefix, error, RETRY_S)
                await asyncio.sleep(RETRY_S)
            except Exception:
                log.exception("session watch %s failed; again in %g s", self._prefix, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _sweep(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.reap_orphans()
            except EtcdUnavailable as error:
                log.warning("session sweep %s: %s", self._prefix, error)
            except Exception:
                log.exception("session sweep %s failed", self._prefix)

    async def reap_orphans(self) -> list[str]:
        """Reap every agent of this site that the registry shows logged in but whose session key
        is gone; the agents reaped here."""
        if self.fenced:
            return []
        keys, _ = await self._etcd.get_prefix(self._prefix)
        sessions = {
            kv.key.removeprefix(self._prefix).removesuffix("/session")
            for kv in keys
            if kv.key.endswith("/session")
        }
        reaped = []
        for record in self._registry.agents():
            if (
                record.site == self._site
                and record.state is not AgentState.OFFLINE
                and record.agent_id not in sessions
                and record.agent_id not in self.held
            ):
                log.warning(
                    "agent %s: no session in etcd, still %s; reaping",
                    record.agent_id,
                    record.state.name,
                )
                if await self._session_gone(record.agent_id):
                    reaped.append(record.agent_id)
        return reaped

    def _session_moved(self, agent_id: str, value: bytes) -> None:
        try:
            session = json.loads(value)
            node, epoch = str(session["node"]), int(session["epoch"])
        except (ValueError, KeyError, TypeError):
            log.warning("agent %s: unreadable session key; ignored", agent_id)
            return
        mine = self.held.get(agent_id)
        if mine is not None and node != self.node_id and epoch > mine and not session.get("out"):
            self._drop(agent_id)
            log.info("agent %s session moved to %s (epoch %d); dropped here", agent_id, node, epoch)

    async def _session_gone(self, agent_id: str) -> bool:
        """Take a dead session's agent over and write it offline; whether this node did."""
        if self.fenced or agent_id in self.held:
            return False
        record = self._registry.agent(agent_id)
        if record is not None and record.state is AgentState.OFFLINE:
            return False  # a clean logout
        await asyncio.sleep(0)
        epoch = await self._bump_epoch(agent_id, hold=False)
        if epoch is None:
            return False
        base = record or AgentRecord(
            agent_id, self.node_id, self._site, self._trust, 1, (), AgentState.OFFLINE
        )
        self._write(
            replace(
                base,
                home_node=self.node_id,
                state=AgentState.OFFLINE,
                reason="",
                active_calls=0,
                state_since_ms=wall_ms(),
                epoch=epoch,
            )
        )
        metrics.AGENT_SESSIONS_REAPED.inc()
        log.info("agent %s: session lease expired; marked offline (epoch %d)", agent_id, epoch)
        return True
