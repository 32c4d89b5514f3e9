"""The IVR (node/ivr.py) on a real switchboard around fakes of the agents' home nodes, with real
hook programs: the awk menu routes digit 2 to billing; hooks that hang, crash, print garbage or
too much get the fallback and the call is still routed; skills and priority set by a hook reach
routing; voicemail is listed; the call record shows the IVR time, the digits and the actions."""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from node.calls_api import call_json
from node.callstate import Call, CallEvent, CallState
from node.cdr import CallRecords
from node.entries import EntryPoint
from node.exchange import AgentAction
from node.hookrunner import Hook, HookResult
from node.hooks import (
    Announce,
    Collect,
    Hangup,
    HookEvent,
    Play,
    Queue,
    Record,
    Set,
    Voicemail,
)
from node.ivr import BadDigits, Ivr
from node.prompts import PROMPTS, RecordingPrompter, announcement, catalogue, shipped_prompts_dir
from node.queues import parse_deployment
from node.switchboard import Switchboard, UnknownCall, UnknownEntry
from registry.clock import HybridClock
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry
from tests.node.test_switchboard import FakeDesk, FakeLink

MENU = Path(__file__).resolve().parents[2] / "hooks" / "menu.awk"

DEPLOYMENT = f"""
[queues.sales]
skills = {{ sales = 1 }}

[queues.billing]
skills = {{ billing = 2 }}

[queues.support]
skills = {{ support = 1 }}

[queues.closed]
skills = {{ nobody = 1 }}
max_wait_s = 0.2
overflow = "voicemail"

[entries.main]
program = ["awk", "-f", "{MENU}"]
fallback = "queue:support"

[entries.hangs]
program = ["sleep", "30"]
timeout_s = 0.3
fallback = "queue:support"

[entries.crashes]
program = ["sh", "-c", "echo broken >&2; exit 1"]
fallback = "queue:support"

[entries.garbage]
program = ["echo", "press one for sales"]
fallback = "queue:support"

[entries.floods]
program = ["yes", '{{"action": "announce"}}']
max_output_bytes = 1024
fallback = "queue:support"

[entries.silent]
program = ["echo", '{{"action": "play", "prompt": "welcome"}}']
fallback = "queue:support"

[entries.voicemail]
program = ["echo", '{{"action": "voicemail"}}']
fallback = "hangup"

[entries.picky]
program = ["sh", "-c", '''echo '{{"action": "set", "skills": {{"billing": 5}}, "priority": 9}}'
echo '{{"action": "queue", "queue": "billing"}}' ''']
fallback = "queue:support"

[entries.desk]
program = ["sh", "-c", '''case "$CALLMESH_EVENT:$CALLMESH_SOURCE" in
  arrived:*) echo '{{"action": "queue", "queue": "sales"}}' ;;
  digits:agent) echo '{{"action": "transfer", "queue": "support"}}' ;;
esac''']
fallback = "queue:support"

[entries.slowmenu]
program = ["echo", '{{"action": "collect", "max": 1, "timeout_s": 0.2}}']
max_ivr_s = 0.6
fallback = "voicemail"
"""
QUEUES, ENTRIES = parse_deployment(DEPLOYMENT)


@dataclass
class Rig:
    board: Switchboard
    ivr: Ivr
    registry: Registry
    desk: FakeDesk
    records: CallRecords


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    registry = Registry("n1", HybridClock())
    records = CallRecords(tmp_path / "calls.db")
    desk = FakeDesk()
    board = Switchboard(
        registry, "site-a", records, FakeLink(desk), lambda: QUEUES, lambda: None, retry_s=0.05
    )
    ivr = Ivr(board, lambda: ENTRIES, records, RecordingPrompter(records), "site-a")
    board.entries = ivr
    board.observers.append(ivr.observe)
    router = asyncio.create_task(board.run())
    try:
        yield Rig(board, ivr, registry, desk, records)
    finally:
        router.cancel()
        await asyncio.gather(router, return_exceptions=True)
        await ivr.close()
        await board.close()
        records.close()


def free_agent(registry: Registry, agent_id: str, skill: str, level: int = 5) -> None:
    record = AgentRecord(
        agent_id,
        "n2",
        "site-a",
        Trust.INHOUSE,
        1,
        ((skill, level),),
        AgentState.AVAILABLE,
        epoch=1,
        clock=1,
    )
    registry.apply([record], [], "n2")


