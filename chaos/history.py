"""What a chaos run recorded, as values: the calls the load placed, every node's call records and
legs, the reservation logs, the etcd history of the reservation slots, and the final registries.

`parse_*` turn the JSON the nodes serve or write into these values (pure); `chaos/collect.py`
fetches them after a run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.cdr import Leg as Leg  # one agent leg of a call, as its owner records it


@dataclass(frozen=True, slots=True)
class Placed:
    """A call the load driver placed and a node accepted (201)."""

    call_id: str
    node: str
    t_ms: int


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """What an agent of the load did or saw: login, answer, reject, hangup, lost (its node
    stopped answering or dropped the session)."""

    t_ms: int
    agent: str
    kind: str
    call: str = ""
    detail: str = ""  # the node, or the HTTP status of the action


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One row of a node's call records (node/cdr.py)."""

    node: str  # the node whose records hold the row
    call_id: str
    owner_node: str
    queue: str
    state: str
    outcome: str | None
    reason: str
    arrived_ms: int
    ended_ms: int
    agent_id: str


@dataclass(frozen=True, slots=True)
class ReservationEntry:
    """One line of a node's reservation log (node/agentdesk.py)."""

    node: str
    op: str  # "reserve" | "release" | "start" (the node's process started)
    agent: str
    call: str
    epoch: int
    revision: int  # reserve: the slot key's etcd revision; release: 0 when not known
    t_ms: int
    slot: str = ""
    capacity: int = 1
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SlotEvent:
    """A reservation slot key written or deleted in a site's etcd (a delete may be a lease
    expiry: the only record of a reservation that lapsed with its node)."""

    site: str
    revision: int
    agent: str
    slot: int
    put: bool
    call: str = ""


@dataclass(frozen=True, slots=True)
class AgentView:
    """An agent as one node's registry shows it at the end of the run."""

    agent_id: str
    home_node: str
    state: str
    active_calls: int
    epoch: int
    capacity: int


@dataclass(frozen=True, slots=True)
class History:
    placed: tuple[Placed, ...] = ()
    records: tuple[CallRecord, ...] = ()
    legs: tuple[Leg, ...] = ()
    reservations: tuple[ReservationEntry, ...] = ()
    slots: tuple[SlotEvent, ...] = ()
    agent_events: tuple[AgentEvent, ...] = ()
    capacities: Mapping[str, int] = field(default_factory=dict)
    """agent id -> capacity it logged in with (default 1)."""
    final_views: Mapping[str, tuple[AgentView, ...]] = field(default_factory=dict)
    """node id -> its registry's agents once the run was quiet (after the last heal)."""
    converged_after_s: float | None = None
    """Seconds from the last heal until every registry was equal; None: not within the bound."""
    registry_bound_s: float = 10.0


def parse_record(node: str, row: Mapping[str, Any]) -> CallRecord:
    return CallRecord(
        node=node,
        call_id=str(row["call_id"]),
        owner_node=str(row["owner_node"]),
        queue=str(row["queue"]),
        state=str(row["state"]),
        outcome=None if row.get("outcome") is None else str(row["outcome"]),
        reason=str(row.get("reason") or ""),
        arrived_ms=int(row.get("arrived_ms") or 0),
        ended_ms=int(row.get("ended_ms") or 0),
        agent_id=str(row.get("agent_id") or ""),
    )


def parse_leg(row: Mapping[str, Any]) -> Leg:
    return Leg(
        call_id=str(row["call_id"]),
        seq=int(row["seq"]),
        agent_id=str(row["agent_id"]),
        agent_node=str(row["agent_node"]),
        offered_ms=int(row["offered_ms"]),
        answered_ms=int(row["answered_ms"]),
        ended_ms=int(row["ended_ms"]),
        result=str(row["result"]),
        kind=str(row.get("kind", "agent")),
    )


def parse_reservation_log(node: str, lines: Iterable[str]) -> list[ReservationEntry]:
    """The JSON lines of a reservation log; a torn last line (a killed node) is skipped."""
    entries = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("op") == "start":
            entries.append(ReservationEntry(node, "start", "", "", 0, 0, int(row.get("t_ms", 0))))
            continue
        entries.append(
            ReservationEntry(
                node=node,
                op=str(row["op"]),
                agent=str(row["agent"]),
                call=str(row["call"]),
                epoch=int(row.get("epoch", 0)),
                revision=int(row.get("revision", 0)),
                t_ms=int(row.get("t_ms", 0)),
                slot=str(row.get("slot", "")),
                capacity=int(row.get("capacity", 1)),
                reason=str(row.get("reason", "")),
            )
        )
    return entries


def parse_slot_event(
    site: str, key: str, revision: int, put: bool, value: bytes
) -> SlotEvent | None:
    """A watch event on `/callmesh/sites/{site}/agents/{agent}/slots/{n}`; None for other keys."""
    parts = key.rstrip("/").split("/")
    if len(parts) < 3 or parts[-2] != "slots" or not parts[-1].isdigit():
        return None
    call = ""
    if put:
        try:
            call = str(json.loads(value).get("call", ""))
        except (ValueError, AttributeError):
            call = ""
    return SlotEvent(site, revision, parts[-3], int(parts[-1]), put, call)


def parse_agent_view(row: Mapping[str, Any]) -> AgentView:
    return AgentView(
        agent_id=str(row["agent_id"]),
        home_node=str(row["home_node"]),
        state=str(row["state"]),
        active_calls=int(row.get("active_calls", 0)),
        epoch=int(row.get("epoch", 0)),
        capacity=int(row.get("capacity", 1)),
    )
