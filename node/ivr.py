"""The IVR: calls that arrive at an entry point, their hook runs and the actions they answer.

`Ivr` takes each call that arrives at an entry point (Switchboard.arrive, state arriving), runs
the entry point's hook on the call's events (arrived, digits, queued, offered, answered, ended)
one at a time and in order, on a task it owns, and applies the actions through the switchboard's
public methods. It follows the call's later life through `Switchboard.observers`.

Never lost (I3): a hook that fails, hangs, prints garbage or leaves the caller at the entry point
with nothing to wait for (no queue, no digits to collect) gets the entry point's fallback (a
queue, voicemail or hang-up), and so does a caller still in the menu after `max_ivr_s`.

Digits (DTMF) come from the caller (POST /calls/ID/digits; RFC 4733 from the media layer later
calls the same method) or from the agent's keypad. While a collection is pending the caller's
digits feed it; a caller's digits at the entry point with none pending are kept (type-ahead, up
to 32) for the next one; any other digits go to the hook as a "digits" event at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from node import metrics
from node.callstate import Call, CallEvent, CallState, Outcome, WrongState
from node.crm import InvalidCustomer
from node.entries import EntryPoint
from node.hookrunner import Hook, HookMaker, HookResult, HookRunners
from node.hooks import (
    DIGITS,
    MAX_DIGITS,
    Action,
    Announce,
    Collect,
    Hangup,
    HookEvent,
    Play,
    Queue,
    Record,
    Set,
    Voicemail,
    describe,
)
from node.prompts import Prompter
from node.switchboard import UnknownCall, UnknownQueue
from node.tasks import Tasks
from registry.clock import wall_ms
from registry.records import Skills

log = logging.getLogger(__name__)

AT_ENTRY = (CallState.ARRIVING, CallState.IVR)
_QUEUED = (CallEvent.QUEUE, CallEvent.REQUEUE, CallEvent.TRANSFER)
MAX_PENDING = 16
"""Events a call's hook may have waiting; digits beyond it are dropped (noted), never the call's
own events."""
PACE_WEIGHT = 0.3
"""How much the latest gap between two answers of a queue moves its pace (an EWMA)."""


class BadDigits(ValueError):
    code = "digits_invalid"


class Board(Protocol):
    """What the IVR needs of the switchboard (node/switchboard.py)."""

    @property
    def node_id(self) -> str: ...

    @property
    def calls(self) -> Mapping[str, Call]: ...

    def position(self, call: Call) -> int: ...

    def begin_menu(self, call_id: str) -> Call: ...

    def enqueue(self, call_id: str, queue: str, *, transfer: bool = False) -> Call: ...

    def end_by_hook(self, call_id: str, *, voicemail: bool, reason: str) -> Call: ...

    def set_routing(
        self, call_id: str, *, skills: Skills | None = None, priority: int | None = None
    ) -> Call: ...

    def add_customer_fields(self, call_id: str, fields: Sequence[tuple[str, str]]) -> None: ...


class Notes(Protocol):
    """Where the IVR notes what happened (node/cdr.py's CallRecords)."""

    def add_event(self, call_id: str, kind: str, detail: str = "", at_ms: int = 0) -> None: ...

    def add_voicemail(self, call: Call, file: str = "") -> None: ...


@dataclass(eq=False)
class _Session:
    """One call at an entry point, until its "ended" event has been told."""

    call_id: str
    entry: EntryPoint
    hook: Hook
    inbox: asyncio.Queue[HookEvent] = field(default_factory=asyncio.Queue)
    collect: Collect | None = None
    collected: str = ""
    collections: int = 0  # how many collections began (a timer names the one it ends)
    typed: str = ""  # the caller's type-ahead
    timer: asyncio.TimerHandle | None = None
    limit: asyncio.TimerHandle | None = None


class Ivr:
    """`arrived(call)` (via Switchboard.entries) starts a call's session; `digits()` feeds DTMF;
    `observe` (in Switchboard.observers) follows the call. An async context manager: its tasks
    and webhook client end with it."""

    def __init__(
        self,
        board: Board,
        entries: Callable[[], Mapping[str, EntryPoint]],
        notes: Notes,
        prompter: Prompter,
        site: str,
        runners: HookMaker | None = None,
    ) -> None:
        self._board = board
        self._entries = entries
        self._notes = notes
        self.prompter = prompter
        """What the caller hears: the signalling-only one notes prompts as call events; the
        media layer puts its own here."""
        self.on_record: list[Callable[[str, bool], None]] = []
        """Told (call id, on) when a hook starts or stops recording: the media layer records."""
        self._site = site
        self._sessions: dict[str, _Session] = {}
        self._tasks = Tasks("ivr")
        self._runners = runners if runners is not None else HookRunners()
        self._pace: dict[str, tuple[int, float | None]] = {}  # queue -> (last answer, gap s)

    async def __aenter__(self) -> Ivr:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for session in self._sessions.values():
            _cancel(session.timer)
            _cancel(session.limit)
        await self._tasks.close()
        await self._runners.close()

    # -- the switchboard's side ------------------------------------------------------------------

    def known(self) -> Collection[str]:
        return self._entries().keys()

    def arrived(self, call: Call) -> None:
        entry = self._entries().get(call.entry)
        if entry is None:  # reloaded away between the check and now: arrive() checked it
            self._board.end_by_hook(call.call_id, voicemail=False, reason="no such entry point")
            return
        session = _Session(call.call_id, entry, self._runners.hook(entry))
        self._sessions[call.call_id] = session
        session.limit = asyncio.get_running_loop().call_later(
            entry.max_ivr_s, self._menu_too_long, call.call_id
        )
        self._tell(session, "arrived", call)
        self._tasks.spawn(self._work(session), f"ivr {call.call_id}")

    def observe(self, before: Call, event: CallEvent, after: Call) -> None:
        """Switchboard observer: the hook's later events, voicemail entries, the queues' pace."""
        if after.outcome is Outcome.VOICEMAIL:
            self._notes.add_voicemail(after)
        if event is CallEvent.ANSWER:
            self._answered(after.queue)
        session = self._sessions.get(after.call_id)
        if session is None:
            return
        if after.state not in AT_ENTRY:
            _cancel(session.limit)
        if event in _QUEUED:
            self._tell(session, "queued", after)
            self._tasks.spawn(self._on_hold(after), f"hold {after.call_id}")
        elif event is CallEvent.OFFER:
            self._tell(session, "offered", after)
        elif event is CallEvent.ANSWER:
            self._tell(session, "answered", after)
        elif after.state is CallState.ENDED:
            _cancel(session.timer)
            self._tell(session, "ended", after)

    # -- digits -------------------------------------------------------------------------------

    def digits(self, call_id: str, digits: str, *, agent_id: str = "") -> Call:
        """DTMF from the caller, or from `agent_id`'s keypad. BadDigits when not 1-32 of
        0-9 * # A-D; UnknownCall when the call is not live here."""
        if not isinstance(digits, str) or not DIGITS.fullmatch(digits):
            raise BadDigits(f"digits must be 1-{MAX_DIGITS} of 0-9 * # A-D, got {digits!r:.40}")
        call = self._board.calls.get(call_id)
        if call is None:
            raise UnknownCall(f"no live call {call_id} on node {self._board.node_id}")
        source = f"agent {agent_id}" if agent_id else "caller"
        self._notes.add_event(call_id, "digits", f"{source}: {digits}")
        session = self._sessions.get(call_id)
        if session is None:
            return call  # no entry point, no hook: the digits are noted only
        if agent_id or (session.collect is None and call.state not in AT_ENTRY):
            self._tell(session, "digits", call, digits, "agent" if agent_id else "caller", agent_id)
            return call
        for key in digits:
            self._key(session, key)
        return call

    def _key(self, session: _Session, key: str) -> None:
        collect = session.collect
        if collect is None:
            session.typed = (session.typed + key)[-MAX_DIGITS:]
            return
        if collect.end and key == collect.end:
            self._collected(session, "caller")
            return
        session.collected += key
        if len(session.collected) >= collect.max_digits:
            self._collected(session, "caller")

    def _collected(self, session: _Session, source: str) -> None:
        _cancel(session.timer)
        digits, session.collect, session.collected = session.collected, None, ""
        call = self._board.calls.get(session.call_id)
        if call is not None:
            self._tell(session, "digits", call, digits, source)

    def _collect_timeout(self, session: _Session, number: int) -> None:
        if session.collect is not None and session.collections == number:
            self._notes.add_event(session.call_id, "digits", f"timeout: {session.collected}")
            self._collected(session, "timeout")

    def _menu_too_long(self, call_id: str) -> None:
        session = self._sessions.get(call_id)
        call = self._board.calls.get(call_id)
        if session is None or call is None or call.state not in AT_ENTRY:
            return
        _cancel(session.timer)
        session.collect = None
        self._notes.add_event(
            call_id, "fallback", f"still in the menu after {session.entry.max_ivr_s:g} s"
        )
        self._tasks.spawn(self._apply(session, session.entry.fallback_action), f"limit {call_id}")

    # -- the hook's runs, one at a time per call -----------------------------------------------

    def _tell(
        self,
        session: _Session,
        event: str,
        call: Call,
        digits: str = "",
        source: str = "",
        agent_id: str = "",
    ) -> None:
        if event == "digits" and session.inbox.qsize() >= MAX_PENDING:
            self._notes.add_event(call.call_id, "ignored", f"digits {digits}: the hook is busy")
            return
        session.inbox.put_nowait(
            HookEvent(
                event=event,
                call_id=call.call_id,
                entry=call.entry,
                caller=call.caller,
                node=self._board.node_id,
                state=call.state.value,
                queue=call.queue,
                digits=digits,
                source=source,
                agent_id=agent_id or call.agent_id,
                outcome=call.outcome.value if call.outcome is not None else "",
                customer_id=call.customer_id,
                at_ms=wall_ms(),
            )
        )

    async def _work(self, session: _Session) -> None:
        try:
            while True:
                event = await session.inbox.get()
                try:
                    await self._run(session, event)
                except Exception:  # a fault of ours never leaves a caller in the menu (I3)
                    log.exception("call %s: the IVR failed on %s", session.call_id, event.event)
                    if self._at_entry(session.call_id):
                        await self._apply(session, session.entry.fallback_action)
                if event.event == "ended":
                    return
        finally:
            _cancel(session.timer)
            _cancel(session.limit)
            self._sessions.pop(session.call_id, None)

    async def _run(self, session: _Session, event: HookEvent) -> None:
        call_id, entry = session.call_id, session.entry
        result = await session.hook.run(event)
        self._count(event.event, result)
        if result.failed:
            log.warning(
                "call %s: hook of %s on %s: %s", call_id, entry.name, event.event, result.error
            )
            self._notes.add_event(call_id, "hook", f"{event.event}: {result.error}")
        else:
            self._notes.add_event(
                call_id,
                "hook",
                f"{event.event}: {len(result.actions)} actions in {result.seconds * 1000:.0f} ms",
            )
        if event.event == "ended":
            return  # nothing more can happen to the call
        if result.failed:
            if self._at_entry(call_id):
                self._notes.add_event(call_id, "fallback", describe(entry.fallback_action))
                await self._apply(session, entry.fallback_action)
            return
        for action in result.actions:
            if call_id not in self._board.calls:
                break
            await self._apply(session, action)
        if self._at_entry(call_id) and session.collect is None:
            self._notes.add_event(
                call_id, "fallback", f"the hook left the caller in the menu: {entry.fallback}"
            )
            await self._apply(session, entry.fallback_action)

    def _at_entry(self, call_id: str) -> bool:
        call = self._board.calls.get(call_id)
        return call is not None and call.state in AT_ENTRY

    async def _apply(self, session: _Session, action: Action) -> None:
        call_id = session.call_id
        call = self._board.calls.get(call_id)
        if call is None:
            return
        self._notes.add_event(call_id, "action", describe(action))
        board = self._board
        try:
            match action:
                case Play(prompt):
                    if call.state in AT_ENTRY:
                        board.begin_menu(call_id)
                    await self.prompter.play(call_id, prompt)
                case Collect():
                    if call.state in AT_ENTRY:
                        board.begin_menu(call_id)
                    if action.prompt:
                        await self.prompter.play(call_id, action.prompt)
                    self._collect(session, action)
                case Queue(queue, transfer):
                    board.enqueue(call_id, queue, transfer=transfer)
                case Set(skills, priority, customer):
                    if skills is not None or priority is not None:
                        board.set_routing(call_id, skills=skills, priority=priority)
                    if customer:
                        board.add_customer_fields(call_id, customer)
                case Announce():
                    await self.prompter.announce(
                        call_id, board.position(call), self.estimated_wait_s(call)
                    )
                case Record(on):
                    for recorder in self.on_record:
                        recorder(call_id, on)
                case Voicemail():
                    await self.prompter.play(call_id, "voicemail")
                    board.end_by_hook(call_id, voicemail=True, reason="the hook chose voicemail")
                case Hangup(reason):
                    board.end_by_hook(call_id, voicemail=False, reason=reason)
        except (WrongState, InvalidCustomer, UnknownCall, UnknownQueue) as error:
            self._notes.add_event(call_id, "ignored", f"{describe(action)}: {error}")

    def _collect(self, session: _Session, collect: Collect) -> None:
        _cancel(session.timer)
        session.collect, session.collected = collect, ""
        session.collections += 1
        session.timer = asyncio.get_running_loop().call_later(
            collect.timeout_s, self._collect_timeout, session, session.collections
        )
        typed, session.typed = session.typed, ""
        for key in typed:
            if session.collect is None:  # the type-ahead finished the collection
                session.typed += key
            else:
                self._key(session, key)

    def _count(self, event: str, result: HookResult) -> None:
        metrics.HOOK_RUNS.labels(self._site, event, result.result).inc()
        metrics.HOOK_DURATION.labels(self._site, event).observe(result.seconds)

    # -- holding, and the estimated wait ---------------------------------------------------------

    async def _on_hold(self, call: Call) -> None:
        """A call from an entry point that starts waiting hears its position, then the music."""
        live = self._board.calls.get(call.call_id)
        if live is None or live.state is not CallState.WAITING:
            return
        await self.prompter.announce(
            call.call_id, self._board.position(live), self.estimated_wait_s(live)
        )
        await self.prompter.play(call.call_id, "hold")

    def _answered(self, queue: str) -> None:
        now = wall_ms()
        last, gap = self._pace.get(queue, (0, None))
        if last:
            latest = (now - last) / 1000
            gap = latest if gap is None else (1 - PACE_WEIGHT) * gap + PACE_WEIGHT * latest
        self._pace[queue] = (now, gap)

    def estimated_wait_s(self, call: Call) -> float | None:
        """Position x the recent gap between two answers of the call's queue on this node;
        None until two calls of the queue have been answered here."""
        gap = self._pace.get(call.queue, (0, None))[1]
        position = self._board.position(call)
        if gap is None or position <= 0:
            return None
        return position * gap


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