async def until(check: Callable[[], bool | Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.02)


def state(rig: Rig, call: Call) -> CallState | None:
    live = rig.board.calls.get(call.call_id)
    return None if live is None else live.state


def kinds(rig: Rig, call: Call, kind: str) -> list[str]:
    return [e["detail"] for e in rig.records.events(call.call_id) if e["kind"] == kind]


async def test_digit_2_in_the_awk_menu_routes_to_billing(rig: Rig) -> None:
    free_agent(rig.registry, "sam", "sales")
    free_agent(rig.registry, "bill", "billing", 3)
    call = await rig.board.arrive("", "+4930123", entry="main")
    assert call.state is CallState.ARRIVING
    await until(lambda: state(rig, call) is CallState.IVR)
    await asyncio.sleep(0.05)
    rig.ivr.digits(call.call_id, "2")
    await until(lambda: state(rig, call) is CallState.OFFERED)
    live = rig.board.calls[call.call_id]
    assert (live.queue, live.agent_id) == ("billing", "bill")
    assert rig.desk.reserved == [("bill", call.call_id)]
    row = rig.records.call(call.call_id)
    assert row is not None
    assert (row["entry"], row["queue"]) == ("main", "billing")
    assert row["ivr_ms"] > 0
    assert kinds(rig, call, "digits") == ["caller: 2"]
    assert kinds(rig, call, "action")[-1] == "queue billing"
    assert "welcome" in kinds(rig, call, "prompt")
    assert "menu" in kinds(rig, call, "prompt")
    assert "hold" in kinds(rig, call, "prompt")  # music on hold once it waits
    hooks = kinds(rig, call, "hook")
    assert hooks[0].startswith("arrived: 2 actions")
    assert hooks[1].startswith("digits: 3 actions")
    await until(lambda: any(h.startswith("offered") for h in kinds(rig, call, "hook")))
    runs = REGISTRY.get_sample_value(
        "callmesh_hook_runs_total", {"site": "site-a", "hook": "digits", "result": "ok"}
    )
    assert runs is not None
    assert runs >= 1


async def test_the_agents_keypad_reaches_the_hook_which_transfers_the_call(rig: Rig) -> None:
    free_agent(rig.registry, "sam", "sales")
    free_agent(rig.registry, "sue", "support")
    call = await rig.board.arrive("", "+1", entry="desk")
    await until(lambda: state(rig, call) is CallState.OFFERED)
    epoch = rig.board.calls[call.call_id].epoch
    assert (await rig.board.report(call.call_id, "sam", AgentAction.ANSWER, epoch)).accepted
    verdict = await rig.board.report(call.call_id, "sam", AgentAction.DIGITS, epoch, notes="5")
    assert verdict.accepted
    await until(lambda: rig.board.calls[call.call_id].agent_id == "sue")
    assert rig.board.calls[call.call_id].queue == "support"
    assert kinds(rig, call, "digits") == ["agent sam: 5"]
    assert "transfer support" in kinds(rig, call, "action")
    bad = await rig.board.report(call.call_id, "sue", AgentAction.DIGITS, 1, notes="x")
    assert not bad.accepted  # not in talk yet, and not digits


async def test_digits_typed_ahead_of_the_menu_are_kept(rig: Rig) -> None:
    free_agent(rig.registry, "sam", "sales")
    call = await rig.board.arrive("", "+1", entry="main")
    rig.ivr.digits(call.call_id, "1")  # before the hook has even answered
    await until(lambda: state(rig, call) is CallState.OFFERED)
    assert rig.board.calls[call.call_id].queue == "sales"


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("hangs", "did not answer within 0.3 s; killed"),
        ("crashes", "exited with code 1: broken"),
        ("garbage", "bad answer: line 1 is not JSON"),
        ("floods", "printed more than 1024 bytes; cut and killed"),
        ("silent", "the hook left the caller in the menu"),
    ],
)
async def test_a_failing_hook_gets_the_fallback_and_the_call_is_routed(
    rig: Rig, entry: str, why: str
) -> None:
    free_agent(rig.registry, "sue", "support")
    call = await rig.board.arrive("", "+1", entry=entry)
    await until(lambda: state(rig, call) is CallState.OFFERED)
    assert rig.board.calls[call.call_id].queue == "support"
    assert rig.desk.reserved == [("sue", call.call_id)]
    notes = " | ".join(kinds(rig, call, "hook") + kinds(rig, call, "fallback"))
    assert why in notes


