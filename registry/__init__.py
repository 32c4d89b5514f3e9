"""The CRDT agent registry (DESIGN.md §5): pure Python, no I/O, no asyncio, no grpc."""

from registry.clock import HybridClock
from registry.errors import (
    ClockSkew,
    ForeignWrite,
    InvalidRecord,
    MalformedMessage,
    RegistryError,
    StaleEpoch,
)
from registry.records import AgentRecord, AgentState, QueueSummary, Trust, skills_from
from registry.registry import Registry
from registry.sync import Delta, Digest, Reconciliation, StateChunk

__all__ = [
    "AgentRecord",
    "AgentState",
    "ClockSkew",
    "Delta",
    "Digest",
    "ForeignWrite",
    "HybridClock",
    "InvalidRecord",
    "MalformedMessage",
    "QueueSummary",
    "Reconciliation",
    "Registry",
    "RegistryError",
    "StaleEpoch",
    "StateChunk",
    "Trust",
    "skills_from",
]
