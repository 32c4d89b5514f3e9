"""Bugs the chaos checker found in the node, each pinned by a test without processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from node.agentdesk import AgentDesk, OfferError
from node.callstate import CallState
from node.etcd import Etcd, EtcdUnavailable
from node.etcd_server import EtcdServer
from node.exchange import AgentAction, CallInfo, Desk, Link, Owner, ReleaseReason, Verdict
from node.sessions import Profile, Sessions
from registry.clock import HybridClock
from registry.records import AgentState, Trust
from registry.registry import Registry
from tests.node.test_cluster import eventually
from tests.node.test_switchboard import FakeDesk, board, free_agent, records, settle


async def test_a_talking_call_whose_agent_logged_in_elsewhere_is_closed_as_failed(
    tmp_path: Path,
) -> None:
    """Seeds 1 and 2 of `callmesh chaos`: the agent's home node was killed (or fenced) during a
    call, the agent logged in at another node and took new calls, and the owner kept the old
    call talking until the caller hung up: one agent on two calls at once in the records."""
    desk = FakeDesk()
    switchboard, registry = board(tmp_path, desk)
    free_agent(registry, "fa", "front")
    call = await switchboard.arrive("front", "+1")
    await settle(switchboard, 0.2)
    offered = switchboard.calls[call.call_id]
    assert (
        await switchboard.report(call.call_id, "fa", AgentAction.ANSWER, offered.epoch)
    ).accepted
    await settle(switchboard, 0.2)
    assert switchboard.calls[call.call_id].state is CallState.TALKING  # same epoch: goes on
    agent = registry.agent("fa")
    assert agent is not None
    registry.apply([replace(agent, epoch=agent.epoch + 1, clock=agent.clock + 1)], [], "n3")
    await settle(switchboard, 0.2)
    assert call.call_id not in switchboard.calls
    row = records(tmp_path).call(call.call_id)
    assert row is not None
    assert row["outcome"] == "failed"
    assert "session ended" in row["reason"]
    assert [leg.result for leg in records(tmp_path).legs(call.call_id)] == ["failed"]
    await switchboard.close()


async def test_a_talking_call_whose_agents_home_died_is_closed_though_the_registry_lags(
    tmp_path: Path,
) -> None:
    """Seed 13 (issue 8): the home of partner-c-agent2 (partner-c-n1, its site's only node) was
    killed while the agent talked on site-a-n2's call; nobody could write the agent offline, the
    agent logged in again when the node came back and took a call of another owner while site-a,
    cut off, still held the old one at epoch 1. The owner now asks the home itself (Holds): a
    home unreachable WATCHDOG_MISSES times, or one that answers it no longer holds the agent at
    that epoch, closes the call, whatever the registry shows."""
    cases: list[tuple[list[Verdict | BaseException], str]] = [
        ([ConnectionError("UNAVAILABLE: connection refused")] * 3, "agent's home n2 unreachable"),
        ([Verdict(False, "epoch_changed")], "agent's home no longer holds the agent"),
    ]
    for case, (answers, reason) in enumerate(cases):
        folder = tmp_path / str(case)
        folder.mkdir()
        desk = FakeDesk()
        switchboard, registry = board(folder, desk)
        free_agent(registry, "fa", "front")
        call = await switchboard.arrive("front", "+1")
        await settle(switchboard, 0.2)
        assert (await switchboard.report(call.call_id, "fa", AgentAction.ANSWER, 1)).accepted
        desk.holding["fa"] = list(answers)
        for _ in answers:
            await switchboard.homes.check()
        seen = registry.agent("fa")
        assert seen is not None
        assert seen.epoch == 1  # the registry never learnt anything new
        assert call.call_id not in switchboard.calls
        row = records(folder).call(call.call_id)
        assert row is not None
        assert row["outcome"] == "failed"
        assert row["reason"].startswith(reason), row
        await switchboard.close()


async def test_a_talking_call_whose_agent_its_home_released_is_closed_as_failed(
    tmp_path: Path,
) -> None:
    """Seeds 12 and 13 of `callmesh chaos --faults 12`: the owner was cut off (or paused) past
    the home's watchdog, the home freed the agent, who took other calls, while the owner kept
    the call talking; the registry shows the release (same epoch, no call, since the answer)."""
    switchboard, registry = board(tmp_path, FakeDesk())
    free_agent(registry, "fa", "front")
    call = await switchboard.arrive("front", "+1")
    await settle(switchboard, 0.2)
    offered = switchboard.calls[call.call_id]
    assert (
        await switchboard.report(call.call_id, "fa", AgentAction.ANSWER, offered.epoch)
    ).accepted
    answered = switchboard.calls[call.call_id]
    agent = registry.agent("fa")
    assert agent is not None
    talking = replace(
        agent,
        state=AgentState.TALKING,
        active_calls=1,
        state_since_ms=answered.answered_ms + 5,
        clock=agent.clock + 1,
    )
    registry.apply([talking], [], "n2")
    await settle(switchboard, 0.2)
    assert switchboard.calls[call.call_id].state is CallState.TALKING  # the agent is on it
    wrap_up = replace(
        talking,
        state=AgentState.WRAP_UP,
        active_calls=0,
        state_since_ms=answered.answered_ms + 900,
        clock=talking.clock + 1,
    )
    registry.apply([wrap_up], [], "n2")
    await settle(switchboard, 0.2)
    row = records(tmp_path).call(call.call_id)
    assert row is not None
    assert (row["outcome"], row["reason"]) == (
        "failed",
        "the agent's home released the agent (wrap_up)",
    )
    await switchboard.close()


class _NoLink:
    def desk(self, node_id: str) -> Desk:
        raise AssertionError("not used")

    def owner(self, node_id: str) -> Owner:
        raise AssertionError("not used")


@asynccontextmanager
async def home_node(
    tmp_path: Path, site: str = "site-a", link: Link | None = None
) -> AsyncIterator[tuple[Etcd, Registry, Sessions, AgentDesk]]:
    """One home node's parts over a real etcd: its registry, its sessions (unfenced) and its
    desk (`link`: the other nodes, none by default)."""
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url], lease_ttl_s=5) as etcd,
    ):
        registry = Registry("n1", HybridClock())
        sessions = Sessions(etcd, registry, site, Trust.INHOUSE, on_write=lambda: None)
        sessions.unfence()
        yield (
            etcd,
            registry,
            sessions,
            AgentDesk(etcd, registry, sessions, link or _NoLink(), lambda: {}),
        )


async def test_a_stale_release_after_a_lost_lease_does_not_free_the_new_reservation(
    tmp_path: Path,
) -> None:
    """Seed 12 of `callmesh chaos --faults 12`: the agent's node lost its lease (paused, its etcd
    down) while the agent had an offer; the agent logged in at the same node again and was
    reserved for a new call in the same slot; then the old call's release deleted that slot and
    took one off the new session's count, and the agent was reserved for a second call."""
    async with home_node(tmp_path) as (etcd, registry, sessions, desk):
        profile = Profile(1, (("chaos", 5),), 1)
        await sessions.login("ann", profile)
        first = CallInfo("c1", "n9", "chaos", "+1", 0)
        assert (await desk.reserve(first, "ann", 30, 0)).reserved
        slot = sessions.slot_key("ann", 0)
        sessions.fence()  # the lease is lost: the session and its slot die with it
        await etcd.delete(slot)
        sessions.unfence()
        await sessions.login("ann", profile)  # a new session, epoch 2, at the same node
        second = CallInfo("c2", "n9", "chaos", "+2", 0)
        assert (await desk.reserve(second, "ann", 30, 0)).reserved
        # seed 12 again (after the fixes): the old offer was still listed, and the agent hung
        # it up while talking on the new session's call
        assert [o.call.call_id for o in desk.offer_list("ann")] == ["c2"]
        with pytest.raises(OfferError):
            await desk.act("ann", "c1", AgentAction.HANGUP)
        await desk.release("c1", "ann", ReleaseReason.ENDED)  # the first call's owner ends it
        held = await etcd.get(slot)
        assert held is not None
        assert json.loads(held.value)["call"] == "c2"
        record = registry.agent("ann")
        assert record is not None
        assert (record.state, record.active_calls) == (AgentState.RESERVED, 1)
        third = CallInfo("c3", "n9", "chaos", "+3", 0)
        assert not (await desk.reserve(third, "ann", 30, 0)).reserved
        await desk.release("c2", "ann", ReleaseReason.CANCELLED)
        assert await etcd.get(slot) is None
        await desk.close()


