"""Gossip between real gRPC servers on loopback, in one process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from node.gossip import Gossip, GossipTimers
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry

FAST = GossipTimers(digest_interval_s=0.3, push_delay_s=0.002, rpc_timeout_s=1.0)


def agent(registry: Registry, name: str, state: AgentState = AgentState.AVAILABLE) -> None:
    registry.write_agent(
        AgentRecord(name, registry.node_id, "site-a", Trust.INHOUSE, 1, (("sales", 3),), state)
    )


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def mesh(count: int) -> AsyncIterator[list[Gossip]]:
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(Gossip(Registry(f"n{i}"), "127.0.0.1", 0, FAST))
            for i in range(count)
        ]
        for node in nodes:
            node.set_peers(other.address for other in nodes if other is not node)
        yield nodes


def same(nodes: list[Gossip]) -> bool:
    first = nodes[0].registry.snapshot()
    return all(n.registry.snapshot() == first for n in nodes[1:])


async def test_a_write_reaches_every_peer_and_is_not_echoed() -> None:
    async with mesh(3) as nodes:
        agent(nodes[0].registry, "a1")
        nodes[0].changed()
        await eventually(lambda: all(n.registry.agent("a1") is not None for n in nodes))
        await eventually(lambda: all(n.synced() for n in nodes))
        seq = nodes[0].registry.seq
        await asyncio.sleep(0.8)  # several digest rounds: nothing new may come back
        assert nodes[0].registry.seq == seq


async def test_a_new_peer_gets_the_full_state() -> None:
    async with mesh(1) as nodes:
        for i in range(1_200):
            agent(nodes[0].registry, f"a{i}")
        async with Gossip(Registry("late"), "127.0.0.1", 0, FAST) as late:
            late.set_peers([nodes[0].address])
            await eventually(lambda: len(late.registry.agents()) == 1_200)


async def test_partitioned_sides_keep_writing_and_converge_after_heal() -> None:
    async with mesh(2) as (a, b):
        agent(a.registry, "before")
        a.changed()
        await eventually(lambda: same([a, b]))
        a.set_peers(())
        b.set_peers(())
        agent(a.registry, "left")
        agent(b.registry, "right")
        agent(a.registry, "before", AgentState.TALKING)
        await asyncio.sleep(0.3)
        assert b.registry.agent("left") is None
        a.set_peers([b.address])
        b.set_peers([a.address])
        await eventually(lambda: same([a, b]))
        record = b.registry.agent("before")
        assert record is not None
        assert record.state is AgentState.TALKING


async def test_malformed_push_is_refused_with_invalid_argument() -> None:
    async with (
        mesh(1) as (node,),
        grpc.aio.insecure_channel(node.address) as channel,
    ):
        stub = pb_grpc.GossipStub(channel)
        bad = pb.Delta(sender="x", agents=[pb.AgentRecord(agent_id="a", tier=99)])
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Push(bad)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "agents[0]" in (error.value.details() or "")
        assert node.registry.agents() == []


async def test_a_node_dialling_in_pulls_at_once_when_asked_to_reconcile_soon() -> None:
    """A partner dials in to an in-house gateway, which does not dial back: the gateway's
    changes reach it by its own digests. `reconcile_soon` pulls them without waiting."""
    slow = GossipTimers(digest_interval_s=60, push_delay_s=0.002, rpc_timeout_s=1.0)
    async with (
        Gossip(Registry("house"), "127.0.0.1", 0, slow) as house,
        Gossip(Registry("partner"), "127.0.0.1", 0, slow) as partner,
    ):
        partner.set_peers([house.address])
        await eventually(partner.synced)
        agent(house.registry, "ann")
        house.changed()  # no peers of its own: nothing is pushed
        await asyncio.sleep(0.3)
        assert partner.registry.agent("ann") is None
        partner.reconcile_soon()
        await eventually(lambda: partner.registry.agent("ann") is not None, 2.0)
