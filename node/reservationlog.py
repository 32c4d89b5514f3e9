"""The reservation log: one JSON line per reserve and release of an agent homed on this node,
with the call, the session epoch and the etcd revision of the reservation's slot key.

Written in the node's data_dir when fault injection is on, so a chaos run's checker (chaos/) can
replay who was reserved for what at every revision. Each run of the node starts its part with a
{"op": "start"} line (its offers did not survive the previous run). Appended and flushed, not
fsynced: a crash may tear the last line, which readers skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from registry.clock import wall_ms

FILE_NAME = "reservations.jsonl"


class ReservationLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def append(
        self, op: str, agent: str, call: str, epoch: int, revision: int, **extra: object
    ) -> None:
        """One line: op ("reserve" or "release"), who, for which call, at which revision (0 when
        the revision is not known), and the wall-clock time."""
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps({"op": "start", "t_ms": wall_ms()}) + "\n")
        row = {"op": op, "agent": agent, "call": call, "epoch": epoch, "revision": revision}
        row.update(extra)
        row["t_ms"] = wall_ms()
        self._file.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
