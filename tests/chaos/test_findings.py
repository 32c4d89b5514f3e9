"""Bugs the chaos checker found in the node, each pinned by a test without processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from node.agentdesk import AgentDesk, OfferError
from node.callstate import CallState
from node.etcd import Etcd, EtcdUnavailable
from node.etcd_server import EtcdServer
from node.exchange import AgentAction, CallInfo, Desk, Owner, ReleaseReason
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


async def test_a_stale_release_after_a_lost_lease_does_not_free_the_new_reservation(
    tmp_path: Path,
) -> None:
    """Seed 12 of `callmesh chaos --faults 12`: the agent's node lost its lease (paused, its etcd
    down) while the agent had an offer; the agent logged in at the same node again and was
    reserved for a new call in the same slot; then the old call's release deleted that slot and
    took one off the new session's count, and the agent was reserved for a second call."""
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url], lease_ttl_s=5) as etcd,
    ):
        registry = Registry("n1", HybridClock())
        sessions = Sessions(etcd, registry, "site-a", Trust.INHOUSE, on_write=lambda: None)
        sessions.unfence()
        desk = AgentDesk(etcd, registry, sessions, _NoLink(), lambda: {})
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
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url], lease_ttl_s=5) as etcd,
    ):
        registry = Registry("n1", HybridClock())
        sessions = Sessions(etcd, registry, "site-a", Trust.INHOUSE, on_write=lambda: None)
        sessions.unfence()
        desk = AgentDesk(etcd, registry, sessions, _NoLink(), lambda: {})
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
