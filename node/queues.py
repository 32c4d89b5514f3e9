"""Queues as operators configure them: a TOML file (deployed as a ConfigMap), validated with errors
that name the queue and the field, and reloaded when it changes.

The file holds one table per queue; escalation steps are an array of tables::

    [queues.sales]
    skills = { sales = 3, english = 2 }   # required skills with their minimum levels (1-10)
    priority = 10                          # higher is served first
    overflow = "queue:support"             # after max_wait_s: voicemail, hangup or queue:NAME

    [[queues.sales.steps]]                 # from 0 s: tier-1 agents at partner sites
    after_s = 0
    tiers = [1]
    trusts = ["partner"]

    [[queues.sales.steps]]                 # from 30 s, also: in-house tier-2 specialists
    after_s = 30
    tiers = [2]
    trusts = ["inhouse"]
    sites = ["site-a"]                     # optional: only these sites (default: any)

Steps are cumulative: an agent eligible in an earlier step stays eligible (node/routing.py decides
which steps a waiting call has reached). The same file holds the entry points, `[entries.NAME]`
tables (node/entries.py), validated and reloaded with the queues (`parse_deployment`).
Every field but `skills` has a default (`QueueConfig`);
a queue without steps may be taken by any tier at any site.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.entries import EntryPoint, HookConfigError, parse_entries
from registry.errors import InvalidRecord
from registry.records import MAX_PRIORITY, MAX_TIER, Skills, Trust, check_id, check_skills

MAX_WAIT_S = 86_400.0
"""No queue keeps a caller, or waits to escalate, longer than a day."""
MAX_RING_TIMEOUT_S = 600.0
MAX_WRAP_UP_S = 3_600.0
MAX_MISSED_OFFERS = 100
OVERFLOW_ACTIONS = ("voicemail", "hangup")
OVERFLOW_QUEUE_PREFIX = "queue:"
ALL_TIERS = frozenset(range(1, MAX_TIER + 1))
ALL_TRUSTS = frozenset(Trust)


class QueueConfigError(ValueError):
    """The queue configuration is unusable; `queue` and `field` say where ("" when global)."""

    code = "queue_config_invalid"

    def __init__(self, problem: str, queue: str = "", field: str = "") -> None:
        self.problem = problem
        self.queue = queue
        self.field = field
        where = [f"queue {queue}"] if queue else []
        where += [field] if field else []
        super().__init__(": ".join([*where, problem]))

    def within(self, queue: str, prefix: str = "") -> QueueConfigError:
        """The same problem, placed in `queue` (and under `prefix`, e.g. "steps[1]")."""
        field_ = ".".join(p for p in (prefix, self.field) if p)
        return QueueConfigError(self.problem, queue or self.queue, field_)


def _check_seconds(name: str, value: float, low: float, high: float, *, open_low: bool) -> None:
    """`value` is a finite number of seconds in (low, high] (`open_low`) or [low, high]."""
    ok = type(value) in (int, float) and math.isfinite(value)
    if not ok or (value <= low if open_low else value < low) or value > high:
        bound = "above" if open_low else "at least"
        raise QueueConfigError(
            f"must be a number of seconds {bound} {low:g} and at most {high:g}, got {value!r:.40}",
            field=name,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One escalation step: who may take the call from `after_s` seconds of waiting on."""

    after_s: float
    tiers: frozenset[int]
    """Eligible agent tiers, e.g. {1}."""
    trusts: frozenset[Trust]
    """Eligible site trust levels."""
    sites: frozenset[str] | None = None
    """Eligible sites; None: any site."""

    def __post_init__(self) -> None:
        _check_seconds("after_s", self.after_s, 0.0, MAX_WAIT_S, open_low=False)
        if (
            type(self.tiers) is not frozenset
            or not self.tiers
            or not all(type(t) is int and 1 <= t <= MAX_TIER for t in self.tiers)
        ):
            raise QueueConfigError(
                f"must be a non-empty set of agent tiers 1-{MAX_TIER}, got {_show(self.tiers)}",
                field="tiers",
            )
        if (
            type(self.trusts) is not frozenset
            or not self.trusts
            or not all(type(t) is Trust for t in self.trusts)
        ):
            raise QueueConfigError(
                f"must be a non-empty set of inhouse and/or partner, got {_show(self.trusts)}",
                field="trusts",
            )
        if self.sites is not None:
            if type(self.sites) is not frozenset or not self.sites:
                raise QueueConfigError(
                    f"must be a non-empty set of site ids (leave it out for any site), "
                    f"got {_show(self.sites)}",
                    field="sites",
                )
            for site in self.sites:
                try:
                    check_id("site", site)
                except InvalidRecord as error:
                    raise QueueConfigError(str(error), field="sites") from None


