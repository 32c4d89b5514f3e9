"""The values that sync moves between replicas; registry/codec.py turns them into wire messages."""

from __future__ import annotations

from dataclasses import dataclass

from registry.records import AgentRecord, NodeInfo, QueueSummary


@dataclass(frozen=True, slots=True)
class Delta:
    """Entries that changed in `sender`'s replica after change `from_seq` up to `to_seq`.

    Loose entries, such as those a reconciliation finds, cover no range: `to_seq` is 0.
    """

    sender: str
    from_seq: int
    to_seq: int
    agents: tuple[AgentRecord, ...] = ()
    queues: tuple[QueueSummary, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()

    def __len__(self) -> int:
        return len(self.agents) + len(self.queues) + len(self.nodes)


@dataclass(frozen=True, slots=True)
class Digest:
    """One hash per bucket of agent, queue and node keys, as of change `seq`."""

    sender: str
    seq: int
    agent_buckets: tuple[int, ...]
    queue_buckets: tuple[int, ...]
    node_buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The answer to a Digest: the responder's entries in the buckets that differ, and the
    buckets whose entries it wants from the asker."""

    entries: Delta
    need_agent_buckets: tuple[int, ...]
    need_queue_buckets: tuple[int, ...]
    need_node_buckets: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StateChunk:
    """Chunk `index` of `count` of `sender`'s whole replica as of change `seq`."""

    sender: str
    seq: int
    index: int
    count: int
    agents: tuple[AgentRecord, ...] = ()
    queues: tuple[QueueSummary, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()