async def test_skills_and_priority_set_by_a_hook_reach_routing(rig: Rig) -> None:
    free_agent(rig.registry, "junior", "billing", 3)  # enough for the queue, not for the call
    call = await rig.board.arrive("", "+1", entry="picky")
    await until(lambda: state(rig, call) is CallState.WAITING)
    live = rig.board.calls[call.call_id]
    assert (live.skills, live.priority) == ((("billing", 5),), 9)
    await asyncio.sleep(0.2)
    assert rig.desk.reserved == []
    summary = next(q for q in rig.registry.queues() if q.queue == "billing")
    assert summary.top_priority == 9
    free_agent(rig.registry, "senior", "billing", 6)
    await until(lambda: state(rig, call) is CallState.OFFERED)
    assert rig.board.calls[call.call_id].agent_id == "senior"


async def test_a_hook_sends_the_caller_to_voicemail_listed_for_supervisors(rig: Rig) -> None:
    call = await rig.board.arrive("", "+4930123", entry="voicemail")
    await until(lambda: call.call_id not in rig.board.calls)
    row = rig.records.call(call.call_id)
    assert row is not None
    assert row["outcome"] == "voicemail"
    [listed] = rig.records.voicemails()
    assert (listed["call_id"], listed["entry"], listed["caller"]) == (
        call.call_id,
        "voicemail",
        "+4930123",
    )
    assert "voicemail" in kinds(rig, call, "prompt")
    rig.records.set_recording(call.call_id, "recordings/message.wav")  # once media records it
    assert rig.records.voicemails()[0]["file"] == "recordings/message.wav"


async def test_a_queue_overflowing_to_voicemail_lists_the_message_too(rig: Rig) -> None:
    call = await rig.board.arrive("closed", "+4930999")
    await until(lambda: call.call_id not in rig.board.calls)
    [listed] = rig.records.voicemails()
    assert (listed["call_id"], listed["queue"], listed["entry"]) == (call.call_id, "closed", "")


async def test_a_caller_kept_in_the_menu_too_long_gets_the_fallback(rig: Rig) -> None:
    call = await rig.board.arrive("", "+1", entry="slowmenu")  # collects again after each timeout
    await until(lambda: call.call_id not in rig.board.calls)
    row = rig.records.call(call.call_id)
    assert row is not None
    assert row["outcome"] == "voicemail"


async def test_a_caller_who_hangs_up_in_the_menu_abandons_and_the_hook_is_told(rig: Rig) -> None:
    call = await rig.board.arrive("", "+1", entry="main")
    await until(lambda: state(rig, call) is CallState.IVR)
    await rig.board.hangup_caller(call.call_id)
    row = rig.records.call(call.call_id)
    assert row is not None
    assert row["outcome"] == "abandoned"
    await until(lambda: any(h.startswith("ended") for h in kinds(rig, call, "hook")))


async def test_bad_digits_and_unknown_entry_points_are_refused(rig: Rig) -> None:
    with pytest.raises(UnknownEntry, match="no entry point 'nope'; entry points: crashes"):
        await rig.board.arrive("", "+1", entry="nope")
    call = await rig.board.arrive("", "+1", entry="main")
    for bad in ("", "12x", "1" * 33):
        with pytest.raises(BadDigits):
            rig.ivr.digits(call.call_id, bad)


def test_every_prompt_ships_as_a_small_mono_16_bit_wav() -> None:
    folder = shipped_prompts_dir()
    for name in PROMPTS:
        with wave.open(str(folder / f"{name}.wav"), "rb") as audio:
            assert audio.getframerate() in (8000, 48000), name
            assert (audio.getnchannels(), audio.getsampwidth()) == (1, 2), name
            assert 0.2 < audio.getnframes() / audio.getframerate() < 10, name
    assert sum(path.stat().st_size for path in folder.glob("*.wav")) < 1_000_000
    listed = {item["name"] for item in catalogue(folder)}
    assert listed == set(PROMPTS)


def test_an_announcement_says_position_then_wait() -> None:
    assert announcement(3, 90) == ("position", "n3", "wait", "n2", "minutes")
    assert announcement(1, 20) == ("position", "n1", "wait", "less-than-a-minute")
    assert announcement(12, None) == ("position", "more-than-ten")
    assert announcement(0, None) == ()


# -- never lost at the entry point (I3), whatever the hook answers ---------------------------


class ScriptedHook:
    """A hook answering a script of results, one per run, then nothing."""

    def __init__(self, script: list[HookResult]) -> None:
        self.script = list(script)

    async def run(self, event: HookEvent) -> HookResult:
        await asyncio.sleep(0)
        return self.script.pop(0) if self.script else HookResult()


class ScriptedRunners:
    def __init__(self, script: list[HookResult]) -> None:
        self.script = script

    def hook(self, entry: EntryPoint) -> Hook:
        return ScriptedHook(self.script)

    async def close(self) -> None:
        pass


