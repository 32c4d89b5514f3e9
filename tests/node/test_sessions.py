"""Reaping dead sessions: the watch's fast path, the sweep behind it, and the guard that keeps a
reap from overwriting a login made meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from node.etcd import Etcd
from node.etcd_server import EtcdServer
from node.sessions import Profile, Sessions, agents_prefix
from registry.clock import HybridClock
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry
from tests.node.test_cluster import eventually

PROFILE = Profile(1, (("support", 5),), 1)
SESSION = agents_prefix("site-a") + "ann/session"


@asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[Sessions, Sessions, Etcd]]:
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url], lease_ttl_s=5) as etcd_a,
        Etcd([server.client_url], lease_ttl_s=5) as etcd_b,
    ):
        a = Sessions(etcd_a, Registry("na", HybridClock()), "site-a", Trust.INHOUSE, lambda: None)
        b = Sessions(etcd_b, Registry("nb", HybridClock()), "site-a", Trust.INHOUSE, lambda: None)
        a.unfence()
        b.unfence()
        yield a, b, etcd_a


def seen_at_b(b: Sessions, record: AgentRecord) -> None:
    b._registry.apply([record], [], "na")  # gossip


async def test_a_session_that_died_while_nobody_could_reap_it_is_reaped_by_the_sweep(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path) as (a, b, etcd):
        record = await a.login("ann", PROFILE)
        seen_at_b(b, record)
        watching = asyncio.create_task(b.watch(sweep_s=0.2))
        await asyncio.sleep(0.3)
        b.fence()  # b cannot act when ann's session dies (its own lease lost, say)
        await etcd.delete(SESSION)  # a's lease ran out
        await asyncio.sleep(0.6)
        assert b._registry.agent("ann") == record  # the watch saw the delete and could not act
        b.unfence()

        async def reaped() -> bool:
            now = b._registry.agent("ann")
            return now is not None and now.state is AgentState.OFFLINE

        await eventually(reaped, 5, "ann reaped by b's sweep")
        now = b._registry.agent("ann")
        assert now is not None
        assert (now.home_node, now.active_calls) == ("nb", 0)
        assert now.epoch > record.epoch
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_the_sweep_leaves_live_sessions_and_offline_agents_alone(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, _):
        seen_at_b(b, await a.login("ann", PROFILE))
        assert await b.reap_orphans() == []
        seen_at_b(b, await a.logout("ann"))
        assert await b.reap_orphans() == []


async def test_a_reap_does_not_overwrite_a_login_made_meanwhile(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, etcd):
        first = await a.login("ann", PROFILE)
        seen_at_b(b, first)
        await etcd.delete(SESSION)  # the session died ...
        again = await a.login("ann", PROFILE)  # ... and ann logged in again before b reaped
        assert await b._bump_epoch("ann", hold=False) is None
        assert await b.reap_orphans() == []
        held = await etcd.get(SESSION)
        assert held is not None
        assert b"na" in held.value
        assert again.epoch == first.epoch + 1
