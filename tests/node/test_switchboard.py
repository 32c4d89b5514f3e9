"""The switchboard around fakes of the other side (agents' home nodes): overflow, escalation
bookkeeping and one offer per call, without processes or sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.callstate import CallState
from node.cdr import CallRecords
from node.exchange import (
    AgentAction,
    CallInfo,
    Desk,
    Owner,
    ReleaseReason,
    Reservation,
)
from node.queues import parse_queues
from node.switchboard import Switchboard
from registry.clock import HybridClock
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry

QUEUES = parse_queues(
    """
[queues.front]
skills = { front = 1 }
max_wait_s = 0.3
overflow = "queue:back"

[queues.back]
skills = { back = 1 }
max_wait_s = 0.3
overflow = "voicemail"

[queues.last]
skills = { nobody = 1 }
max_wait_s = 0.3
overflow = "hangup"
"""
)


class FakeDesk:
    """A home node that reserves every agent once and records what it was asked."""

    def __init__(self) -> None:
        self.reserved: list[tuple[str, str]] = []
        self.released: list[tuple[str, str, ReleaseReason]] = []

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        if any(agent == agent_id for agent, _ in self.reserved):
            return Reservation(False, "not_available")
        self.reserved.append((agent_id, call.call_id))
        return Reservation(True, "", 1)

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        self.released.append((call_id, agent_id, reason))


class FakeLink:
    def __init__(self, desk: FakeDesk) -> None:
        self._desk = desk

    def desk(self, node_id: str) -> Desk:
        return self._desk

    def owner(self, node_id: str) -> Owner:
        raise AssertionError("the switchboard never asks an owner")


def board(tmp_path: Path, desk: FakeDesk) -> tuple[Switchboard, Registry]:
    registry = Registry("n1", HybridClock())
    switchboard = Switchboard(
        registry,
        "site-a",
        records(tmp_path),
        FakeLink(desk),
        lambda: QUEUES,
        lambda: None,
        retry_s=0.05,
    )
    return switchboard, registry


def records(tmp_path: Path) -> CallRecords:
    return CallRecords(tmp_path / "calls.db")  # the same file the board writes (WAL)


def free_agent(registry: Registry, agent_id: str, skill: str) -> None:
    registry.apply(
        [
            AgentRecord(
                agent_id,
                "n2",
                "site-a",
                Trust.INHOUSE,
                1,
                ((skill, 5),),
                AgentState.AVAILABLE,
                epoch=1,
                clock=1,
            )
        ],
        [],
        "n2",
    )


async def settle(switchboard: Switchboard, seconds: float) -> None:
    runner = asyncio.create_task(switchboard.run())
    await asyncio.sleep(seconds)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_a_call_nobody_takes_overflows_to_the_next_queue_then_voicemail(
    tmp_path: Path,
) -> None:
    desk = FakeDesk()
    switchboard, _ = board(tmp_path, desk)
    call = await switchboard.arrive("front", "+1")
    await settle(switchboard, 1.2)
    assert call.call_id not in switchboard.calls
    row = records(tmp_path).call(call.call_id)
    assert row is not None
    assert (row["queue"], row["outcome"]) == ("back", "voicemail")
    assert desk.reserved == []
    await switchboard.close()


async def test_overflow_reaches_an_agent_of_the_next_queue(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, registry = board(tmp_path, desk)
    free_agent(registry, "bo", "back")
    call = await switchboard.arrive("front", "+1")
    await settle(switchboard, 0.8)
    live = switchboard.calls[call.call_id]
    assert (live.queue, live.state, live.agent_id) == ("back", CallState.OFFERED, "bo")
    assert desk.reserved == [("bo", call.call_id)]
    await switchboard.close()


async def test_overflow_to_hang_up_ends_as_overflowed(tmp_path: Path) -> None:
    switchboard, _ = board(tmp_path, FakeDesk())
    call = await switchboard.arrive("last", "+1")
    await settle(switchboard, 0.6)
    row = records(tmp_path).call(call.call_id)
    assert row is not None
    assert row["outcome"] == "overflowed"
    await switchboard.close()


async def test_one_offer_per_call_and_escalation_moves_the_call_on(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, registry = board(tmp_path, desk)
    free_agent(registry, "fa", "front")
    free_agent(registry, "ba", "back")
    call = await switchboard.arrive("front", "+1")
    await settle(switchboard, 0.2)
    assert desk.reserved == [("fa", call.call_id)]  # retries did not offer it twice
    offered = switchboard.calls[call.call_id]
    verdict = await switchboard.report(call.call_id, "fa", AgentAction.ANSWER, offered.epoch)
    assert verdict.accepted
    verdict = await switchboard.report(
        call.call_id, "fa", AgentAction.ESCALATE, offered.epoch, queue="back", notes="vip"
    )
    assert verdict.accepted
    await settle(switchboard, 0.2)
    moved = switchboard.calls[call.call_id]
    assert (moved.queue, moved.agent_id, moved.notes, moved.escalations) == (
        "back",
        "ba",
        "fa: vip",
        1,
    )
    assert (call.call_id, "fa", ReleaseReason.ENDED) in desk.released
    legs = records(tmp_path).legs(call.call_id)
    assert [(leg.agent_id, leg.result) for leg in legs] == [("fa", "escalated"), ("ba", "")]
    await switchboard.close()
