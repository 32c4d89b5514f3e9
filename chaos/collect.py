"""Fetching a chaos run's history once the run is quiet: each node's call records and
reservation log from its data folder, each site's etcd history of reservation slots, and every
node's final registry (polled until they agree, within a bound). How long the registries took to
agree after the last heal is measured during the run (chaos/convergence.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chaos.client import Client
from chaos.convergence import agree
from chaos.history import (
    AgentEvent,
    AgentView,
    CallRecord,
    History,
    Leg,
    Placed,
    ReservationEntry,
    SlotEvent,
    parse_agent_view,
    parse_leg,
    parse_record,
    parse_reservation_log,
    parse_slot_event,
)
from node.cdr import COLUMNS
from node.etcd import Etcd
from node.localcluster import LocalCluster
from node.reservationlog import FILE_NAME as RESERVATION_LOG
from node.sessions import agents_prefix

LEG_COLUMNS = "call_id, seq, agent_id, agent_node, offered_ms, answered_ms, ended_ms, result, kind"


def data_dir(cluster: LocalCluster, node: str) -> Path:
    return cluster.root / f"{node}-data"  # as LocalCluster.start_node lays it out


def read_records(folder: Path, node: str) -> tuple[list[CallRecord], list[Leg]]:
    """The node's call records and legs, read from its SQLite file (read-only)."""
    path = folder / "calls.db"
    if not path.exists():
        return [], []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM calls").fetchall()
        legs = db.execute(f"SELECT {LEG_COLUMNS} FROM legs").fetchall()
    finally:
        db.close()
    leg_names = [c.strip() for c in LEG_COLUMNS.split(",")]
    return (
        [parse_record(node, dict(zip(COLUMNS, row, strict=True))) for row in rows],
        [parse_leg(dict(zip(leg_names, row, strict=True))) for row in legs],
    )


def read_reservations(folder: Path, node: str) -> list[ReservationEntry]:
    path = folder / RESERVATION_LOG
    if not path.exists():
        return []
    return parse_reservation_log(node, path.read_text(encoding="utf-8").splitlines())


async def slot_history(endpoints: Sequence[str], site: str, idle_s: float = 2.0) -> list[SlotEvent]:
    """Every write and delete of the site's reservation slots since etcd's first revision."""
    prefix = agents_prefix(site)
    events: list[SlotEvent] = []
    async with Etcd(endpoints, lease_ttl_s=5) as etcd:
        _, head = await etcd.get_prefix(prefix)
        watch = etcd.watch_prefix(prefix, 1)
        async with contextlib.aclosing(watch):
            while True:
                try:
                    event = await asyncio.wait_for(anext(watch), idle_s)
                except (TimeoutError, StopAsyncIteration):
                    break
                slot = parse_slot_event(
                    site, event.key, event.mod_revision, event.kind.name == "PUT", event.value
                )
                if slot is not None:
                    events.append(slot)
                if event.mod_revision >= head:
                    break
    return events


async def registries(
    client: Client, nodes: Sequence[str], bound_s: float
) -> tuple[dict[str, tuple[AgentView, ...]], float | None]:
    """Every node's registry once they are all equal (and the seconds that took), or as they
    are when `bound_s` has passed (None)."""
    start = time.monotonic()
    while True:
        views: dict[str, Any] = {}
        for node in nodes:
            status, view = await client.get(node, "/registry")
            if status == 200 and isinstance(view, dict):
                views[node] = view
        agreed = agree(views, nodes)
        elapsed = time.monotonic() - start
        if agreed or elapsed > bound_s:
            final = {
                node: tuple(parse_agent_view(a) for a in view.get("agents", []))
                for node, view in views.items()
            }
            for node in nodes:
                final.setdefault(node, ())
            return final, (round(elapsed, 2) if agreed else None)
        await asyncio.sleep(0.2)


async def wait_quiet(
    client: Client, nodes: Sequence[str], placed: Sequence[Placed], within_s: float
) -> bool:
    """Every node ready, every placed call ended, no agent reserved or talking; False when that
    is not reached within `within_s` (the checker then reports what was left)."""
    deadline = time.monotonic() + within_s
    pending = {p.call_id: p.node for p in placed}
    while time.monotonic() < deadline:
        ready = [(await client.get(n, "/readyz"))[0] == 200 for n in nodes]
        for call_id, node in list(pending.items()):
            status, call = await client.get(node, f"/calls/{call_id}")
            if status == 200 and isinstance(call, dict) and call.get("outcome") is not None:
                del pending[call_id]
        status, view = await client.get(nodes[0], "/registry")
        busy = (
            status != 200
            or not isinstance(view, dict)
            or any(a["state"] in ("reserved", "talking") for a in view.get("agents", []))
        )
        if all(ready) and not pending and not busy:
            return True
        await asyncio.sleep(0.5)
    return False


async def collect(
    cluster: LocalCluster,
    client: Client,
    placed: Sequence[Placed],
    capacities: Mapping[str, int],
    registry_bound_s: float,
    agent_events: Sequence[AgentEvent] = (),
    converged_after_s: float | None = None,
) -> History:
    """The run's history; `converged_after_s`: how long after the last heal the registries
    agreed (None: not within the bound), as the run's RegistryWatch measured it."""
    nodes = list(cluster.plans)
    final_views, _ = await registries(client, nodes, registry_bound_s)
    records: list[CallRecord] = []
    legs: list[Leg] = []
    reservations: list[ReservationEntry] = []
    for node in nodes:
        got, got_legs = await asyncio.to_thread(read_records, data_dir(cluster, node), node)
        records += got
        legs += got_legs
        reservations += read_reservations(data_dir(cluster, node), node)
    slots: list[SlotEvent] = []
    for site in cluster.sites:
        slots += await slot_history(cluster.etcd_urls(site.name), site.name)
    return History(
        placed=tuple(placed),
        records=tuple(records),
        legs=tuple(legs),
        reservations=tuple(reservations),
        slots=tuple(slots),
        agent_events=tuple(agent_events),
        capacities=dict(capacities),
        final_views=final_views,
        converged_after_s=converged_after_s,
        registry_bound_s=registry_bound_s,
    )
