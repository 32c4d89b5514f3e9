"""Nodes whose offers failed are skipped for a doubling backoff, then probed once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.callstate import CallState
from node.exchange import CallInfo, Desk, Owner, ReleaseReason, Reservation, Verdict
from node.reachability import Reachability
from node.switchboard import Switchboard
from registry.clock import HybridClock
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry
from tests.node.test_switchboard import QUEUES, records, settle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_node_is_skipped_for_a_doubling_backoff_then_probed_once() -> None:
    clock = Clock()
    reach = Reachability(first_backoff_s=1, max_backoff_s=4, clock=clock)
    assert reach.usable("n2")
    assert reach.failed("n2") == 1
    assert not reach.usable("n2")
    assert reach.usable("n3")
    clock.now += 1.0
    assert reach.usable("n2")  # the probe
    assert not reach.usable("n2")  # the others wait for its answer
    assert [reach.failed("n2"), reach.failed("n2"), reach.failed("n2")] == [2, 4, 4]
    assert reach.unreachable() == ["n2"]
    reach.answered("n2")
    assert reach.usable("n2")
    assert reach.unreachable() == []


def test_backoffs_must_be_positive_and_ordered() -> None:
    with pytest.raises(ValueError, match="backoffs"):
        Reachability(first_backoff_s=0)
    with pytest.raises(ValueError, match="backoffs"):
        Reachability(first_backoff_s=5, max_backoff_s=1)


class DeadSiteDesks:
    """n2's desk never answers (its site is gone); n3's reserves anyone once."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def desk(self, node_id: str) -> Desk:
        link = self

        class _Desk:
            async def reserve(
                self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
            ) -> Reservation:
                link.asked.append(agent_id)
                if node_id == "n2":
                    await asyncio.sleep(60)
                return Reservation(True, "", 1)

            async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
                pass

            async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
                return Verdict(True)

        return _Desk()

    def owner(self, node_id: str) -> Owner:
        raise AssertionError("not used")


def agent(agent_id: str, home: str, idle_since_ms: int) -> AgentRecord:
    return AgentRecord(
        agent_id,
        home,
        "site-b" if home == "n2" else "site-a",
        Trust.INHOUSE,
        1,
        (("front", 5),),
        AgentState.AVAILABLE,
        state_since_ms=idle_since_ms,
        epoch=1,
        clock=1,
    )


async def test_calls_skip_the_agents_of_a_home_that_did_not_answer(tmp_path: Path) -> None:
    registry = Registry("n1", HybridClock())
    # the dead site's agents have been idle longest: ranked first
    dead = [agent(f"d{i}", "n2", 1000 + i) for i in range(3)]
    live = [agent(f"l{i}", "n3", 9000 + i) for i in range(6)]
    registry.apply([*dead, *live], [], "n2")
    desks = DeadSiteDesks()
    switchboard = Switchboard(
        registry,
        "site-a",
        records(tmp_path),
        desks,
        lambda: QUEUES,
        lambda: None,
        rpc_timeout_s=0.2,
        retry_s=0.05,
    )
    calls = [await switchboard.arrive("front", "+0")]
    await settle(switchboard, 0.5)  # d0 times out; the call goes to a live agent
    calls += [await switchboard.arrive("front", f"+{i}") for i in range(1, 4)]
    await settle(switchboard, 0.5)
    states = [switchboard.calls[c.call_id].state for c in calls]
    assert states == [CallState.OFFERED] * 4
    assert sum(1 for a in desks.asked if a.startswith("d")) == 1  # one timeout, then skipped
    assert switchboard.reachability.unreachable() == ["n2"]
    await switchboard.close()
