"""Entry points: where a call may arrive instead of a queue, and the hook that runs its IVR.

Entry points live beside the queues in the deployed queue file (node/queues.py), so one file,
reloaded as a whole, says where calls go, and a fallback queue is checked against the queues of
the same file::

    [entries.main]
    program = ["awk", "-f", "/etc/callmesh/hooks/menu.awk"]   # argv, never a shell
    # url = "http://127.0.0.1:9000/hook"                       # or a webhook
    timeout_s = 2              # a run that takes longer is killed: the fallback applies
    max_output_bytes = 16384   # more is cut: the fallback applies
    fallback = "queue:support" # queue:NAME, voicemail or hangup
    max_ivr_s = 120            # the longest a caller stays in the menu before the fallback
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from node.hooks import Action, Hangup, Queue, Voicemail
from registry.errors import InvalidRecord
from registry.records import check_id

MAX_TIMEOUT_S = 60.0
MAX_OUTPUT_BYTES = 1024 * 1024
MIN_OUTPUT_BYTES = 256
MAX_IVR_S = 3600.0
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?:/[!-~]*)?")


class HookConfigError(ValueError):
    """An entry point is unusable; `field` says which setting ("entries.NAME.FIELD")."""

    code = "hook_config_invalid"

    def __init__(self, problem: str, field: str = "") -> None:
        self.problem = problem
        self.field = field
        super().__init__(f"{field}: {problem}" if field else problem)


@dataclass(frozen=True, slots=True)
class EntryPoint:
    """Where a call may arrive instead of a queue: the hook that runs its IVR."""

    name: str
    program: tuple[str, ...] = ()
    """The program and its arguments (never run through a shell)."""
    url: str = ""
    """Or a webhook: the event is POSTed as JSON, the answer is the actions."""
    timeout_s: float = 2.0
    """A run that takes longer is killed (a webhook call abandoned): the fallback applies."""
    max_output_bytes: int = 16 * 1024
    """A longer answer is cut: the fallback applies."""
    fallback: str = "hangup"
    """What happens when the hook fails, hangs, prints garbage or leaves the caller nowhere:
    "queue:NAME", "voicemail" or "hangup"."""
    max_ivr_s: float = 120.0
    """The longest a caller stays at the entry point before the fallback applies."""

    def __post_init__(self) -> None:
        try:
            check_id("entry point name", self.name)
        except InvalidRecord as error:
            raise HookConfigError(str(error), "name") from None
        if bool(self.program) == bool(self.url):
            raise HookConfigError(
                'name either program = ["PROGRAM", "ARG", ...] or url = "http://..." (one of them)'
            )
        if self.program and (
            type(self.program) is not tuple
            or not all(isinstance(a, str) and "\x00" not in a for a in self.program)
            or not self.program[0]
        ):
            raise HookConfigError(
                f"must be a list of strings, the program first, got {_show(self.program)}",
                "program",
            )
        if self.url and not _URL.fullmatch(self.url):
            raise HookConfigError(f"must be an http(s):// URL, got {_show(self.url)}", "url")
        for name, high in (("timeout_s", MAX_TIMEOUT_S), ("max_ivr_s", MAX_IVR_S)):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= high:
                raise HookConfigError(
                    f"must be seconds above 0 and at most {high:g}, got {_show(value)}", name
                )
        size = self.max_output_bytes
        if type(size) is not int or not MIN_OUTPUT_BYTES <= size <= MAX_OUTPUT_BYTES:
            raise HookConfigError(
                f"must be an integer in {MIN_OUTPUT_BYTES}-{MAX_OUTPUT_BYTES}, got {_show(size)}",
                "max_output_bytes",
            )
        if self.fallback not in ("voicemail", "hangup"):
            target = self.fallback_queue
            try:
                check_id("fallback queue", target)
            except InvalidRecord:
                raise HookConfigError(
                    f"must be queue:NAME, voicemail or hangup, got {_show(self.fallback)}",
                    "fallback",
                ) from None

    @property
    def fallback_queue(self) -> str | None:
        if isinstance(self.fallback, str) and self.fallback.startswith("queue:"):
            return self.fallback[len("queue:") :]
        return None

    @property
    def fallback_action(self) -> Action:
        queue = self.fallback_queue
        if queue is not None:
            return Queue(queue)
        if self.fallback == "voicemail":
            return Voicemail()
        return Hangup("the hook failed and its fallback hangs up")


_ENTRY_KEYS = frozenset(
    {"program", "url", "timeout_s", "max_output_bytes", "fallback", "max_ivr_s"}
)


def parse_entries(tables: object, queues: Collection[str]) -> dict[str, EntryPoint]:
    """The `[entries.NAME]` tables of the deployed queue file, each validated; a fallback queue
    must be one of `queues`. Raises HookConfigError naming the entry point and the field."""
    if tables is None:
        return {}
    if not isinstance(tables, dict):
        raise HookConfigError("must be [entries.NAME] tables", "entries")
    entries = {}
    for name, table in tables.items():
        where = f"entries.{name}"
        if not isinstance(table, dict):
            raise HookConfigError(f"must be a table, got {_show(table)}", where)
        unknown = sorted(set(table) - _ENTRY_KEYS)
        if unknown:
            raise HookConfigError(
                f"unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_ENTRY_KEYS))}",
                where,
            )
        values = dict(table)
        if "program" in values:
            program = values["program"]
            if not isinstance(program, list):
                raise HookConfigError(
                    f'must be a list, e.g. ["awk", "-f", "menu.awk"], got {_show(program)}',
                    f"{where}.program",
                )
            values["program"] = tuple(program)
        for key in ("timeout_s", "max_ivr_s"):
            if isinstance(values.get(key), int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
        try:
            entry = EntryPoint(name=name, **values)
        except HookConfigError as error:
            field = f"{where}.{error.field}" if error.field else where
            raise HookConfigError(error.problem, field) from None
        except TypeError as error:  # a wrong type the checks above let through
            raise HookConfigError(str(error), where) from None
        target = entry.fallback_queue
        if target is not None and target not in queues:
            raise HookConfigError(
                f"falls back to queue {target!r}, which is not configured "
                f"(queues: {', '.join(sorted(queues))})",
                f"{where}.fallback",
            )
        entries[name] = entry
    return entries


def shipped_hooks_dir() -> Path:
    """hooks/ beside the node package in the source tree: the sample hooks."""
    return Path(__file__).resolve().parent.parent / "hooks"


def sample_entries_toml(hooks_dir: Path) -> str:
    """The entry point `callmesh up` starts with: "main", the awk menu of hooks/menu.awk
    ("press 1 for sales, 2 for billing"), falling back to the support queue."""
    menu = json.dumps(str(hooks_dir / "menu.awk"))
    return (
        '\n# The sample menu (hooks/menu.awk): POST /calls {"entry": "main"}, then digits.\n'
        "[entries.main]\n"
        f'program = ["awk", "-f", {menu}]\n'
        "timeout_s = 2\n"
        'fallback = "queue:support"\n'
    )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
