"""The owner's watchdog over real node processes: a call owned at site-a in talk with an agent
homed on site-b's only node. Nobody can write that agent offline when its node dies (no peer in
site-b; site-a may not write site-b's agents, I5), so the gossiped registry keeps showing it on
the call; the owner asks the home itself (Holds) and closes the call as failed (issue 8, the
chaos checker's seed-13 finding: an agent talking on two calls)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.calls_rpc import CallsServicer, NodeLink
from node.exchange import WATCHDOG_MISSES, WATCHDOG_S, CallInfo, ReleaseReason, Reservation, Verdict
from node.localcluster import LocalCluster, SitePlan
from node.transport import PLAIN
from protos import calls_pb2_grpc as cpb_grpc
from registry.records import NodeInfo, Trust
from registry.registry import Registry
from registry.sync import Delta
from tests.node.test_calls import QUEUES, call_state, offered, place
from tests.node.test_cluster import Client, eventually

SITES = [SitePlan("site-a", "inhouse", 1), SitePlan("site-b", "inhouse", 1)]
OWNER, HOME = "site-a-n1", "site-b-n1"
RPC_TIMEOUT_S = 2.0  # NodeConfig's default: LocalCluster's fast timers leave it
MISSES_S = WATCHDOG_MISSES * (WATCHDOG_S + RPC_TIMEOUT_S) + WATCHDOG_S
"""A bound on the owner's misses running out: each round sleeps WATCHDOG_S, then waits for its
checks (at most the rpc timeout), plus a round."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(SITES, tmp_path, fast=True, queues_toml=QUEUES) as local,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(local, http)
        await client.all_ready(20)
        yield client


async def in_talk(client: Client, agent: str) -> str:
    """A call placed at the owner, answered by `agent` logged in at the home; its id."""
    await client.post(HOME, f"/agents/{agent}/login", {"skills": {"sales": 5}})

    async def known() -> bool:
        return await client.agent(OWNER, agent) is not None

    await eventually(known, 5, f"{agent} known at {OWNER}")
    call = await place(client, OWNER)
    await offered(client, HOME, agent)
    status, body = await client.post(HOME, f"/agents/{agent}/calls/{call['call_id']}/answer")
    assert status == 200, body
    assert (await call_state(client, OWNER, call["call_id"]))["state"] == "talking"
    return str(call["call_id"])


async def ended(client: Client, call_id: str, within_s: float) -> dict[str, Any]:
    """The owner's record of the call once it ended, within `within_s`."""

    async def over() -> bool:
        return bool((await call_state(client, OWNER, call_id))["state"] == "ended")

    await eventually(over, within_s, f"call {call_id} closed by {OWNER}")
    status, record = await client.get(OWNER, f"/records/{call_id}")
    assert status == 200, record
    return dict(record["call"])


@pytest.mark.slow
async def test_a_call_whose_agents_home_was_killed_fails_after_the_misses(
    cluster: Client,
) -> None:
    call_id = await in_talk(cluster, "kim")
    await cluster.cluster.kill_node(HOME)
    killed = time.monotonic()
    record = await ended(cluster, call_id, MISSES_S)
    took = time.monotonic() - killed
    assert record["outcome"] == "failed"
    assert record["reason"].startswith(f"agent's home {HOME} unreachable"), record
    assert took >= (WATCHDOG_MISSES - 1) * WATCHDOG_S, took  # not before the misses ran out


@pytest.mark.slow
async def test_a_call_whose_agents_home_is_paused_fails_after_the_misses(cluster: Client) -> None:
    call_id = await in_talk(cluster, "pam")
    cluster.cluster.signal(HOME, signal.SIGSTOP)
    try:
        record = await ended(cluster, call_id, MISSES_S)
    finally:
        cluster.cluster.signal(HOME, signal.SIGCONT)
    assert record["outcome"] == "failed"
    assert record["reason"] == f"agent's home {HOME} unreachable (timeout)", record


