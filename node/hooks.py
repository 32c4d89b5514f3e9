"""Hook scripts, the contract: the events a hook is told and the actions it answers. Pure: no
I/O here (node/hookrunner.py runs programs and webhooks, node/ivr.py applies the actions).

As a web server runs CGI scripts, the node runs the program (or calls the webhook) configured for
the entry point a call arrived at, on each event of the call's life: arrived, digits, queued,
offered, answered, ended. The event goes to the program as JSON on stdin and as CALLMESH_*
environment variables; the program answers with actions, one JSON object per line on stdout (a
webhook may answer a JSON array instead)::

    {"action": "play", "prompt": "welcome"}
    {"action": "collect", "max": 1, "timeout_s": 8, "prompt": "menu"}
    {"action": "queue", "queue": "billing"}
    {"action": "transfer", "queue": "escalations"}
    {"action": "set", "skills": {"billing": 3}, "priority": 50, "customer": {"tier": "gold"}}
    {"action": "announce"}
    {"action": "record", "on": true}
    {"action": "voicemail"}
    {"action": "hangup", "reason": "closed"}

The event's fields (`HookEvent`) are also in the environment as CALLMESH_EVENT, CALLMESH_CALL_ID,
CALLMESH_ENTRY, CALLMESH_CALLER, CALLMESH_NODE, CALLMESH_STATE, CALLMESH_QUEUE, CALLMESH_DIGITS,
CALLMESH_SOURCE (caller, agent or timeout), CALLMESH_AGENT_ID, CALLMESH_OUTCOME,
CALLMESH_CUSTOMER_ID and CALLMESH_AT_MS. Entry points (node/entries.py) say which program or
webhook a call's events go to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidRecord
from registry.records import MAX_PRIORITY, Skills, check_id, check_skills

EVENTS = ("arrived", "digits", "queued", "offered", "answered", "ended")
"""What a hook is told, in the order of a call's life ("digits" may come at any time)."""

MAX_ACTIONS = 50
MAX_DIGITS = 32
MAX_COLLECT_S = 120.0
MAX_REASON = 200
MAX_CUSTOMER_FIELDS = 20
MAX_CUSTOMER_VALUE = 1024
DIGITS = re.compile(r"[0-9*#A-D]{1,32}")
"""DTMF: 0-9, *, #, A-D; at most MAX_DIGITS at once."""
PROMPT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_FIELD = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class HookOutputError(ValueError):
    """A hook answered something that is not a list of valid actions."""

    code = "hook_output_invalid"


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Play:
    """Play a named prompt (prompts/NAME.wav) to the caller."""

    prompt: str


@dataclass(frozen=True, slots=True)
class Collect:
    """Collect up to `max_digits` digits (ended early by `end`), after playing `prompt` when
    given; then, or after `timeout_s` with what came, the hook gets a "digits" event."""

    max_digits: int = 1
    timeout_s: float = 5.0
    prompt: str = ""
    end: str = "#"


@dataclass(frozen=True, slots=True)
class Queue:
    """Put the call in `queue`: from the IVR, or move a waiting call to another queue; with
    `transfer`, a call in talk too (its agent is released, as in a cold escalation)."""

    queue: str
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class Set:
    """Routing and screen-pop data for this call: required skills (over the queue's), priority,
    and customer fields shown to agents (in-house scope only: a hook's data is not cut)."""

    skills: Skills | None = None
    priority: int | None = None
    customer: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Announce:
    """Tell the caller its position in the queue and the estimated wait."""


@dataclass(frozen=True, slots=True)
class Record:
    """Start (or stop) recording the call (media records it; signalling-only calls note it)."""

    on: bool = True