async def test_a_release_after_the_session_moved_frees_the_slot_it_wrote(tmp_path: Path) -> None:
    """The agent logs in at another node of the site while on a call: the call's release at the
    old node must still free the slot it wrote (under the old node's lease, which lives on), or
    the agent's new session can never be reserved in it."""
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url], lease_ttl_s=5) as etcd_a,
        Etcd([server.client_url], lease_ttl_s=5) as etcd_b,
    ):
        registry_a, registry_b = Registry("na", HybridClock()), Registry("nb", HybridClock())
        sessions_a = Sessions(etcd_a, registry_a, "site-a", Trust.INHOUSE, on_write=lambda: None)
        sessions_b = Sessions(etcd_b, registry_b, "site-a", Trust.INHOUSE, on_write=lambda: None)
        sessions_a.unfence()
        sessions_b.unfence()
        desk_a = AgentDesk(etcd_a, registry_a, sessions_a, _NoLink(), lambda: {})
        desk_b = AgentDesk(etcd_b, registry_b, sessions_b, _NoLink(), lambda: {})
        profile = Profile(1, (("chaos", 5),), 1)
        await sessions_a.login("ann", profile)
        first = CallInfo("c1", "n9", "chaos", "+1", 0)
        assert (await desk_a.reserve(first, "ann", 30, 0)).reserved
        moved = await sessions_b.login("ann", profile)  # at node b now, a higher epoch
        registry_a.apply([moved], [], "nb")  # node a learns it (gossip)
        await desk_a.release("c1", "ann", ReleaseReason.ENDED)
        assert await etcd_a.get(sessions_a.slot_key("ann", 0)) is None
        second = CallInfo("c2", "n9", "chaos", "+2", 0)
        assert (await desk_b.reserve(second, "ann", 30, 0)).reserved
        await desk_b.release("c2", "ann", ReleaseReason.CANCELLED)
        await desk_a.close()
        await desk_b.close()