ANYONE = (Step(0.0, ALL_TIERS, ALL_TRUSTS),)
"""The steps of a queue that names none: any tier, any trust, any site, at once."""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One queue: who may take its calls and for how long a caller waits."""

    name: str
    skills: Skills
    """Required skills with their MINIMUM levels (1-10), sorted by name."""
    priority: int = 0
    """Higher is served first, across all queues an agent may take."""
    service_level_pct: float = 80.0
    service_level_s: float = 20.0
    """The target: service_level_pct % of calls answered within service_level_s."""
    steps: tuple[Step, ...] = field(default=ANYONE)
    """Escalation steps in increasing order of after_s; the first has after_s == 0."""
    max_wait_s: float = 300.0
    """After this long in the queue the call overflows."""
    overflow: str = "voicemail"
    """"voicemail", "hangup" or "queue:NAME" (another configured queue)."""
    ring_timeout_s: float = 15.0
    """How long an offer rings before it counts as missed and the next agent is tried."""
    wrap_up_s: float = 10.0
    """The agent's wrap-up time after a call of this queue."""
    missed_offers_to_not_ready: int = 2
    """An agent who misses this many offers in a row is set not-ready."""
    record: bool = False
    """Record both sides of its calls (WAV under the node's data_dir, named in the call record)."""

    def __post_init__(self) -> None:
        try:
            check_id("name", self.name)
        except InvalidRecord as error:
            raise QueueConfigError(str(error), field="name") from None
        try:
            self._validate()
        except QueueConfigError as error:
            raise error.within(self.name) from None

    def _validate(self) -> None:
        try:
            check_skills("skills", self.skills)
        except InvalidRecord as error:
            raise QueueConfigError(str(error), field="skills") from None
        if type(self.priority) is not int or not -MAX_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise QueueConfigError(
                f"must be an integer in {-MAX_PRIORITY}-{MAX_PRIORITY}, got {self.priority!r:.40}",
                field="priority",
            )
        pct = self.service_level_pct
        if type(pct) not in (int, float) or not 0 < pct <= 100:
            raise QueueConfigError(
                f"must be a percentage above 0 and at most 100, got {pct!r:.40}",
                field="service_level_pct",
            )
        _check_seconds("service_level_s", self.service_level_s, 0.0, MAX_WAIT_S, open_low=True)
        _check_seconds("max_wait_s", self.max_wait_s, 0.0, MAX_WAIT_S, open_low=True)
        _check_seconds(
            "ring_timeout_s", self.ring_timeout_s, 0.0, MAX_RING_TIMEOUT_S, open_low=True
        )
        _check_seconds("wrap_up_s", self.wrap_up_s, 0.0, MAX_WRAP_UP_S, open_low=False)
        missed = self.missed_offers_to_not_ready
        if type(missed) is not int or not 1 <= missed <= MAX_MISSED_OFFERS:
            raise QueueConfigError(
                f"must be an integer in 1-{MAX_MISSED_OFFERS}, got {missed!r:.40}",
                field="missed_offers_to_not_ready",
            )
        if type(self.record) is not bool:
            raise QueueConfigError(
                f"must be true or false, got {self.record!r:.40}", field="record"
            )
        self._validate_steps()
        self._validate_overflow()

    def _validate_steps(self) -> None:
        if type(self.steps) is not tuple or not self.steps:
            raise QueueConfigError("a queue needs at least one step", field="steps")
        for i, step in enumerate(self.steps):
            if type(step) is not Step:
                raise QueueConfigError(f"must be a Step, got {step!r:.40}", field=f"steps[{i}]")
        if self.steps[0].after_s != 0:
            raise QueueConfigError(
                f"the first step must start at after_s = 0, not {self.steps[0].after_s:g}",
                field="steps[0].after_s",
            )
        for i in range(1, len(self.steps)):
            before, after = self.steps[i - 1].after_s, self.steps[i].after_s
            if after <= before:
                raise QueueConfigError(
                    f"steps must be in increasing order of after_s: {after:g} follows {before:g}",
                    field=f"steps[{i}].after_s",
                )
        last = len(self.steps) - 1
        if self.steps[last].after_s >= self.max_wait_s:
            raise QueueConfigError(
                f"{self.steps[last].after_s:g} is never reached: calls overflow at "
                f"max_wait_s = {self.max_wait_s:g}",
                field=f"steps[{last}].after_s",
            )

    def _validate_overflow(self) -> None:
        overflow = self.overflow
        if type(overflow) is not str:
            raise QueueConfigError(f"must be a string, got {overflow!r:.40}", field="overflow")
        if overflow in OVERFLOW_ACTIONS:
            return
        target = self.overflow_queue
        if target is None:
            raise QueueConfigError(
                f"must be voicemail, hangup or queue:NAME, got {overflow!r:.80}", field="overflow"
            )
        try:
            check_id("overflow queue", target)
        except InvalidRecord as error:
            raise QueueConfigError(str(error), field="overflow") from None
        if target == self.name:
            raise QueueConfigError("a queue cannot overflow into itself", field="overflow")

    @property
    def overflow_queue(self) -> str | None:
        """NAME when `overflow` is "queue:NAME", else None."""
        if self.overflow.startswith(OVERFLOW_QUEUE_PREFIX):
            return self.overflow[len(OVERFLOW_QUEUE_PREFIX) :]
        return None


