"""Call records in SQLite: saved rows, legs, and calls left open closed as failed on restart."""

from __future__ import annotations

from pathlib import Path

from node.callstate import Call, CallState, Outcome
from node.cdr import CallRecords


def test_rows_and_legs_survive_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    records = CallRecords(db)
    call = Call("c1", "n1", "sales", "+100", 1_000)
    records.save(call)
    offered = Call("c1", "n1", "sales", "+100", 1_000, CallState.OFFERED, "ann", "n2", 1, 1_500)
    records.save(offered)
    records.open_leg(offered)
    records.update_leg("c1", "ann", answered_ms=1_700)
    records.close()
    again = CallRecords(db)
    row = again.call("c1")
    assert row is not None
    assert row["state"] == "offered"
    assert row["agent_id"] == "ann"
    [leg] = again.legs("c1")
    assert (leg.agent_id, leg.offered_ms, leg.answered_ms) == ("ann", 1_500, 1_700)


def test_calls_left_open_are_closed_as_failed_once(tmp_path: Path) -> None:
    records = CallRecords(tmp_path / "calls.db")
    records.save(Call("open", "n1", "sales", "x", 1))
    records.save(Call("offered", "n1", "sales", "x", 1, CallState.OFFERED, "ann", "n2"))
    done = Call("done", "n1", "sales", "x", 1, CallState.ENDED, outcome=Outcome.COMPLETED)
    records.save(done)
    assert sorted(records.close_orphans(99, "node restarted")) == [
        ("offered", "ann", "n2"),
        ("open", "", ""),
    ]
    row = records.call("open")
    assert row is not None
    assert (row["outcome"], row["reason"], row["ended_ms"]) == ("failed", "node restarted", 99)
    finished = records.call("done")
    assert finished is not None
    assert finished["outcome"] == "completed"
    assert records.close_orphans(100, "again") == []
