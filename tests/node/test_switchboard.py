"""The switchboard around fakes of the other side (agents' home nodes): overflow, escalation
bookkeeping and one offer per call, without processes or sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.callstate import CallState
from node.cdr import CallRecords
from node.exchange import (
    WATCHDOG_MISSES,
    AgentAction,
    CallInfo,
    Desk,
    Owner,
    ReleaseReason,
    Reservation,
    Verdict,
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
    """A home node that reserves every agent once and records what it was asked; it holds its
    agents on their calls unless `holding` scripts its next answers for an agent (a Verdict, or
    an exception to raise: ConnectionError for a home that cannot be reached)."""

    def __init__(self) -> None:
        self.reserved: list[tuple[str, str]] = []
        self.released: list[tuple[str, str, ReleaseReason]] = []
        self.asked: list[tuple[str, str, int]] = []
        self.holding: dict[str, list[Verdict | BaseException]] = {}

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        if any(agent == agent_id for agent, _ in self.reserved):
            return Reservation(False, "not_available")
        self.reserved.append((agent_id, call.call_id))
        return Reservation(True, "", 1)

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        self.released.append((call_id, agent_id, reason))

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        self.asked.append((call_id, agent_id, epoch))
        script = self.holding.get(agent_id)
        answer = script.pop(0) if script else Verdict(True)
        if isinstance(answer, BaseException):
            raise answer
        return answer


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


def free_agent(registry: Registry, agent_id: str, skill: str, *, home: str = "n2") -> None:
    registry.apply(
        [
            AgentRecord(
                agent_id,
                home,
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


# -- the owner's watchdog: asking the agent's home whether it still holds the call ------------


async def talking(tmp_path: Path, desk: FakeDesk, *, home: str = "n2") -> tuple[Switchboard, str]:
    """A board with a call in talk with agent fa, homed at `home`."""
    switchboard, registry = board(tmp_path, desk)
    free_agent(registry, "fa", "front", home=home)
    call = await switchboard.arrive("front", "+1")
    for _ in range(100):  # bounded: routing runs as a task
        if switchboard.calls[call.call_id].state is CallState.OFFERED:
            break
        await asyncio.sleep(0.01)
    offered = switchboard.calls[call.call_id]
    assert (
        await switchboard.report(call.call_id, "fa", AgentAction.ANSWER, offered.epoch)
    ).accepted
    assert switchboard.calls[call.call_id].state is CallState.TALKING
    return switchboard, call.call_id


def outcome(tmp_path: Path, call_id: str) -> tuple[str, str]:
    row = records(tmp_path).call(call_id)
    assert row is not None
    return row["outcome"], row["reason"]


async def test_a_call_whose_home_holds_its_agent_goes_on(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    for _ in range(5):
        await switchboard.homes.check()
    assert desk.asked == [(call_id, "fa", 1)] * 5
    assert switchboard.calls[call_id].state is CallState.TALKING
    await switchboard.close()


async def test_a_call_whose_home_no_longer_holds_its_agent_fails_at_once(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    desk.holding["fa"] = [Verdict(False, "epoch_changed")]
    await switchboard.homes.check()
    assert call_id not in switchboard.calls
    assert outcome(tmp_path, call_id) == (
        "failed",
        "agent's home no longer holds the agent on this call: epoch_changed",
    )
    await settle(switchboard, 0.05)  # the release goes out as a task
    assert (call_id, "fa", ReleaseReason.ENDED) in desk.released
    await switchboard.close()


async def test_a_call_whose_home_stays_unreachable_fails_after_the_misses(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    desk.holding["fa"] = [ConnectionError("UNAVAILABLE: connection refused")] * WATCHDOG_MISSES
    for _ in range(WATCHDOG_MISSES - 1):
        await switchboard.homes.check()
        assert switchboard.calls[call_id].state is CallState.TALKING
    await switchboard.homes.check()
    assert call_id not in switchboard.calls
    assert outcome(tmp_path, call_id) == (
        "failed",
        "agent's home n2 unreachable (UNAVAILABLE: connection refused)",
    )
    await switchboard.close()


async def test_an_answer_from_the_home_resets_the_misses(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    lost: list[Verdict | BaseException] = [ConnectionError("no address known for node n2")]
    desk.holding["fa"] = (
        lost * (WATCHDOG_MISSES - 1) + [Verdict(True)] + lost * (WATCHDOG_MISSES - 1)
    )
    for _ in range(2 * WATCHDOG_MISSES - 1):
        await switchboard.homes.check()
    assert switchboard.calls[call_id].state is CallState.TALKING
    assert len(desk.asked) == 2 * WATCHDOG_MISSES - 1
    await switchboard.close()


async def test_a_home_that_does_not_answer_in_time_counts_as_a_miss(tmp_path: Path) -> None:
    class SilentDesk(FakeDesk):
        async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
            self.asked.append((call_id, agent_id, epoch))
            await asyncio.sleep(60)  # a paused node: the rpc timeout bounds the check
            return Verdict(True)

    desk = SilentDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    switchboard._rpc_timeout_s = 0.05
    for _ in range(WATCHDOG_MISSES):
        await asyncio.wait_for(switchboard.homes.check(), 5)
    assert outcome(tmp_path, call_id) == ("failed", "agent's home n2 unreachable (timeout)")
    await switchboard.close()


async def test_an_agent_homed_on_the_owner_itself_is_not_asked(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk, home="n1")
    await switchboard.homes.check()
    assert desk.asked == []
    assert switchboard.calls[call_id].state is CallState.TALKING
    await switchboard.close()


async def test_a_consulted_agent_whose_home_lets_go_leaves_the_call_to_its_agent(
    tmp_path: Path,
) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    free_agent(switchboard._registry, "ba", "back")
    verdict = await switchboard.report(call_id, "fa", AgentAction.CONSULT, 1, queue="back")
    assert verdict.accepted, verdict
    assert (await switchboard.report(call_id, "ba", AgentAction.ANSWER, 1)).accepted
    desk.holding["ba"] = [Verdict(False, "no_session")]
    await switchboard.homes.check()
    assert sorted(agent for _, agent, _ in desk.asked) == ["ba", "fa"]  # both parties
    call = switchboard.calls[call_id]
    assert (call.state, call.agent_id, call.consult_agent) == (CallState.TALKING, "fa", "")
    legs = {leg.agent_id: leg.result for leg in records(tmp_path).legs(call_id)}
    assert legs["ba"].startswith("consult failed: agent's home no longer holds")
    await settle(switchboard, 0.05)
    assert (call_id, "ba", ReleaseReason.ENDED) in desk.released
    await switchboard.close()


async def test_after_a_hand_over_the_new_agent_is_checked(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    free_agent(switchboard._registry, "ba", "back")
    assert (await switchboard.report(call_id, "fa", AgentAction.CONSULT, 1, queue="back")).accepted
    assert (await switchboard.report(call_id, "ba", AgentAction.ANSWER, 1)).accepted
    assert (await switchboard.report(call_id, "fa", AgentAction.HANDOVER, 1)).accepted
    desk.holding["fa"] = [Verdict(False, "call_not_held")]  # fa left: not asked any more
    await switchboard.homes.check()
    assert [agent for _, agent, _ in desk.asked] == ["ba"]
    assert switchboard.calls[call_id].agent_id == "ba"
    await switchboard.close()


async def test_the_watch_loop_closes_a_call_its_home_let_go(tmp_path: Path) -> None:
    desk = FakeDesk()
    switchboard, call_id = await talking(tmp_path, desk)
    desk.holding["fa"] = [Verdict(True), Verdict(False, "no_session")]
    watch = asyncio.create_task(switchboard.homes.watch(every_s=0.01))
    for _ in range(300):  # bounded wait
        if call_id not in switchboard.calls:
            break
        await asyncio.sleep(0.01)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    assert outcome(tmp_path, call_id)[0] == "failed"
    assert len(desk.asked) == 2
    await switchboard.close()