@pytest.mark.slow
async def test_a_restarted_home_has_the_call_closed_at_the_first_check_that_reaches_it(
    cluster: Client,
) -> None:
    """The home is back before the owner's misses run out, with no session for the agent: its
    answer closes the call at once. The home runs with the default 10 s lease here, so that the
    dead run's session key outlives the restart and no peer writes the agent offline meanwhile:
    the registry goes on showing the agent on the call at epoch 1, as it did at the owner cut off
    in the chaos run (with the fast 2 s lease, the restarted home reaps the session and the new
    epoch reaches the owner first: `_fail_if_agent_gone`). The agent then logs in again (a new
    epoch) and takes a new call."""
    await cluster.cluster.stop_node(HOME)
    cluster.cluster.fast = False  # the home's config only: default lease and timers
    await cluster.cluster.start_node(HOME)
    await eventually(lambda: cluster.ready(HOME), 20, f"{HOME} ready with the default lease")
    call_id = await in_talk(cluster, "rod")
    await cluster.cluster.kill_node(HOME)
    await cluster.cluster.start_node(HOME)
    await eventually(lambda: cluster.ready(HOME), 20, f"{HOME} ready again")
    # within two rounds of the home being back (the first may find its lease not granted yet:
    # "cannot tell", a miss), and by its answer, not by the misses running out
    record = await ended(cluster, call_id, 2 * (WATCHDOG_S + RPC_TIMEOUT_S))
    assert (record["outcome"], record["reason"]) == (
        "failed",
        "agent's home no longer holds the agent on this call: no_session",
    )
    status, body = await cluster.post(HOME, "/agents/rod/login", {"skills": {"sales": 5}})
    assert status == 200, body
    # the dead run's reservation slot lives on under its lease (10 s) and refuses new calls
    # meanwhile (I1 in etcd); then the agent is offered the next call
    second = await in_talk_again(cluster, "rod", within_s=15)
    assert (await call_state(cluster, OWNER, second))["state"] == "talking"
    status, body = await cluster.post(OWNER, f"/calls/{second}/hangup")  # the home drains fast
    assert status == 200, body


async def in_talk_again(client: Client, agent: str, within_s: float) -> str:
    """A new call at the owner answered by `agent`, already logged in at the home."""

    async def free() -> bool:
        record = await client.agent(OWNER, agent)
        return record is not None and bool(record["state"] == "available")

    await eventually(free, 5, f"{agent} available at {OWNER}")
    call = await place(client, OWNER)
    await offered(client, HOME, agent, within_s)
    status, body = await client.post(HOME, f"/agents/{agent}/calls/{call['call_id']}/answer")
    assert status == 200, body
    return str(call["call_id"])


# -- Holds over gRPC, in one process ----------------------------------------------------------


class ScriptedDesk:
    """A home's desk whose answer to Holds is set by the test (an exception: raised)."""

    def __init__(self, answer: Verdict | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, int]] = []

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        raise AssertionError("not used")

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        raise AssertionError("not used")

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        self.asked.append((call_id, agent_id, epoch))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@contextlib.asynccontextmanager
async def home_link(servicer: CallsServicer | None) -> AsyncIterator[NodeLink]:
    """A NodeLink at node "owner" that reaches node "home" serving `servicer` (None: a server
    that knows no Calls method, as a home of another release knows no Holds)."""
    server = PLAIN.server()
    if servicer is not None:
        cpb_grpc.add_CallsServicer_to_server(servicer, server)
    port = PLAIN.bind(server, "127.0.0.1:0")
    await server.start()
    home = Registry("home")
    info = home.write_node(
        NodeInfo("home", "site-b", Trust.INHOUSE, f"127.0.0.1:{port}", "127.0.0.1:9", False)
    )
    owner = Registry("owner")
    owner.apply_delta(Delta("home", 0, 0, nodes=(info,)))
    link = NodeLink(owner, 1.0)
    try:
        yield link
    finally:
        await link.close()
        await server.stop(None)


async def test_holds_carries_the_homes_answer_and_its_doubt() -> None:
    desk = ScriptedDesk(Verdict(False, "epoch_changed"))
    async with home_link(CallsServicer(lambda: desk, lambda: None)) as link:
        verdict = await link.desk("home").holds("c-1", "ann", 3)
        assert (verdict.accepted, verdict.reason) == (False, "epoch_changed")
        desk.answer = Verdict(True)
        assert (await link.desk("home").holds("c-1", "ann", 3)).accepted
        desk.answer = ConnectionError("cannot tell: node home holds no etcd lease")
        with pytest.raises(ConnectionError, match="UNAVAILABLE: cannot tell"):
            await link.desk("home").holds("c-1", "ann", 3)
        with pytest.raises(ConnectionError, match="INVALID_ARGUMENT: bad call or agent id"):
            await link.desk("home").holds("../c", "ann", 3)
        assert desk.asked == [("c-1", "ann", 3)] * 3


async def test_holds_before_the_home_has_a_desk_is_no_answer() -> None:
    async with home_link(CallsServicer(lambda: None, lambda: None)) as link:
        with pytest.raises(ConnectionError, match="UNAVAILABLE: node starting"):
            await link.desk("home").holds("c-1", "ann", 1)


async def test_a_home_that_predates_holds_is_taken_as_holding() -> None:
    async with home_link(None) as link:  # UNIMPLEMENTED
        verdict = await link.desk("home").holds("c-1", "ann", 1)
    assert verdict.accepted, verdict
    assert "predates" in verdict.reason
