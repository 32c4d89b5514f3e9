"""Call records in SQLite (WAL): a row per call and per leg, written before a change is answered.

On open, calls left without an outcome (the node stopped while they were live) are closed as
failed with the reason, so every accepted call ends with exactly one outcome (I3).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.callstate import Call, Outcome
from registry.clock import wall_ms

MAX_EVENT_DETAIL = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id     TEXT PRIMARY KEY,
    owner_node  TEXT NOT NULL,
    queue       TEXT NOT NULL,
    caller      TEXT NOT NULL,
    state       TEXT NOT NULL,
    arrived_ms  INTEGER NOT NULL,
    offered_ms  INTEGER NOT NULL DEFAULT 0,
    answered_ms INTEGER NOT NULL DEFAULT 0,
    ended_ms    INTEGER NOT NULL DEFAULT 0,
    agent_id    TEXT NOT NULL DEFAULT '',
    agent_node  TEXT NOT NULL DEFAULT '',
    outcome     TEXT,
    reason      TEXT NOT NULL DEFAULT '',
    missed      INTEGER NOT NULL DEFAULT 0,
    notes       TEXT NOT NULL DEFAULT '',
    escalations INTEGER NOT NULL DEFAULT 0,
    queued_ms   INTEGER NOT NULL DEFAULT 0,
    customer_id TEXT NOT NULL DEFAULT '',
    entry       TEXT NOT NULL DEFAULT '',
    ivr_ms      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS legs (
    call_id     TEXT NOT NULL REFERENCES calls(call_id),
    seq         INTEGER NOT NULL,
    agent_id    TEXT NOT NULL,
    agent_node  TEXT NOT NULL,
    offered_ms  INTEGER NOT NULL,
    answered_ms INTEGER NOT NULL DEFAULT 0,
    ended_ms    INTEGER NOT NULL DEFAULT 0,
    result      TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL DEFAULT 'agent',
    disposition TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (call_id, seq)
);
CREATE TABLE IF NOT EXISTS call_events (
    call_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (call_id, seq)
);
CREATE TABLE IF NOT EXISTS voicemails (
    call_id     TEXT PRIMARY KEY,
    queue       TEXT NOT NULL,
    entry       TEXT NOT NULL DEFAULT '',
    caller      TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    file        TEXT NOT NULL DEFAULT ''
);
"""

COLUMNS = [
    "call_id",
    "owner_node",
    "queue",
    "caller",
    "state",
    "arrived_ms",
    "offered_ms",
    "answered_ms",
    "ended_ms",
    "agent_id",
    "agent_node",
    "outcome",
    "reason",
    "missed",
    "notes",
    "escalations",
    "queued_ms",
    "customer_id",
    "entry",
    "ivr_ms",
    "trunk",
    "dialled",
    "recording",
]
ORIGIN = ("trunk", "dialled")
"""Where a call came in from, set once by the SIP trunk (`set_origin`), kept by `save`."""
_SAVED = [column for column in COLUMNS if column not in (*ORIGIN, "recording")]


@dataclass(frozen=True, slots=True)
class Leg:
    call_id: str
    seq: int
    agent_id: str
    agent_node: str
    offered_ms: int
    answered_ms: int
    ended_ms: int
    result: str
    kind: str = "agent"
    disposition: str = ""  # the agent's word on how the call went, given in wrap-up