_ACTIONS = st.one_of(
    st.builds(Play, st.sampled_from(["welcome", "menu", "nosuch"])),
    st.builds(Collect, st.integers(1, 3), st.sampled_from([0.01, 0.05]), st.just(""), st.just("#")),
    st.builds(Queue, st.sampled_from(["sales", "billing", "gone"]), st.booleans()),
    st.builds(Set, st.just((("billing", 3),)), st.integers(-5, 5)),
    st.builds(Announce),
    st.builds(Record, st.booleans()),
    st.builds(Voicemail),
    st.builds(Hangup, st.just("bye")),
)
_RESULTS = st.one_of(
    st.builds(HookResult, st.lists(_ACTIONS, max_size=4).map(tuple)),
    st.just(HookResult(error="exited with code 1")),
)


@settings(max_examples=25, deadline=None)
@given(
    script=st.lists(_RESULTS, max_size=5),
    keys=st.lists(st.sampled_from(["1", "2", "#", "9"]), max_size=4),
    hang_up=st.booleans(),
)
def test_whatever_the_hook_answers_the_call_leaves_the_entry_point_with_one_outcome(
    script: list[HookResult], keys: list[str], hang_up: bool
) -> None:
    async def scenario() -> None:
        queues, entries = parse_deployment(
            "[queues.sales]\nskills = {}\n[queues.billing]\nskills = {}\n"
            '[entries.main]\nprogram = ["unused"]\nmax_ivr_s = 0.3\nfallback = "queue:sales"\n'
        )
        records = CallRecords(":memory:")
        board = Switchboard(
            Registry("n1", HybridClock()),
            "site-a",
            records,
            FakeLink(FakeDesk()),
            lambda: queues,
            lambda: None,
        )
        ivr = Ivr(
            board,
            lambda: entries,
            records,
            RecordingPrompter(records),
            "site-a",
            runners=ScriptedRunners(script),
        )
        board.entries = ivr
        board.observers.append(ivr.observe)
        call = await board.arrive("", "+1", entry="main")
        for key in keys:
            await asyncio.sleep(0.01)
            with contextlib.suppress(UnknownCall):
                ivr.digits(call.call_id, key)
        if hang_up:
            with contextlib.suppress(UnknownCall):
                await board.hangup_caller(call.call_id)
        deadline = time.monotonic() + 2
        while call.call_id in board.calls and board.calls[call.call_id].state in (
            CallState.ARRIVING,
            CallState.IVR,
        ):
            assert time.monotonic() < deadline, "the call stayed at the entry point"
            await asyncio.sleep(0.02)
        row = records.call(call.call_id)
        assert row is not None
        live = board.calls.get(call.call_id)
        if live is None:
            assert row["outcome"] in ("completed", "abandoned", "voicemail")
        else:
            assert live.state is CallState.WAITING
            assert live.queue in ("sales", "billing")
            assert row["outcome"] is None
        await asyncio.sleep(0.05)  # let the last spawned tasks start before closing
        await ivr.close()
        await board.close()
        records.close()

    asyncio.run(scenario())


class BrokenPrompter:
    async def play(self, call_id: str, prompt: str) -> None:
        raise RuntimeError("the media layer broke")

    async def announce(self, call_id: str, position: int, wait_s: float | None) -> None:
        raise RuntimeError("the media layer broke")


async def test_a_fault_in_the_ivr_itself_still_gets_the_caller_the_fallback(rig: Rig) -> None:
    rig.ivr.prompter = BrokenPrompter()
    call = await rig.board.arrive("", "+1", entry="main")
    await until(lambda: state(rig, call) is CallState.WAITING)
    assert rig.board.calls[call.call_id].queue == "support"


async def test_the_estimated_wait_is_the_position_times_the_queues_recent_pace(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = await rig.board.arrive("sales", "+4930999")  # no agent: it waits, number 1
    assert rig.ivr.estimated_wait_s(waiting) is None  # no answers yet: no pace to go by
    clock = iter([1_000_000, 1_030_000])  # two answers of the queue, 30 s apart
    monkeypatch.setattr("node.ivr.wall_ms", lambda: next(clock))
    for _ in range(2):
        rig.ivr.observe(waiting, CallEvent.ANSWER, waiting)
    assert rig.board.position(waiting) == 1
    assert rig.ivr.estimated_wait_s(waiting) == pytest.approx(30.0)
    shown = call_json(waiting, rig.board.position(waiting), rig.ivr.estimated_wait_s(waiting))
    assert shown["estimated_wait_s"] == pytest.approx(30.0)
