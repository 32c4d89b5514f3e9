"""Registry gossip over gRPC (grpc.aio): the Gossip service and one sync loop per peer.

Each loop pushes deltas to its peer as soon as the registry changes (after `push_delay_s`, so
changes share a push), compares digests every `digest_interval_s` (anti-entropy), and starts with
the peer's full state when this replica is empty. A delta is never echoed to the node it came
from. A failed call resets the loop, which retries with backoff and re-syncs by digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc

from node import metrics, peerpolicy
from node.transport import PLAIN, Transport
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc
from registry import codec
from registry.errors import ClockSkew, RegistryError
from registry.registry import MAX_DELTA_ENTRIES, Registry
from registry.sync import Delta, StateChunk

log = logging.getLogger(__name__)

_STATUS = {
    "malformed_message": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_record": grpc.StatusCode.INVALID_ARGUMENT,
    "clock_skew": grpc.StatusCode.FAILED_PRECONDITION,
}


DRAIN_ROUNDS = 10
DRAIN_ROUND_S = 1.0
"""Leaving waits at most this many rounds of this long for the peer loops to stop."""


@dataclass(frozen=True, slots=True)
class GossipTimers:
    digest_interval_s: float = 2.0
    push_delay_s: float = 0.01
    rpc_timeout_s: float = 2.0


class _Servicer(pb_grpc.GossipServicer):
    def __init__(self, gossip: Gossip) -> None:
        self._gossip = gossip

    async def Push(self, request: pb.Delta, context: grpc.aio.ServicerContext) -> pb.Ack:
        try:
            delta = codec.delta_from_wire(request)
            peer = self._gossip.transport.peer(context)
            admitted = peerpolicy.admit(peer, delta, self._gossip.registry)
            if admitted.dropped:  # a partner relaying other sites' entries, or forging them
                metrics.registry_refused("peer", "partner_scope")
                log.debug("gossip push from %s: %d entries out of scope", peer, admitted.dropped)
            self._gossip.apply(admitted.delta)
        except RegistryError as error:
            await _abort(context, error, f"push from {request.sender!r:.40}")
        return pb.Ack(receiver=self._gossip.registry.node_id, seq=request.to_seq)

    async def Reconcile(
        self, request: pb.Digest, context: grpc.aio.ServicerContext
    ) -> pb.Reconciliation:
        try:
            answer = self._gossip.registry.reconcile(codec.digest_from_wire(request))
        except RegistryError as error:
            await _abort(context, error, f"digest from {request.sender!r:.40}")
        return codec.reconciliation_to_wire(answer)

    async def FullState(
        self, request: pb.FullStateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StateChunk]:
        for chunk in self._gossip.registry.full_state():
            yield codec.chunk_to_wire(chunk)


async def _abort(context: grpc.aio.ServicerContext, error: RegistryError, what: str) -> None:
    log.warning("gossip %s refused: %s", what, error)
    metrics.registry_refused("peer", error.code)
    status = _STATUS.get(error.code, grpc.StatusCode.INTERNAL)
    await context.abort(status, f"{error.code}: {error}")


@dataclass(slots=True)
class PeerState:
    address: str
    peer_id: str = ""
    watermark: int | None = None  # the last of our changes the peer holds; None: re-sync
    synced: bool = False  # the last sync attempt succeeded
    ever_synced: bool = False
    next_digest: float = 0.0


class Gossip:
    """The registry's sync: a gRPC server for peers and a loop per peer (async context manager).

    `changed()` must be called after every local write; remote changes wake the loops by
    themselves, so they are relayed to the other peers.
    """

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        timers: GossipTimers = GossipTimers(),
        on_apply: Callable[[int], None] | None = None,
        services: Sequence[Callable[[grpc.aio.Server], None]] = (),
        transport: Transport = PLAIN,
    ) -> None:
        self.registry = registry
        self._host = host
        self._port = port
        self._timers = timers
        self._on_apply = on_apply
        self._services = services  # other services served on the same port (the call exchange)
        self._server: grpc.aio.Server | None = None
        self._transport = transport
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._stopping: list[asyncio.Task[None]] = []
        self.peers: dict[str, PeerState] = {}
        self.refused = 0
        self.bytes_out = 0  # requests this node sent (protobuf bytes, without gRPC framing)
        self.bytes_in = 0  # replies this node received
        self.blocked: frozenset[str] = frozenset()  # fault injection: peers treated as cut off

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    async def __aenter__(self) -> Gossip:
        server = self._transport.server()
        pb_grpc.add_GossipServicer_to_server(_Servicer(self), server)
        for add in self._services:
            add(server)
        bound = self._transport.bind(server, f"{self._host}:{self._port}")
        if bound == 0:
            raise OSError(f"gossip cannot listen on {self._host}:{self._port}")
        self._port = bound
        await server.start()
        self._server = server
        log.info("gossip %s listening", self.address)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.set_peers(())
        await self.drain()
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None

    async def drain(self) -> None:
        """Wait for the loops of removed peers to finish (cancelled again should one have
        missed its cancel, so that leaving never hangs)."""
        stopping, self._stopping = self._stopping, []
        for _ in range(DRAIN_ROUNDS):
            if not stopping:
                return
            _, pending = await asyncio.wait(stopping, timeout=DRAIN_ROUND_S)
            for task in pending:
                task.cancel()
            stopping = list(pending)
        if stopping:
            log.error("gossip: %d peer loops did not stop", len(stopping))

    def set_peers(self, addresses: Iterable[str]) -> None:
        """Gossip with exactly these peers (host:port) from now on."""
        wanted = set(addresses) - {self.address}
        for address in list(self._loops):
            if address not in wanted:
                task = self._loops.pop(address)
                task.cancel()
                self._stopping.append(task)
                self._wakes.pop(address, None)
                self.peers.pop(address, None)
                log.info("gossip peer %s removed", address)
        for address in sorted(wanted - set(self._loops)):
            self.peers[address] = PeerState(address)
            self._wakes[address] = asyncio.Event()
            self._loops[address] = asyncio.create_task(
                self._peer_loop(self.peers[address]), name=f"gossip {address}"
            )
            log.info("gossip peer %s added", address)

    def changed(self) -> None:
        """Wake every peer loop: the registry has changes to push."""
        for wake in self._wakes.values():
            wake.set()

    def reconcile_soon(self) -> None:
        """Exchange digests with every peer now, not at the next interval: this node met a
        node its registry does not know yet (an owner that started a moment ago and pushes
        only to its own peers, not to a partner that dials in)."""
        for peer in self.peers.values():
            peer.next_digest = 0.0
        self.changed()

    def apply(self, delta: Delta) -> int:
        """Merge what a peer sent; wake the loops so the change spreads further."""
        try:
            changed = self.registry.apply_delta(delta)
        except ClockSkew:
            self.refused += 1
            raise
        if changed:
            self.changed()
        metrics.gossip_applied(delta, changed)
        if self._on_apply is not None:
            self._on_apply(changed)
        return changed

    def synced(self) -> bool:
        """Whether every current peer has completed at least one sync with this node."""
        return all(peer.ever_synced for peer in self.peers.values())

    def block(self, addresses: Iterable[str]) -> None:
        """Fault injection: act as if the links to these peers were cut (empty heals them)."""
        self.blocked = frozenset(addresses)
        log.warning("gossip links cut to: %s", ", ".join(sorted(self.blocked)) or "none")
        self.changed()

    async def _peer_loop(self, peer: PeerState) -> None:
        backoff = 0.05
        wake = self._wakes[peer.address]
        async with self._transport.peer_channel(peer.address) as channel:
            stub = pb_grpc.GossipStub(channel)
            while True:
                try:
                    await self._sync_once(stub, peer)
                    backoff = 0.05
                    timeout = max(0.0, peer.next_digest - time.monotonic())
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                    # cancel that comes as the wake fires, and the loop then never ends
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await wake.wait()
                    wake.clear()
                    await asyncio.sleep(self._timers.push_delay_s)
                except asyncio.CancelledError:
                    raise
                except grpc.aio.AioRpcError as error:
                    metrics.GOSSIP_SYNC_FAILURES.inc()
                    if peer.synced or backoff == 0.05:
                        log.warning(
                            "gossip peer %s unreachable: %s %s",
                            peer.address,
                            error.code().name,
                            error.details(),
                        )
                    peer.watermark = None
                    peer.synced = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                except Exception:
                    log.exception("gossip peer %s: unexpected error; re-syncing", peer.address)
                    peer.watermark = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    async def _sync_once(self, stub: pb_grpc.GossipStub, peer: PeerState) -> None:
        if peer.address in self.blocked:
            peer.watermark = None
            peer.synced = False
            peer.next_digest = time.monotonic() + self._timers.digest_interval_s
            return
        if peer.watermark is None or time.monotonic() >= peer.next_digest:
            await self._reconcile(stub, peer)
            return
        delta = self.registry.delta_since(peer.watermark, peer.peer_id)
        if delta is None:
            peer.watermark = None  # too far behind for a delta: re-sync by digest
            await self._reconcile(stub, peer)
            return
        if len(delta):
            await self._push(stub, delta)
        peer.watermark = delta.to_seq

    async def _push(self, stub: pb_grpc.GossipStub, delta: Delta) -> None:
        message = codec.delta_to_wire(delta)
        self.bytes_out += message.ByteSize()
        await stub.Push(message, timeout=self._timers.rpc_timeout_s)

    async def _reconcile(self, stub: pb_grpc.GossipStub, peer: PeerState) -> None:
        timeout = self._timers.rpc_timeout_s
        seq = self.registry.seq
        if not len(self.registry):
            async for chunk in stub.FullState(
                pb.FullStateRequest(requester=self.registry.node_id), timeout=timeout * 5
            ):
                self.bytes_in += chunk.ByteSize()
                self.apply_chunk(codec.chunk_from_wire(chunk))
        digest = codec.digest_to_wire(self.registry.digest())
        self.bytes_out += digest.ByteSize()
        reply = await stub.Reconcile(digest, timeout=timeout)
        self.bytes_in += reply.ByteSize()
        answer = codec.reconciliation_from_wire(reply)
        peer.peer_id = answer.entries.sender
        if len(answer.entries):
            self.apply(answer.entries)
        back = self.registry.entries_needed(answer)
        for part in _split(back):
            await self._push(stub, part)
        peer.watermark = max(peer.watermark or 0, seq)
        if not peer.synced:
            log.info("gossip peer %s (%s) synced", peer.address, peer.peer_id)
        peer.synced = peer.ever_synced = True
        peer.next_digest = time.monotonic() + self._timers.digest_interval_s

    def apply_chunk(self, chunk: StateChunk) -> None:
        self.apply(Delta(chunk.sender, 0, 0, chunk.agents, chunk.queues, chunk.nodes))


def _split(delta: Delta) -> list[Delta]:
    """Loose entries in pushes of at most MAX_DELTA_ENTRIES each."""
    step = MAX_DELTA_ENTRIES
    parts = [
        Delta(delta.sender, 0, 0, agents=delta.agents[i : i + step])
        for i in range(0, len(delta.agents), step)
    ]
    parts += [
        Delta(delta.sender, 0, 0, queues=delta.queues[i : i + step])
        for i in range(0, len(delta.queues), step)
    ]
    parts += [
        Delta(delta.sender, 0, 0, nodes=delta.nodes[i : i + step])
        for i in range(0, len(delta.nodes), step)
    ]
    return parts