def _show(value: object) -> str:
    if isinstance(value, frozenset | set | list | tuple):
        return "[" + ", ".join(sorted(repr(v) for v in value)) + "]"
    return f"{value!r:.80}"


# -- the file ---------------------------------------------------------------------------------

_QUEUE_KEYS = {
    "skills",
    "priority",
    "service_level_pct",
    "service_level_s",
    "steps",
    "max_wait_s",
    "overflow",
    "ring_timeout_s",
    "wrap_up_s",
    "missed_offers_to_not_ready",
    "record",
}
_STEP_KEYS = {"after_s", "tiers", "trusts", "sites"}


def parse_queues(text: str) -> dict[str, QueueConfig]:
    """The queues of a TOML document (`[queues.NAME]` tables), every one validated (and its
    entry points too: see `parse_deployment`).

    Raises QueueConfigError naming the queue and the field of the first problem found: bad TOML,
    unknown keys, wrong types, values out of range, unsorted steps, an overflow into a queue that
    does not exist or a ring of overflows.
    """
    return parse_deployment(text)[0]


def parse_deployment(text: str) -> tuple[dict[str, QueueConfig], dict[str, EntryPoint]]:
    """The queues and the entry points (`[entries.NAME]` tables, node/hooks.py: where calls
    arrive and the hook that runs their IVR) of one TOML document, both validated, so a file
    whose entry points are broken is refused as a whole, like one whose queues are."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise QueueConfigError(f"not valid TOML: {error}") from None
    unknown = sorted(set(raw) - {"queues", "entries"})
    if unknown:
        raise QueueConfigError(
            f"unknown top-level keys: {', '.join(unknown)} (queues go in [queues.NAME] tables, "
            f"entry points in [entries.NAME])"
        )
    tables = raw.get("queues")
    if not isinstance(tables, dict) or not tables:
        raise QueueConfigError("no queues: define at least one [queues.NAME] table")
    queues: dict[str, QueueConfig] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise QueueConfigError(f"must be a table, got {table!r:.40}", queue=name)
        try:
            queues[name] = _queue(name, table)
        except QueueConfigError as error:
            raise error.within(name) from None
    _check_overflows(queues)
    try:
        entries = parse_entries(raw.get("entries"), queues)
    except HookConfigError as error:
        raise QueueConfigError(error.problem, field=error.field) from None
    return queues, entries


def _queue(name: str, table: Mapping[str, Any]) -> QueueConfig:
    unknown = sorted(set(table) - _QUEUE_KEYS)
    if unknown:
        raise QueueConfigError(
            f"unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_QUEUE_KEYS))}"
        )
    if "skills" not in table:
        raise QueueConfigError(
            "missing: a table of skill = minimum level, e.g. { sales = 3 } ({} for none)",
            field="skills",
        )
    values: dict[str, Any] = {"name": name, "skills": _skills(table["skills"])}
    for key in ("priority", "missed_offers_to_not_ready"):
        if key in table:
            values[key] = _int(key, table[key])
    for key in (
        "service_level_pct",
        "service_level_s",
        "max_wait_s",
        "ring_timeout_s",
        "wrap_up_s",
    ):
        if key in table:
            values[key] = _number(key, table[key])
    if "overflow" in table:
        values["overflow"] = _string("overflow", table["overflow"])
    if "record" in table:
        values["record"] = table["record"]
    if "steps" in table:
        values["steps"] = _steps(table["steps"])
    return QueueConfig(**values)


def _skills(value: object) -> Skills:
    if not isinstance(value, dict):
        raise QueueConfigError(
            f"must be a table of skill = minimum level, e.g. {{ sales = 3 }}, got {value!r:.60}",
            field="skills",
        )
    for skill, level in value.items():
        if type(level) is not int or not 1 <= level <= 10:
            raise QueueConfigError(
                f"must be a minimum level, an integer in 1-10, got {level!r:.40}",
                field=f"skills.{skill}",
            )
    return tuple(sorted(value.items()))


def _steps(value: object) -> tuple[Step, ...]:
    if not isinstance(value, list) or not value:
        raise QueueConfigError("must be one or more [[queues.NAME.steps]] tables", field="steps")
    steps = []
    for i, table in enumerate(value):
        try:
            steps.append(_step(table))
        except QueueConfigError as error:
            raise error.within("", f"steps[{i}]") from None
    return tuple(steps)


def _step(table: object) -> Step:
    if not isinstance(table, dict):
        raise QueueConfigError(f"must be a table, got {table!r:.40}")
    unknown = sorted(set(table) - _STEP_KEYS)
    if unknown:
        raise QueueConfigError(
            f"unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_STEP_KEYS))}"
        )
    for key in ("after_s", "tiers", "trusts"):
        if key not in table:
            raise QueueConfigError("missing", field=key)
    tiers = table["tiers"]
    if not isinstance(tiers, list) or not all(type(t) is int for t in tiers):
        raise QueueConfigError(
            f"must be a list of tiers, e.g. [1, 2], got {tiers!r:.60}", field="tiers"
        )
    trusts = table["trusts"]
    if not isinstance(trusts, list) or not all(
        isinstance(t, str) and t.upper() in Trust.__members__ for t in trusts
    ):
        raise QueueConfigError(
            f'must be a list of "inhouse" and/or "partner", got {trusts!r:.60}', field="trusts"
        )
    sites = table.get("sites")
    if sites is not None and (
        not isinstance(sites, list) or not all(isinstance(s, str) for s in sites)
    ):
        raise QueueConfigError(f"must be a list of site ids, got {sites!r:.60}", field="sites")
    return Step(
        after_s=_number("after_s", table["after_s"]),
        tiers=frozenset(tiers),
        trusts=frozenset(Trust[t.upper()] for t in trusts),
        sites=None if sites is None else frozenset(sites),
    )


def _int(key: str, value: object) -> int:
    if type(value) is not int:
        raise QueueConfigError(f"must be an integer, got {value!r:.40}", field=key)
    return value


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueueConfigError(f"must be a number, got {value!r:.40}", field=key)
    return float(value)


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise QueueConfigError(f"must be a string, got {value!r:.40}", field=key)
    return value


def _check_overflows(queues: Mapping[str, QueueConfig]) -> None:
    """Every overflow target exists, and no chain of overflows comes back to where it began."""
    for name, queue in queues.items():
        target = queue.overflow_queue
        if target is not None and target not in queues:
            raise QueueConfigError(
                f"overflows into queue {target!r}, which is not configured "
                f"(queues: {', '.join(sorted(queues))})",
                queue=name,
                field="overflow",
            )
    for name in queues:
        seen = [name]
        target = queues[name].overflow_queue
        while target is not None:
            if target in seen:
                ring = " -> ".join([*seen, target])
                raise QueueConfigError(
                    f"overflows in a ring ({ring}); a call would never leave", name, "overflow"
                )
            seen.append(target)
            target = queues[target].overflow_queue


def load_queues(path: Path) -> dict[str, QueueConfig]:
    """The queues of the TOML file at `path`; QueueConfigError names the file when it fails."""
    return load_deployment(path)[0]


def load_deployment(path: Path) -> tuple[dict[str, QueueConfig], dict[str, EntryPoint]]:
    """The queues and entry points of the TOML file at `path` (`parse_deployment`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise QueueConfigError(f"cannot read queue file {path}: {reason}") from None
    try:
        return parse_deployment(text)
    except QueueConfigError as error:
        raise QueueConfigError(f"{path}: {error.problem}", error.queue, error.field) from None


class QueueFile:
    """The queues of one file, re-read when it changes.

    `current()` stats the file (a few microseconds) and parses it again when its identity, size
    or modification time changed; a ConfigMap update (an atomic symlink swap) shows as a new
    inode. A file that fails to read or parse is reported in `last_error` (and not re-parsed
    until it changes again) while `current()` keeps returning the last good queues. The first
    load must succeed: the constructor raises QueueConfigError. `path=None` serves
    DEFAULT_QUEUES_TOML.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.last_error: QueueConfigError | None = None
        self._stamp: tuple[int, ...] | None = None
        self.reloads = 0
        """How many times the file was read again after a change (good or bad)."""
        self._entries: Mapping[str, EntryPoint]
        if path is None:
            self._queues: Mapping[str, QueueConfig]
            self._queues, self._entries = parse_deployment(DEFAULT_QUEUES_TOML)
            return
        self._stamp = self._stat(path)
        self._queues, self._entries = load_deployment(path)

    @staticmethod
    def _stat(path: Path) -> tuple[int, ...] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def current(self) -> Mapping[str, QueueConfig]:
        """The queues now in force."""
        if self.path is None:
            return self._queues
        stamp = self._stat(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            self.reloads += 1
            try:
                self._queues, self._entries = load_deployment(self.path)
                self.last_error = None
            except QueueConfigError as error:
                self.last_error = error
        return self._queues

    def entries(self) -> Mapping[str, EntryPoint]:
        """The entry points now in force (re-read with the queues)."""
        self.current()
        return self._entries


DEFAULT_QUEUES_TOML = """\
# The sample queues `callmesh up` starts with. Skill levels are minimums (1-10).
# Steps are cumulative: from after_s seconds of waiting on, these agents may take the call too;
# when nobody of the steps reached so far is logged in, the next step applies at once.

[queues.sales]
skills = { sales = 1 }
priority = 10
service_level_pct = 80
service_level_s = 20
max_wait_s = 300
overflow = "voicemail"

[[queues.sales.steps]]        # tier-1 agents at partner sites first
after_s = 0
tiers = [1]
trusts = ["partner"]

[[queues.sales.steps]]        # in-house specialists after 30 s
after_s = 30
tiers = [2]
trusts = ["inhouse"]

[queues.support]
skills = { support = 1 }
priority = 5
service_level_pct = 80
service_level_s = 30
max_wait_s = 600
overflow = "voicemail"

[[queues.support.steps]]      # tier 1 anywhere first
after_s = 0
tiers = [1]
trusts = ["partner", "inhouse"]

[[queues.support.steps]]      # in-house specialists after 45 s
after_s = 45
tiers = [2]
trusts = ["inhouse"]

[queues.billing]
skills = { billing = 2 }
priority = 5
service_level_pct = 90
service_level_s = 30
max_wait_s = 300
overflow = "voicemail"

[[queues.billing.steps]]      # in-house only: billing needs the full customer record
after_s = 0
tiers = [1, 2]
trusts = ["inhouse"]

[queues.escalations]
skills = { support = 3 }
priority = 20
service_level_pct = 90
service_level_s = 15
max_wait_s = 180
overflow = "queue:support"    # no specialist within 3 min: back to the support line
wrap_up_s = 30

[[queues.escalations.steps]]  # in-house tier-2 specialists only
after_s = 0
tiers = [2]
trusts = ["inhouse"]
"""
