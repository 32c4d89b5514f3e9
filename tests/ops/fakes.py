"""In-memory stand-ins for the node parts the metrics collector reads."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakePeer:
    synced: bool


@dataclass
class FakeGossip:
    peers: dict[str, FakePeer] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class FakeLease:
    has_lease: bool = True


@dataclass
class FakeReadiness:
    reasons: list[str] = field(default_factory=list)

    def reasons_not_ready(self) -> list[str]:
        return list(self.reasons)
