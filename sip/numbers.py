"""Dialled-number routing: which entry point or queue a call from the trunk arrives at, by the
number its caller dialled (the request-URI's user part, e.g. +4930100). Pure.

The config names each number once, as "NUMBER=entry:NAME" or "NUMBER=queue:NAME" (`sip_numbers`).
With no table, every number goes to the default route (`sip_entry`, else `sip_queue`); with a
table, a number not in it is refused (`UnknownNumber`: 404 to the trunk, counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sip.phones import MAX_NUMBER, NUMBER_CHARS


class UnknownNumber(LookupError):
    """No route for the dialled number; the trunk answers 404."""

    code = "number_not_found"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call arrives: an entry point (its IVR), else a queue."""

    queue: str = ""
    entry: str = ""

    def __post_init__(self) -> None:
        if bool(self.queue) == bool(self.entry):
            raise ValueError("a route names an entry point or a queue (one of them)")

    def __str__(self) -> str:
        return f"entry:{self.entry}" if self.entry else f"queue:{self.queue}"


@dataclass(frozen=True, slots=True)
class NumberPlan:
    default: Route
    """Where every number goes when `routes` is empty."""
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))

    def route(self, dialled: str) -> Route:
        if not self.routes:
            return self.default
        route = self.routes.get(dialled)
        if route is None:
            raise UnknownNumber(f"no route for the dialled number {dialled[:40]!r}")
        return route


def parse_numbers(entries: tuple[str, ...], default: Route) -> NumberPlan:
    """The plan from "NUMBER=entry:NAME" / "NUMBER=queue:NAME" lines; ValueError names the bad
    one (a malformed line, an undialable number, a number given twice)."""
    routes: dict[str, Route] = {}
    for entry in entries:
        number, _, target = (part.strip() for part in entry.partition("="))
        kind, _, name = target.partition(":")
        if not number or len(number) > MAX_NUMBER or set(number) - NUMBER_CHARS:
            raise ValueError(f"{entry!r}: the number must be up to {MAX_NUMBER} of + 0-9 * #")
        if kind not in ("entry", "queue") or not name:
            raise ValueError(f"{entry!r} is not NUMBER=entry:NAME or NUMBER=queue:NAME")
        if number in routes:
            raise ValueError(f"{entry!r}: {number} is routed twice")
        routes[number] = Route(entry=name) if kind == "entry" else Route(queue=name)
    return NumberPlan(default, MappingProxyType(routes))
