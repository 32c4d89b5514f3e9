"""One node's replica of the agent registry and the queue summaries (DESIGN.md §5).

Pure: no I/O, no asyncio. The node's gossip loop calls it: local writes from the node's own
services, `apply` for what peers send, and the sync questions (`delta_since`, `digest`,
`reconcile`, `entries_in`, `full_state`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace

from registry.clock import HybridClock
from registry.errors import ForeignWrite, MalformedMessage, StaleEpoch
from registry.lwwmap import LOCAL, LwwMap
from registry.records import AgentRecord, NodeInfo, QueueSummary, check_id
from registry.sync import Delta, Digest, Reconciliation, StateChunk

AGENT_BUCKETS = 128
QUEUE_BUCKETS = 32
NODE_BUCKETS = 16
MAX_DELTA_ENTRIES = 2000
"""A peer further behind than this many changes gets the full state instead of a delta."""
CHUNK_ENTRIES = 500
"""Entries per chunk of a full state transfer."""


def _agent_key(agent_id: str) -> bytes:
    return agent_id.encode()


def _queue_key(key: tuple[str, str]) -> bytes:
    return f"{key[0]}\0{key[1]}".encode()


class Registry:
    """Agent id -> AgentRecord, (node, queue) -> QueueSummary and node id -> NodeInfo, as seen
    from `node_id`."""

    def __init__(self, node_id: str, clock: HybridClock | None = None) -> None:
        check_id("node_id", node_id)
        self.node_id = node_id
        self.clock = clock or HybridClock()
        self._agents: LwwMap[str, AgentRecord] = LwwMap(_agent_key, AGENT_BUCKETS)
        self._queues: LwwMap[tuple[str, str], QueueSummary] = LwwMap(_queue_key, QUEUE_BUCKETS)
        self._nodes: LwwMap[str, NodeInfo] = LwwMap(str.encode, NODE_BUCKETS)
        self._seq = 0

    @property
    def seq(self) -> int:
        """How many batches of changes this replica has taken in (its own and its peers')."""
        return self._seq

    def __len__(self) -> int:
        """How many entries (agents, queue summaries, nodes) the replica holds."""
        return len(self._agents) + len(self._queues) + len(self._nodes)

    # -- reading -------------------------------------------------------------------------------

    def agent(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def queue(self, node: str, queue: str) -> QueueSummary | None:
        return self._queues.get((node, queue))

    def node(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes.values())

    def agents(self) -> list[AgentRecord]:
        return list(self._agents.values())

    def queues(self) -> list[QueueSummary]:
        return list(self._queues.values())

    def snapshot(
        self,
    ) -> tuple[dict[str, AgentRecord], dict[tuple[str, str], QueueSummary], dict[str, NodeInfo]]:
        """Everything held, as plain dicts (for comparing replicas)."""
        return self._agents.snapshot(), self._queues.snapshot(), self._nodes.snapshot()

    # -- local writes --------------------------------------------------------------------------

    def write_agent(self, record: AgentRecord) -> AgentRecord:
        """Write the record of an agent homed on this node, stamped with a new clock.

        Refused with ForeignWrite for an agent homed elsewhere (unless the record takes the agent
        over with a higher session epoch) and with StaleEpoch for an epoch older than the held one.
        """
        if record.home_node != self.node_id:
            raise ForeignWrite(
                f"node {self.node_id} may not write agent {record.agent_id}, "
                f"whose record names home node {record.home_node}"
            )
        held = self._agents.get(record.agent_id)
        if held is not None:
            if record.epoch < held.epoch:
                raise StaleEpoch(
                    f"agent {record.agent_id}: epoch {record.epoch} is older than the "
                    f"held epoch {held.epoch} (homed on {held.home_node})"
                )
            if held.home_node != self.node_id and record.epoch == held.epoch:
                raise ForeignWrite(
                    f"agent {record.agent_id} is homed on {held.home_node} at epoch "
                    f"{held.epoch}; node {self.node_id} takes it over only with a higher epoch"
                )
        stamped = replace(record, clock=self.clock.now())
        self._seq += 1
        self._agents.merge(stamped.agent_id, stamped, self._seq, LOCAL)
        return stamped

    def write_queue(self, summary: QueueSummary) -> QueueSummary:
        """Write this node's summary of one of its queues, stamped with a new clock."""
        if summary.node != self.node_id:
            raise ForeignWrite(
                f"node {self.node_id} may not write the summary of queue {summary.queue} "
                f"on node {summary.node}"
            )
        stamped = replace(summary, clock=self.clock.now())
        self._seq += 1
        self._queues.merge(stamped.key, stamped, self._seq, LOCAL)
        return stamped

    def write_node(self, info: NodeInfo) -> NodeInfo:
        """Write where this node listens (and whether it is up), stamped with a new clock."""
        if info.node_id != self.node_id:
            raise ForeignWrite(f"node {self.node_id} may not write the addresses of {info.node_id}")
        stamped = replace(info, clock=self.clock.now())
        self._seq += 1
        self._nodes.merge(stamped.node_id, stamped, self._seq, LOCAL)
        return stamped

    # -- what peers send -----------------------------------------------------------------------

    def apply(
        self,
        agents: Iterable[AgentRecord],
        queues: Iterable[QueueSummary],
        source: str,
        nodes: Iterable[NodeInfo] = (),
    ) -> int:
        """Merge entries that `source` sent; return how many changed this replica.

        All or nothing: a timestamp too far ahead refuses the whole batch with ClockSkew.
        """
        agents = tuple(agents)
        queues = tuple(queues)
        nodes = tuple(nodes)
        newest = max(
            max((a.clock for a in agents), default=0),
            max((q.clock for q in queues), default=0),
            max((n.clock for n in nodes), default=0),
        )
        self.clock.check(newest)
        seq = self._seq + 1
        changed = 0
        merge_agent = self._agents.merge
        for record in agents:
            changed += merge_agent(record.agent_id, record, seq, source)
        merge_queue = self._queues.merge
        for summary in queues:
            changed += merge_queue((summary.node, summary.queue), summary, seq, source)
        for info in nodes:
            changed += self._nodes.merge(info.node_id, info, seq, source)
        if changed:
            self._seq = seq
        self.clock.observe(newest)
        return changed

    def apply_delta(self, delta: Delta) -> int:
        return self.apply(delta.agents, delta.queues, delta.sender, delta.nodes)

    def apply_chunk(self, chunk: StateChunk) -> int:
        return self.apply(chunk.agents, chunk.queues, chunk.sender, chunk.nodes)

    # -- sync questions ------------------------------------------------------------------------

    def delta_since(self, watermark: int, peer: str) -> Delta | None:
        """What changed after `watermark`, less what came from `peer` (never echo a delta back).

        None when `peer` lags by more than MAX_DELTA_ENTRIES entries, or claims a watermark this
        replica never reached (it restarted): that peer needs the full state.
        """
        if watermark > self._seq:
            return None
        maps = (self._agents, self._queues, self._nodes)
        if sum(m.count_since(watermark) for m in maps) > MAX_DELTA_ENTRIES:
            return None
        return Delta(
            sender=self.node_id,
            from_seq=watermark,
            to_seq=self._seq,
            agents=tuple(self._agents.changed_since(watermark, peer)),
            queues=tuple(self._queues.changed_since(watermark, peer)),
            nodes=tuple(self._nodes.changed_since(watermark, peer)),
        )

    def digest(self) -> Digest:
        return Digest(
            sender=self.node_id,
            seq=self._seq,
            agent_buckets=self._agents.bucket_hashes,
            queue_buckets=self._queues.bucket_hashes,
            node_buckets=self._nodes.bucket_hashes,
        )

    def reconcile(self, digest: Digest) -> Reconciliation:
        """Answer a peer's digest: this replica's entries where the buckets differ, and which of
        the peer's buckets it needs in return."""
        counts = (len(digest.agent_buckets), len(digest.queue_buckets), len(digest.node_buckets))
        if counts != (AGENT_BUCKETS, QUEUE_BUCKETS, NODE_BUCKETS):
            raise MalformedMessage(
                f"digest from {digest.sender} has {counts[0]} agent, {counts[1]} queue and "
                f"{counts[2]} node buckets; this node uses {AGENT_BUCKETS}, {QUEUE_BUCKETS} "
                f"and {NODE_BUCKETS}"
            )
        agent_buckets = tuple(self._agents.differing(digest.agent_buckets))
        queue_buckets = tuple(self._queues.differing(digest.queue_buckets))
        node_buckets = tuple(self._nodes.differing(digest.node_buckets))
        return Reconciliation(
            entries=self.entries_in(agent_buckets, queue_buckets, node_buckets),
            need_agent_buckets=agent_buckets,
            need_queue_buckets=queue_buckets,
            need_node_buckets=node_buckets,
        )

    def entries_in(
        self,
        agent_buckets: Collection[int],
        queue_buckets: Collection[int],
        node_buckets: Collection[int],
    ) -> Delta:
        """Loose entries (a delta with no range) whose keys fall in the given buckets."""
        return Delta(
            sender=self.node_id,
            from_seq=0,
            to_seq=0,
            agents=tuple(self._agents.in_buckets(agent_buckets)),
            queues=tuple(self._queues.in_buckets(queue_buckets)),
            nodes=tuple(self._nodes.in_buckets(node_buckets)),
        )

    def entries_needed(self, answer: Reconciliation) -> Delta:
        """The entries a reconciliation's responder asked for in return."""
        return self.entries_in(
            answer.need_agent_buckets, answer.need_queue_buckets, answer.need_node_buckets
        )

    def full_state(self, chunk_entries: int = CHUNK_ENTRIES) -> list[StateChunk]:
        """The whole replica in chunks of at most `chunk_entries` entries, sorted by key."""
        if chunk_entries < 1:
            raise ValueError(f"chunk_entries must be >= 1, got {chunk_entries}")
        agents = sorted(self._agents.values(), key=lambda a: a.agent_id)
        queues = sorted(self._queues.values(), key=lambda q: q.key)
        nodes = sorted(self._nodes.values(), key=lambda n: n.node_id)
        parts: list[Delta] = []
        for start in range(0, len(agents), chunk_entries):
            parts.append(
                Delta(self.node_id, 0, 0, agents=tuple(agents[start : start + chunk_entries]))
            )
        for start in range(0, len(queues), chunk_entries):
            parts.append(
                Delta(self.node_id, 0, 0, queues=tuple(queues[start : start + chunk_entries]))
            )
        for start in range(0, len(nodes), chunk_entries):
            parts.append(
                Delta(self.node_id, 0, 0, nodes=tuple(nodes[start : start + chunk_entries]))
            )
        if not parts:
            parts.append(Delta(self.node_id, 0, 0))
        return [
            StateChunk(
                self.node_id, self._seq, index, len(parts), part.agents, part.queues, part.nodes
            )
            for index, part in enumerate(parts)
        ]