async def test_a_release_while_etcd_is_down_frees_the_agent_and_the_slot_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 13 of `callmesh chaos`: the site's etcd was down when a call's release came, freeing
    the slot failed, the release stopped there, and the agent stayed reserved for good."""
    async with home_node(tmp_path) as (etcd, registry, sessions, desk):
        await sessions.login("ann", Profile(1, (("chaos", 5),), 1))
        assert (await desk.reserve(CallInfo("c1", "n9", "chaos", "+1", 0), "ann", 30, 0)).reserved
        slot = sessions.slot_key("ann", 0)
        working_get = etcd.get

        async def etcd_down(key: str) -> object:
            raise EtcdUnavailable("etcd is down (test)")

        monkeypatch.setattr(etcd, "get", etcd_down)
        await desk.release("c1", "ann", ReleaseReason.CANCELLED)
        record = registry.agent("ann")
        assert record is not None
        assert (record.state, record.active_calls) == (AgentState.AVAILABLE, 0)
        monkeypatch.setattr(etcd, "get", working_get)  # etcd is back: the retry frees the slot

        async def freed() -> bool:
            return await etcd.get(slot) is None

        await eventually(freed, 5, "the slot freed once etcd answers")
        assert (await desk.reserve(CallInfo("c2", "n9", "chaos", "+2", 0), "ann", 30, 0)).reserved
        await desk.close()


class _Doubt:
    """The etcd lease's deadline passed before its keep-alive's answer came: `has_lease` is
    false, but no loss is declared (`lease_lost` stays false) and the answer may renew it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.doubtful = False
        doubt = self

        def has_lease(etcd: Etcd) -> bool:
            return etcd.lease_id is not None and not doubt.doubtful

        monkeypatch.setattr(Etcd, "has_lease", property(has_lease))


async def test_a_release_while_the_lease_is_doubtful_frees_the_agent_once_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 13 of `callmesh chaos`, on a loaded machine: a release came while the lease's
    deadline had passed and its keep-alive's answer was late; the release saw the node fenced
    and did nothing, the answer renewed the lease, and the agent, its session alive, stayed
    reserved for good with its slot held (the sweep reaps only sessions whose key is gone)."""
    doubt = _Doubt(monkeypatch)
    async with home_node(tmp_path) as (etcd, registry, sessions, desk):
        await sessions.login("ann", Profile(1, (("chaos", 5),), 1))
        assert (await desk.reserve(CallInfo("c1", "n9", "chaos", "+1", 0), "ann", 30, 0)).reserved
        slot = sessions.slot_key("ann", 0)
        doubt.doubtful = True
        await desk.release("c1", "ann", ReleaseReason.MISSED)  # the owner's ring timeout
        record = registry.agent("ann")
        assert record is not None
        assert record.state is AgentState.RESERVED  # nothing is written while in doubt
        assert not sessions.lease_lost
        doubt.doubtful = False  # the keep-alive's answer comes: the lease was kept

        async def available() -> bool:
            record = registry.agent("ann")
            return record is not None and record.state is AgentState.AVAILABLE

        await eventually(available, 5, "the agent available once the lease is kept")
        assert await etcd.get(slot) is None
        assert (await desk.reserve(CallInfo("c2", "n9", "chaos", "+2", 0), "ann", 30, 0)).reserved
        await desk.close()


async def test_a_reservation_that_finds_the_lease_doubtful_after_its_slot_frees_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same doubt between writing the slot and writing the agent's record: the refusal
    left the slot held under a lease that lived on, and the agent could never be reserved."""
    doubt = _Doubt(monkeypatch)
    async with home_node(tmp_path) as (etcd, _registry, sessions, desk):
        await sessions.login("ann", Profile(1, (("chaos", 5),), 1))
        put_if = etcd.put_if

        async def put_then_doubt(key: str, value: bytes, **kwargs: object) -> bool:
            written = await put_if(key, value, **kwargs)  # type: ignore[arg-type]
            doubt.doubtful = "/slots/" in key
            return written

        monkeypatch.setattr(etcd, "put_if", put_then_doubt)
        refused = await desk.reserve(CallInfo("c1", "n9", "chaos", "+1", 0), "ann", 30, 0)
        assert (refused.reserved, refused.reason) == (False, "node_fenced")
        doubt.doubtful = False
        monkeypatch.setattr(etcd, "put_if", put_if)
        assert await etcd.get(sessions.slot_key("ann", 0)) is None
        assert (await desk.reserve(CallInfo("c2", "n9", "chaos", "+2", 0), "ann", 30, 0)).reserved
        await desk.close()