@dataclass(frozen=True, slots=True)
class Voicemail:
    """End the call: the caller leaves a message."""


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call."""

    reason: str = "the hook hung up"


Action = Play | Collect | Queue | Set | Announce | Record | Voicemail | Hangup


def describe(action: Action) -> str:
    """One short line for the call's events: `queue billing`, `play welcome`, ..."""
    match action:
        case Play(prompt):
            return f"play {prompt}"
        case Collect(max_digits, timeout_s, prompt, end):
            extra = f" after {prompt}" if prompt else ""
            return f"collect {max_digits} digits within {timeout_s:g} s{extra} (end {end or '-'})"
        case Queue(queue, transfer):
            return f"{'transfer' if transfer else 'queue'} {queue}"
        case Set(skills, priority, customer):
            parts = [f"skills {dict(skills)}"] if skills is not None else []
            parts += [f"priority {priority}"] if priority is not None else []
            parts += [f"customer {sorted(k for k, _ in customer)}"] if customer else []
            return "set " + ", ".join(parts)
        case Announce():
            return "announce"
        case Record(on):
            return f"record {'on' if on else 'off'}"
        case Voicemail():
            return "voicemail"
        case Hangup(reason):
            return f"hangup ({reason})"


# -- parsing a hook's answer -----------------------------------------------------------------


