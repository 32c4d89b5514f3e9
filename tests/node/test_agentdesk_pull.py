"""A freed agent pulls the best waiting call; a stale summary sends it to the next best."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.agentdesk import PULL_TRIES, AgentDesk
from node.etcd import Etcd
from node.etcd_server import EtcdServer
from node.exchange import AgentAction, Desk, Owner, Verdict
from node.queues import QueueConfig
from node.sessions import Profile, Sessions
from registry.clock import HybridClock, wall_ms
from registry.records import QueueSummary, Trust
from registry.registry import Registry
from tests.node.test_cluster import eventually

QUEUES = {"front": QueueConfig("front", (("front", 1),))}


class StaleOwners:
    """Owner nodes that have no call left for the agent, except those in `offering`."""

    def __init__(self, offering: set[str]) -> None:
        self.offering = offering
        self.asked: list[str] = []

    def desk(self, node_id: str) -> Desk:
        raise AssertionError("not used")

    def owner(self, node_id: str) -> Owner:
        link = self

        class _Owner:
            async def report(
                self,
                call_id: str,
                agent_id: str,
                action: AgentAction,
                epoch: int,
                *,
                queue: str = "",
                notes: str = "",
            ) -> Verdict:
                raise AssertionError("not used")

            async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
                link.asked.append(node_id)
                return node_id in link.offering

        return _Owner()


def waiting(node: str, age_ms: int) -> QueueSummary:
    return QueueSummary(node, "front", 1, wall_ms() - age_ms, 0, (("front", 1),))


async def _pulls(tmp_path: Path, owners: StaleOwners, summaries: list[QueueSummary]) -> None:
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url], lease_ttl_s=5) as etcd,
    ):
        registry = Registry("home", HybridClock())
        registry.apply([], summaries, "elsewhere")
        sessions = Sessions(etcd, registry, "site-a", Trust.INHOUSE, on_write=lambda: None)
        sessions.unfence()
        desk = AgentDesk(etcd, registry, sessions, owners, lambda: QUEUES)
        await sessions.login("ann", Profile(1, (("front", 5),), 1))
        desk.freed("ann")

        async def done() -> bool:
            return len(owners.asked) >= min(len(summaries), PULL_TRIES) or bool(
                set(owners.asked) & owners.offering
            )

        await eventually(done, 5, "the pulls were made")
        await asyncio.sleep(0.2)  # room for a pull too many
        await desk.close()


async def test_a_freed_agent_asks_the_next_owner_when_the_oldest_call_is_gone(
    tmp_path: Path,
) -> None:
    owners = StaleOwners(offering={"n2"})
    await _pulls(tmp_path, owners, [waiting("n1", 3000), waiting("n2", 2000), waiting("n3", 1000)])
    assert owners.asked == ["n1", "n2"]  # oldest first, and it stops at the first offer


async def test_the_pulls_are_bounded(tmp_path: Path) -> None:
    owners = StaleOwners(offering=set())
    summaries = [waiting(f"n{i}", 5000 - i) for i in range(PULL_TRIES + 2)]
    await _pulls(tmp_path, owners, summaries)
    assert owners.asked == [f"n{i}" for i in range(PULL_TRIES)]