async def test_a_release_while_the_lease_is_doubtful_ends_when_the_lease_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the doubt ends in a lost lease, the waiting release writes nothing: the session was
    dropped, its slot dies with the lease and a peer writes the agent offline."""
    doubt = _Doubt(monkeypatch)
    async with home_node(tmp_path) as (_etcd, registry, sessions, desk):
        await sessions.login("ann", Profile(1, (("chaos", 5),), 1))
        assert (await desk.reserve(CallInfo("c1", "n9", "chaos", "+1", 0), "ann", 30, 0)).reserved
        doubt.doubtful = True
        await desk.release("c1", "ann", ReleaseReason.MISSED)
        sessions.fence()  # the keep-alive declares the lease lost
        assert not await sessions.settled("ann", within_s=0.2)
        record = registry.agent("ann")
        assert record is not None
        assert record.state is AgentState.RESERVED  # the fenced node wrote nothing
        await desk.close()


async def test_two_releases_at_once_leave_an_agent_of_capacity_two_available(
    tmp_path: Path,
) -> None:
    """Seed 13 of `callmesh chaos`, on a loaded machine (site-b's agents have capacity 2): two
    calls of one agent ended at once; each release read the agent's record, waited for etcd to
    free its slot, and wrote the record it had read with one call less, so the second write
    undid the first and the agent was left reserved with one call for good."""
    async with home_node(tmp_path, "site-b") as (etcd, registry, sessions, desk):
        await sessions.login("bob", Profile(1, (("chaos", 5),), 2))
        for call in ("c1", "c2"):
            info = CallInfo(call, "n9", "chaos", "+1", 0)
            assert (await desk.reserve(info, "bob", 30, 0)).reserved
        record = registry.agent("bob")
        assert record is not None
        assert (record.state, record.active_calls) == (AgentState.RESERVED, 2)
        await asyncio.gather(
            desk.release("c1", "bob", ReleaseReason.CANCELLED),
            desk.release("c2", "bob", ReleaseReason.CANCELLED),
        )
        record = registry.agent("bob")
        assert record is not None
        assert (record.state, record.active_calls) == (AgentState.AVAILABLE, 0)
        assert [await etcd.get(sessions.slot_key("bob", slot)) for slot in (0, 1)] == [None, None]
        await desk.close()


class _SlowOwner:
    """A call's owner that accepts an answer only once `go` is set (a slow or loaded owner)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

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
        self.asked.set()
        await self.go.wait()
        return Verdict(True)

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
        return False


class _SlowLink:
    def __init__(self, owner: _SlowOwner) -> None:
        self._owner = owner

    def desk(self, node_id: str) -> Desk:
        raise AssertionError("not used")

    def owner(self, node_id: str) -> Owner:
        return self._owner


async def test_an_answer_accepted_after_the_offer_lapsed_does_not_leave_the_agent_talking(
    tmp_path: Path,
) -> None:
    """The agent answered as its offer was about to lapse, and the owner's accept came after
    the lapse had released the agent: the answer then wrote the agent talking, with no offer
    left for any release to undo it, and the agent stayed talking for good."""
    owner = _SlowOwner()
    async with home_node(tmp_path, "site-b", link=_SlowLink(owner)) as (
        _etcd,
        registry,
        sessions,
        desk,
    ):
        await sessions.login("bob", Profile(1, (("chaos", 5),), 1))
        assert (await desk.reserve(CallInfo("c1", "n9", "chaos", "+1", 0), "bob", 30, 0)).reserved
        answering = asyncio.create_task(desk.act("bob", "c1", AgentAction.ANSWER))
        await asyncio.wait_for(owner.asked.wait(), 5)
        await desk.release("c1", "bob", ReleaseReason.MISSED)  # the offer lapses meanwhile
        owner.go.set()
        await answering
        record = registry.agent("bob")
        assert record is not None
        assert (record.state, record.active_calls) == (AgentState.AVAILABLE, 0)
        await desk.close()