class CallRecords:
    """The node's call records. Every method commits before it returns."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a database made by an older version lacks."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(calls)")}
        for column, kind in (
            ("notes", "TEXT NOT NULL DEFAULT ''"),
            ("escalations", "INTEGER NOT NULL DEFAULT 0"),
            ("queued_ms", "INTEGER NOT NULL DEFAULT 0"),
            ("customer_id", "TEXT NOT NULL DEFAULT ''"),
            ("entry", "TEXT NOT NULL DEFAULT ''"),
            ("ivr_ms", "INTEGER NOT NULL DEFAULT 0"),
            ("trunk", "TEXT NOT NULL DEFAULT ''"),
            ("dialled", "TEXT NOT NULL DEFAULT ''"),
            ("recording", "TEXT NOT NULL DEFAULT ''"),
        ):
            if column not in have:
                self._db.execute(f"ALTER TABLE calls ADD COLUMN {column} {kind}")
        legs = {row[1] for row in self._db.execute("PRAGMA table_info(legs)")}
        if "kind" not in legs:
            self._db.execute("ALTER TABLE legs ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'")
        if "disposition" not in legs:
            self._db.execute("ALTER TABLE legs ADD COLUMN disposition TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self._db.close()

    def close_orphans(self, now_ms: int, reason: str) -> list[tuple[str, str, str]]:
        """Close calls left open by an earlier run as failed; (call id, agent id, agent node) of
        each, the agent's fields empty when none was offered the call."""
        rows = self._db.execute(
            "SELECT call_id, agent_id, agent_node FROM calls WHERE outcome IS NULL"
        ).fetchall()
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE calls SET state = 'ended', outcome = ?, reason = ?, ended_ms = ? "
                "WHERE outcome IS NULL",
                (Outcome.FAILED.value, reason, now_ms),
            )
            self._db.execute(
                "UPDATE legs SET ended_ms = ?, result = 'failed' WHERE ended_ms = 0", (now_ms,)
            )
        return [(row[0], row[1], row[2]) for row in rows]

    def save(self, call: Call) -> None:
        """Insert or update the call's row."""
        values = (
            call.call_id,
            call.owner_node,
            call.queue,
            call.caller,
            call.state.value,
            call.arrived_ms,
            call.offered_ms,
            call.answered_ms,
            call.ended_ms,
            call.agent_id,
            call.agent_node,
            None if call.outcome is None else call.outcome.value,
            call.reason,
            call.missed,
            call.notes,
            call.escalations,
            call.queued_ms,
            call.customer_id,
            call.entry,
            call.ivr_ms,
        )
        self._db.execute(
            f"INSERT INTO calls ({', '.join(_SAVED)}) VALUES ({', '.join('?' * len(_SAVED))}) "
            "ON CONFLICT (call_id) DO UPDATE SET "
            + ", ".join(f"{column} = excluded.{column}" for column in _SAVED[1:]),
            values,
        )

    def set_origin(self, call_id: str, trunk: str, dialled: str) -> None:
        """The trunk a call came in from and the number its caller dialled (SIP calls)."""
        self._db.execute(
            "UPDATE calls SET trunk = ?, dialled = ? WHERE call_id = ?", (trunk, dialled, call_id)
        )

    def set_recording(self, call_id: str, file: str) -> None:
        """The file holding the call's recording (both sides), relative to the data_dir."""
        self._db.execute("UPDATE calls SET recording = ? WHERE call_id = ?", (file, call_id))

    def open_leg(
        self,
        call: Call,
        agent_id: str = "",
        agent_node: str = "",
        offered_ms: int = 0,
        *,
        kind: str = "agent",
        answered_ms: int = 0,
    ) -> None:
        """A leg for the call's agent, or for another agent (kind "consult")."""
        seq = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM legs WHERE call_id = ?", (call.call_id,)
        ).fetchone()[0]
        self._db.execute(
            "INSERT INTO legs (call_id, seq, agent_id, agent_node, offered_ms, answered_ms, kind) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                call.call_id,
                seq,
                agent_id or call.agent_id,
                agent_node or call.agent_node,
                offered_ms or call.offered_ms,
                answered_ms,
                kind,
            ),
        )

    def update_leg(
        self,
        call_id: str,
        agent_id: str,
        *,
        answered_ms: int = 0,
        ended_ms: int = 0,
        result: str = "",
    ) -> None:
        self._db.execute(
            "UPDATE legs SET answered_ms = MAX(answered_ms, ?), ended_ms = MAX(ended_ms, ?), "
            "result = CASE WHEN ? = '' THEN result ELSE ? END "
            "WHERE call_id = ? AND agent_id = ? AND seq = "
            "(SELECT MAX(seq) FROM legs WHERE call_id = ? AND agent_id = ?)",
            (answered_ms, ended_ms, result, result, call_id, agent_id, call_id, agent_id),
        )

    def set_disposition(self, call_id: str, agent_id: str, disposition: str) -> bool:
        """The agent's disposition on its last answered leg of the call; False when it has none."""
        changed = self._db.execute(
            "UPDATE legs SET disposition = ? WHERE call_id = ? AND agent_id = ? AND seq = "
            "(SELECT MAX(seq) FROM legs WHERE call_id = ? AND agent_id = ? AND answered_ms > 0)",
            (disposition, call_id, agent_id, call_id, agent_id),
        ).rowcount
        return changed > 0

    def call(self, call_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM calls WHERE call_id = ?", (call_id,)
        ).fetchone()
        return None if row is None else dict(zip(COLUMNS, row, strict=True))

    def calls(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM calls ORDER BY arrived_ms DESC, call_id LIMIT ?",
            (limit,),
        ).fetchall()
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def billing(self) -> list[dict[str, Any]]:
        """Consultation time (answered consultation legs) and talk time per customer and per
        service (the call's queue), for billing."""
        rows = self._db.execute(
            "SELECT c.customer_id, c.queue, "
            "SUM(CASE WHEN l.kind = 'consult' THEN l.ended_ms - l.answered_ms ELSE 0 END), "
            "SUM(CASE WHEN l.kind = 'consult' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN l.kind = 'agent' THEN l.ended_ms - l.answered_ms ELSE 0 END), "
            "COUNT(DISTINCT c.call_id) "
            "FROM legs l JOIN calls c ON c.call_id = l.call_id "
            "WHERE l.answered_ms > 0 AND l.ended_ms >= l.answered_ms "
            "GROUP BY c.customer_id, c.queue ORDER BY c.customer_id, c.queue"
        ).fetchall()
        return [
            {
                "customer_id": customer,
                "service": queue,
                "consult_s": round(consult_ms / 1000, 3),
                "consultations": consultations,
                "talk_s": round(talk_ms / 1000, 3),
                "calls": calls,
            }
            for customer, queue, consult_ms, consultations, talk_ms, calls in rows
        ]

    def add_event(self, call_id: str, kind: str, detail: str = "", at_ms: int = 0) -> None:
        """Note something that happened to a call (a hook's run, a prompt, digits, an action)."""
        self._db.execute(
            "INSERT INTO call_events (call_id, seq, at_ms, kind, detail) VALUES "
            "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM call_events WHERE call_id = ?), ?, ?, ?)",
            (call_id, call_id, at_ms or wall_ms(), kind, detail[:MAX_EVENT_DETAIL]),
        )

    def events(self, call_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT at_ms, kind, detail FROM call_events WHERE call_id = ? ORDER BY seq",
            (call_id,),
        ).fetchall()
        return [{"at_ms": at, "kind": kind, "detail": detail} for at, kind, detail in rows]

    def add_voicemail(self, call: Call, file: str = "") -> None:
        """List the call's message for supervisors (`file` once media has recorded it)."""
        self._db.execute(
            "INSERT OR REPLACE INTO voicemails (call_id, queue, entry, caller, at_ms, file) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (call.call_id, call.queue, call.entry, call.caller, call.ended_ms or wall_ms(), file),
        )

    def voicemails(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT v.call_id, v.queue, v.entry, v.caller, v.at_ms, "
            "COALESCE(NULLIF(v.file, ''), c.recording, '') "  # the call's recording, once made
            "FROM voicemails v LEFT JOIN calls c ON c.call_id = v.call_id "
            "ORDER BY v.at_ms DESC, v.call_id LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("call_id", "queue", "entry", "caller", "at_ms", "file")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def legs(self, call_id: str) -> list[Leg]:
        rows = self._db.execute(
            "SELECT call_id, seq, agent_id, agent_node, offered_ms, answered_ms, ended_ms, result, "
            "kind, disposition "
            "FROM legs WHERE call_id = ? ORDER BY seq",
            (call_id,),
        ).fetchall()
        return [Leg(*row) for row in rows]
