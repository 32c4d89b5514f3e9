"""The media settings around the plane (the queue's record flag, the recording column, the
node's media_mode and media_host) and who the caller talks with."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from node.callstate import Call, CallState
from node.cdr import CallRecords
from node.config import ConfigError, NodeConfig
from node.mediaplane import parties
from node.queues import QueueConfigError, parse_queues

BASE = {"node_id": "n1", "site": "s", "etcd_endpoints": "http://127.0.0.1:2379"}


def test_a_queue_records_only_when_it_says_so() -> None:
    queues = parse_queues(
        "[queues.sales]\nskills = {}\nrecord = true\n[queues.support]\nskills = {}\n"
    )
    assert queues["sales"].record
    assert not queues["support"].record


def test_a_record_flag_that_is_not_a_boolean_is_refused_by_name() -> None:
    with pytest.raises(QueueConfigError) as caught:
        parse_queues('[queues.sales]\nskills = {}\nrecord = "yes"\n')
    assert (caught.value.queue, caught.value.field) == ("sales", "record")


def test_the_recording_is_named_in_the_call_record_and_kept_by_later_saves(
    tmp_path: Path,
) -> None:
    records = CallRecords(tmp_path / "calls.db")
    call = Call("c1", "n1", "sales", "+1", 1_000)
    records.save(call)
    records.set_recording("c1", "recordings/c1.wav")
    records.save(call)
    row = records.call("c1")
    assert row is not None
    assert row["recording"] == "recordings/c1.wav"
    records.close()


def test_an_older_database_gains_the_recording_column(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE calls (call_id TEXT PRIMARY KEY, owner_node TEXT NOT NULL, "
        "queue TEXT NOT NULL, caller TEXT NOT NULL, state TEXT NOT NULL, "
        "arrived_ms INTEGER NOT NULL, offered_ms INTEGER NOT NULL DEFAULT 0, "
        "answered_ms INTEGER NOT NULL DEFAULT 0, ended_ms INTEGER NOT NULL DEFAULT 0, "
        "agent_id TEXT NOT NULL DEFAULT '', agent_node TEXT NOT NULL DEFAULT '', outcome TEXT, "
        "reason TEXT NOT NULL DEFAULT '', missed INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute(
        "INSERT INTO calls VALUES ('c0', 'n1', 'q', 'x', 'ended', 1, 0, 0, 2, '', '', "
        "'completed', '', 0)"
    )
    old.commit()
    old.close()
    records = CallRecords(path)
    row = records.call("c0")
    assert row is not None
    assert row["recording"] == ""
    records.close()


def test_media_mode_and_host_come_from_the_config() -> None:
    config = NodeConfig.from_mapping({**BASE, "media_host": "127.0.0.1", "media_mode": "stock"})
    assert (config.media_host, config.media_mode) == ("127.0.0.1", "stock")
    assert NodeConfig.from_mapping(BASE).media_mode == "forward"
    with pytest.raises(ConfigError, match="media_mode"):
        NodeConfig.from_mapping({**BASE, "media_mode": "fast"})
    with pytest.raises(ConfigError, match="media_host"):
        NodeConfig.from_mapping({**BASE, "media_host": "media.example"})


def test_the_caller_talks_with_the_agent_and_with_a_consulted_agent_once_answered() -> None:
    call = Call("c1", "n1", "sales", "+1", 1, CallState.TALKING, "ann", "n2")
    assert parties(call) == [("ann", "n2")]
    consulting = replace(call, consult_agent="eve", consult_node="n3")
    assert parties(consulting) == [("ann", "n2")]
    assert parties(replace(consulting, consult_answered=True)) == [("ann", "n2"), ("eve", "n3")]
    assert parties(replace(call, state=CallState.WAITING)) == []
