"""The nemesis: applies a fault schedule to a LocalCluster, and heals everything afterwards.

Links between sites are cut in one of two ways (`Nemesis.mechanism`):

- "netns": the cluster's sites run in their own network namespaces (LocalCluster(netns=True),
  node/netns.py); a cut is a blackhole route to the other site's block in both namespaces, so the
  kernel drops everything between them (gossip, the call exchange, media, etcd clients alike);
- "faults": each node's POST /debug/faults: every node of one site blocks the gRPC addresses of
  every node of the other (gossip and the call exchange, both ways), where namespaces are
  unavailable (not root).

Pauses, kills and restarts go through the LocalCluster; an etcd member is
killed with SIGKILL and restarted on its data. With "faults", a node that comes back (SIGCONT,
restart) is told the links that are still cut, since a restart forgets them and a paused node may
have missed the change; routes in a namespace outlive the node's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection

from chaos.client import Client
from chaos.schedule import (
    CutLink,
    Fault,
    KillEtcd,
    KillNode,
    PauseNode,
    Schedule,
    SkewClock,
    describe,
)
from node.localcluster import LocalCluster

log = logging.getLogger(__name__)

RESTART_ATTEMPTS = 20


class Nemesis:
    def __init__(
        self, cluster: LocalCluster, client: Client, say: Callable[[str], None] = log.info
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.say = say
        self.injected: Counter[str] = Counter()  # fault kind -> how many were applied
        self.network = cluster.namespaces
        self.last_heal = time.monotonic()
        """When the last fault was undone (heal_all counts only when it healed something)."""
        self._cuts: Counter[tuple[str, str]] = Counter()
        self._paused: set[str] = set()
        self._killed: set[str] = set()
        self._etcd_down: set[str] = set()
        self._skewed: set[str] = set()

    @property
    def mechanism(self) -> str:
        """How links are cut: "netns" (routes in the sites' namespaces) or "faults"."""
        return "faults" if self.network is None else "netns"

    def site_of(self, node: str) -> str:
        return self.cluster.plans[node].site.name

    async def run(self, schedule: Schedule, started: float) -> None:
        """Apply every fault at its time and undo it after its duration; return when all are
        undone."""
        await asyncio.gather(*(self._episode(f, started) for f in schedule.faults))

    async def _episode(self, fault: Fault, started: float) -> None:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        self.say(f"nemesis +{time.monotonic() - started:5.1f}s {describe(fault)}")
        await self.apply(fault)
        self.injected[type(fault).__name__] += 1
        await asyncio.sleep(fault.for_s)
        await self.undo(fault)
        self.say(f"nemesis +{time.monotonic() - started:5.1f}s undone: {describe(fault)}")

    async def apply(self, fault: Fault) -> None:
        match fault:
            case CutLink(sites=sites):
                self._cuts[sites] += 1
                if self.network is not None:
                    await self.network.cut(*sites)
                await self._push_blocks(self.cluster.plans)
            case PauseNode(node=node):
                self._paused.add(node)
                self.cluster.signal(node, signal.SIGSTOP)
            case KillNode(node=node):
                self._killed.add(node)
                await self.cluster.kill_node(node)
            case KillEtcd(site=site):
                self._etcd_down.add(site)
                for member in self.cluster.etcds[site]:
                    if member.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(member.pid, signal.SIGKILL)
                    await member.stop()
            case SkewClock(node=node, offset_ms=offset):
                self._skewed.add(node)
                await self.client.post(node, "/debug/faults", {"clock_offset_ms": offset})

    async def undo(self, fault: Fault) -> None:
        match fault:
            case CutLink(sites=sites):
                self._cuts[sites] -= 1
                if self.network is not None and self._cuts[sites] <= 0:
                    await self.network.heal(*sites)
                await self._push_blocks(self.cluster.plans)
            case PauseNode(node=node):
                self.cluster.signal(node, signal.SIGCONT)
                self._paused.discard(node)
                await self._push_blocks([node])
            case KillNode(node=node):
                await self._restart(node)
            case KillEtcd(site=site):
                await self._start_etcd(site)
            case SkewClock(node=node):
                await self.client.post(node, "/debug/faults", {"clock_offset_ms": 0})
                self._skewed.discard(node)
        self.last_heal = time.monotonic()

    async def heal_all(self) -> None:
        """Whatever is still broken: etcd started, nodes resumed or restarted, links healed,
        clocks straight."""
        broken = any(
            (+self._cuts, self._paused, self._killed, self._etcd_down, self._skewed)
        ) or any(p.returncode is not None for p in self.cluster.processes.values())
        self._cuts.clear()
        if self.network is not None:
            await self.network.heal_all()
        for site in sorted(self._etcd_down):
            await self._start_etcd(site)
        for node, process in self.cluster.processes.items():
            self.cluster.signal(node, signal.SIGCONT)
            if process.returncode is not None:
                self._killed.add(node)
        self._paused.clear()
        for node in sorted(self._killed):
            await self._restart(node)
        for node in self.cluster.plans:
            for _ in range(20):
                status, _ = await self.client.post(
                    node, "/debug/faults", {"block": [], "clock_offset_ms": 0}
                )
                if status == 200:
                    break
                await asyncio.sleep(0.5)
        self._skewed.clear()
        if broken:
            self.last_heal = time.monotonic()

    # -- helpers -------------------------------------------------------------------------------

    def blocked_for(self, node: str) -> list[str]:
        """The gRPC addresses `node` must not reach while the current cuts last."""
        mine = self.site_of(node)
        cut_off = {b for (a, b), n in self._cuts.items() if n > 0 and a == mine}
        cut_off |= {a for (a, b), n in self._cuts.items() if n > 0 and b == mine}
        return sorted(p.grpc for p in self.cluster.plans.values() if p.site.name in cut_off)

    async def _push_blocks(self, nodes: Collection[str]) -> None:
        if self.network is not None:
            return  # the routes in the namespaces cut the links
        targets = [
            n for n in self.cluster.plans if n in nodes and n not in self._paused | self._killed
        ]
        await asyncio.gather(
            *(self.client.post(n, "/debug/faults", {"block": self.blocked_for(n)}) for n in targets)
        )

    async def _restart(self, node: str) -> None:
        for attempt in range(RESTART_ATTEMPTS):
            try:
                await self.cluster.start_node(node)
                break
            except RuntimeError as error:
                self.say(f"nemesis: {node} did not restart (attempt {attempt + 1}): {error}")
                await asyncio.sleep(1.0)
        else:
            raise RuntimeError(f"{node} did not restart after {RESTART_ATTEMPTS} attempts")
        self._killed.discard(node)
        await self._push_blocks([node])

    async def _start_etcd(self, site: str) -> None:
        members = self.cluster.etcds[site]
        for member in members:
            if member.pid is None:
                await member.start()
        await asyncio.gather(*(m.wait_healthy() for m in members))
        self._etcd_down.discard(site)