def parse_actions(output: bytes) -> tuple[Action, ...]:
    """The actions of a hook's answer: JSON lines (one object per line, blank lines skipped) or
    one JSON array of objects. Raises HookOutputError, and nothing else, naming the line and
    what was wrong with it."""
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HookOutputError(f"not UTF-8 text: {error}") from None
    stripped = text.strip()
    if stripped.startswith("["):
        items = _json(stripped, "the answer")
        if not isinstance(items, list):
            raise HookOutputError("the answer is not a JSON array of actions")
        numbered = list(enumerate(items, 1))
    else:
        numbered = [
            (number, _json(line, f"line {number}"))
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    if len(numbered) > MAX_ACTIONS:
        raise HookOutputError(f"at most {MAX_ACTIONS} actions, got {len(numbered)}")
    actions = []
    for number, item in numbered:
        try:
            actions.append(_action(item))
        except HookOutputError as error:
            raise HookOutputError(f"action {number}: {error}") from None
    return tuple(actions)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise HookOutputError(f"{where} is not JSON ({str(error)[:80]}): {text[:60]!r}") from None


_KEYS: dict[str, frozenset[str]] = {
    "play": frozenset({"prompt"}),
    "collect": frozenset({"max", "timeout_s", "prompt", "end"}),
    "queue": frozenset({"queue"}),
    "transfer": frozenset({"queue"}),
    "set": frozenset({"skills", "priority", "customer"}),
    "announce": frozenset(),
    "record": frozenset({"on"}),
    "voicemail": frozenset(),
    "hangup": frozenset({"reason"}),
}


def _action(item: object) -> Action:
    if not isinstance(item, dict):
        raise HookOutputError(f'must be a JSON object with "action", got {_show(item)}')
    kind = item.get("action")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise HookOutputError(f"unknown action {_show(kind)}; known: {', '.join(sorted(_KEYS))}")
    unknown = sorted(str(key) for key in item if key != "action" and key not in _KEYS[kind])
    if unknown:
        known = ", ".join(sorted(_KEYS[kind])) or "none"
        raise HookOutputError(f"{kind}: unknown keys {unknown[:5]}; known: {known}")
    if kind == "play":
        return Play(_prompt(item.get("prompt"), required=True))
    if kind == "collect":
        end = item.get("end", "#")
        if not isinstance(end, str) or len(end) > 1 or (end and not DIGITS.fullmatch(end)):
            raise HookOutputError(f'collect: end must be one DTMF digit or "", got {_show(end)}')
        return Collect(
            max_digits=_int(item.get("max", 1), "collect: max", 1, MAX_DIGITS),
            timeout_s=_seconds(item.get("timeout_s", 5.0), "collect: timeout_s", MAX_COLLECT_S),
            prompt=_prompt(item.get("prompt", ""), required=False),
            end=end,
        )
    if kind in ("queue", "transfer"):
        queue = item.get("queue")
        try:
            check_id("queue", queue)
        except InvalidRecord as error:
            raise HookOutputError(f"{kind}: {error}") from None
        assert isinstance(queue, str)
        return Queue(queue, transfer=kind == "transfer")
    if kind == "set":
        return _set(item)
    if kind == "record":
        on = item.get("on", True)
        if type(on) is not bool:
            raise HookOutputError(f"record: on must be true or false, got {_show(on)}")
        return Record(on)
    if kind == "hangup":
        reason = item.get("reason", "the hook hung up")
        if not isinstance(reason, str) or len(reason) > MAX_REASON or _CONTROL.search(reason):
            raise HookOutputError(
                f"hangup: reason must be text of at most {MAX_REASON} characters, "
                f"got {_show(reason)}"
            )
        return Hangup(reason or "the hook hung up")
    return Announce() if kind == "announce" else Voicemail()


def _set(item: Mapping[str, Any]) -> Set:
    if not {"skills", "priority", "customer"} & item.keys():
        raise HookOutputError("set: name at least one of skills, priority, customer")
    skills: Skills | None = None
    if "skills" in item:
        raw = item["skills"]
        if not isinstance(raw, dict):
            raise HookOutputError(
                f'set: skills must be an object, e.g. {{"billing": 3}}, got {_show(raw)}'
            )
        if not all(
            isinstance(level, int) and not isinstance(level, bool) for level in raw.values()
        ):
            raise HookOutputError(f"set: skill levels must be integers 1-10, got {_show(raw)}")
        skills = tuple(sorted(raw.items()))
        try:
            check_skills("set: skills", skills)
        except InvalidRecord as error:
            raise HookOutputError(str(error)) from None
    priority = None
    if "priority" in item:
        priority = _int(item["priority"], "set: priority", -MAX_PRIORITY, MAX_PRIORITY)
    customer: tuple[tuple[str, str], ...] = ()
    if "customer" in item:
        raw = item["customer"]
        if not isinstance(raw, dict) or len(raw) > MAX_CUSTOMER_FIELDS:
            raise HookOutputError(
                f"set: customer must be an object of at most {MAX_CUSTOMER_FIELDS} text fields, "
                f"got {_show(raw)}"
            )
        for name, value in raw.items():
            if (
                not _FIELD.fullmatch(name)
                or name in ("customer_id", "services")
                or not isinstance(value, str)
                or len(value) > MAX_CUSTOMER_VALUE
                or _CONTROL.search(value.replace("\t", " ").replace("\n", " "))
            ):
                raise HookOutputError(
                    f"set: customer field {_show(name)} must be named by 1-64 letters, digits "
                    f"and ._- (not customer_id or services) and hold text of at most "
                    f"{MAX_CUSTOMER_VALUE} characters, got {_show(value)}"
                )
        customer = tuple(sorted(raw.items()))
    return Set(skills, priority, customer)


def _prompt(value: object, *, required: bool) -> str:
    if value == "" and not required:
        return ""
    if not isinstance(value, str) or not PROMPT.fullmatch(value):
        raise HookOutputError(
            f"prompt must be a name of 1-64 lower-case letters, digits, _ and -, got {_show(value)}"
        )
    return value


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise HookOutputError(f"{what} must be an integer in {low}-{high}, got {_show(value)}")
    return value


def _seconds(value: object, what: str, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise HookOutputError(
            f"{what} must be seconds above 0 and at most {high:g}, got {_show(value)}"
        )
    return float(value)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HookEvent:
    """What a hook is told: one event of one call."""

    event: str
    call_id: str
    entry: str
    caller: str
    node: str
    state: str
    queue: str = ""
    digits: str = ""
    source: str = ""  # for digits: "caller", "agent" or "timeout"
    agent_id: str = ""
    outcome: str = ""
    customer_id: str = ""
    at_ms: int = 0

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"event must be one of {', '.join(EVENTS)}, got {self.event!r:.40}")

    def as_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "call_id": self.call_id,
            "entry": self.entry,
            "caller": self.caller,
            "node": self.node,
            "state": self.state,
            "queue": self.queue,
            "digits": self.digits,
            "source": self.source,
            "agent_id": self.agent_id,
            "outcome": self.outcome,
            "customer_id": self.customer_id,
            "at_ms": self.at_ms,
        }

    def payload(self) -> bytes:
        """The JSON on the program's stdin (one line) or in the webhook's POST body."""
        return json.dumps(self.as_json(), separators=(",", ":")).encode() + b"\n"

    def environment(self) -> dict[str, str]:
        """CALLMESH_EVENT, CALLMESH_CALL_ID, CALLMESH_CALLER, CALLMESH_DIGITS, ... (NUL removed:
        the caller id comes from outside)."""
        return {
            f"CALLMESH_{key.upper()}": str(value).replace("\x00", "")
            for key, value in self.as_json().items()
        }
