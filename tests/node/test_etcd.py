"""The etcd adapter against real etcd processes: requests, the lease, watches, fail-over.

Actions behind the adapter's back (revoking its lease, compacting, asking a lease's TTL) go
through etcd's JSON gateway, so only node/etcd.py talks gRPC to etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.etcd import (
    Etcd,
    EtcdFenced,
    EtcdUnavailable,
    EventKind,
    KeyValue,
    WatchCompacted,
    WatchEvent,
)
from node.etcd_server import EtcdServer, free_port

PREFIX = "/callmesh/site-a/"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    async with EtcdServer("e1", tmp_path / "e1") as running:
        yield running


async def gateway(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to etcd's JSON gateway (/v3/...), as a second client would."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v3/{path}", json=body) as response,
    ):
        response.raise_for_status()
        answer: dict[str, Any] = await response.json(content_type=None)
        return answer


async def remaining_ttl(url: str, lease_id: int) -> int:
    answer = await gateway(url, "lease/timetolive", {"ID": str(lease_id)})
    return int(answer.get("TTL", -1))


async def eventually(check: Callable[[], bool], timeout_s: float = 8.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not true after {timeout_s} s")


class LeaseLog:
    """Records the lease callbacks in order: ("granted", id) and ("lost", None)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def lost(self) -> None:
        self.calls.append(("lost", None))

    def granted(self, lease_id: int) -> None:
        self.calls.append(("granted", lease_id))


async def next_event(events: AsyncGenerator[WatchEvent, None]) -> WatchEvent:
    return await asyncio.wait_for(anext(events), 10)


# Requests


async def test_put_get_get_prefix_delete_round_trip(server: EtcdServer) -> None:
    async with Etcd([server.client_url]) as etcd:
        assert await etcd.get(PREFIX + "a") is None
        rev_a = await etcd.put(PREFIX + "a", b"1")
        rev_b = await etcd.put(PREFIX + "b", b"2")
        await etcd.put("/callmesh/site-b/x", b"elsewhere")
        assert rev_b > rev_a > 0

        assert await etcd.get(PREFIX + "a") == KeyValue(PREFIX + "a", b"1", rev_a, 0)
        kvs, revision = await etcd.get_prefix(PREFIX)
        assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [
            (PREFIX + "a", b"1", rev_a),
            (PREFIX + "b", b"2", rev_b),
        ]
        assert revision == rev_b + 1

        await etcd.delete(PREFIX + "a")
        await etcd.delete(PREFIX + "never-there")
        assert await etcd.get(PREFIX + "a") is None
        assert [kv.key for kv in (await etcd.get_prefix(PREFIX))[0]] == [PREFIX + "b"]


async def test_put_if_applies_only_at_the_expected_revision(server: EtcdServer) -> None:
    key, other, third = PREFIX + "owner", PREFIX + "epoch", PREFIX + "claim"
    async with Etcd([server.client_url]) as etcd:
        assert await etcd.put_if(key, b"n1", mod_revision=0, also=[(other, b"1", False)])
        first = await etcd.get(key)
        assert first is not None
        also = await etcd.get(other)
        assert also is not None
        assert also.mod_revision == first.mod_revision  # one transaction

        # 0 means "absent": the key exists now, so nothing is written, `also` included.
        assert not await etcd.put_if(key, b"n2", mod_revision=0, also=[(third, b"x", False)])
        assert not await etcd.put_if(
            key, b"n2", mod_revision=first.mod_revision - 1, also=[(third, b"x", False)]
        )
        assert await etcd.get(third) is None
        assert (await etcd.get(key)) == first

        assert await etcd.put_if(
            key, b"n2", mod_revision=first.mod_revision, leased=True, also=[(third, b"y", True)]
        )
        now, claim = await etcd.get(key), await etcd.get(third)
        assert now is not None
        assert claim is not None
        assert (now.value, now.lease) == (b"n2", etcd.lease_id)
        assert (claim.value, claim.lease, claim.mod_revision) == (
            b"y",
            etcd.lease_id,
            now.mod_revision,
        )

        with pytest.raises(ValueError, match="appears twice"):
            await etcd.put_if(key, b"n3", mod_revision=now.mod_revision, also=[(key, b"", False)])


async def test_two_nodes_racing_with_put_if_have_one_winner(server: EtcdServer) -> None:
    async with Etcd([server.client_url]) as a, Etcd([server.client_url]) as b:
        results = await asyncio.gather(
            *(
                node.put_if(PREFIX + "leader", name, mod_revision=0)
                for node, name in [(a, b"a"), (b, b"b"), (a, b"a2"), (b, b"b2")]
            )
        )
        assert sorted(results) == [False, False, False, True]


async def test_requests_need_an_open_etcd() -> None:
    etcd = Etcd([f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(RuntimeError, match="not open"):
        await etcd.get(PREFIX + "a")
    with pytest.raises(RuntimeError, match="not open"):
        await anext(etcd.watch_prefix(PREFIX, 1))


def test_endpoints_are_http_urls() -> None:
    with pytest.raises(ValueError, match="expected http://host:port"):
        Etcd(["https://127.0.0.1:2379"])
    with pytest.raises(ValueError, match="at least one endpoint"):
        Etcd([])


# The lease


async def test_leased_keys_vanish_when_the_etcd_exits(server: EtcdServer) -> None:
    async with Etcd([server.client_url]) as reader:
        async with Etcd([server.client_url]) as etcd:
            lease_id = etcd.lease_id
            assert lease_id is not None
            await etcd.put(PREFIX + "presence", b"n1", leased=True)
            await etcd.put(PREFIX + "config", b"kept")
            seen = await reader.get(PREFIX + "presence")
            assert seen is not None
            assert seen.lease == lease_id
        assert await reader.get(PREFIX + "presence") is None
        assert await reader.get(PREFIX + "config") is not None
        assert await remaining_ttl(server.client_url, lease_id) == -1


async def test_a_lease_expires_when_its_keep_alive_stops(server: EtcdServer) -> None:
    async with (
        Etcd([server.client_url]) as reader,
        Etcd([server.client_url], lease_ttl_s=2) as etcd,
    ):
        await etcd.put(PREFIX + "presence", b"n1", leased=True)
        task = etcd._keep_alive_task  # stopped behind its back, as a frozen process would be
        assert task is not None
        task.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0.5)
        assert await reader.get(PREFIX + "presence") is not None  # not at once: after the TTL
        deadline = asyncio.get_running_loop().time() + 6
        while await reader.get(PREFIX + "presence") is not None:
            assert asyncio.get_running_loop().time() < deadline, "the leased key outlived its TTL"
            await asyncio.sleep(0.1)


async def test_keep_alive_holds_a_short_lease(server: EtcdServer) -> None:
    leases = LeaseLog()
    async with Etcd(
        [server.client_url],
        lease_ttl_s=2,
        on_lease_lost=leases.lost,
        on_lease_granted=leases.granted,
    ) as etcd:
        lease_id = etcd.lease_id
        assert lease_id is not None
        await etcd.put(PREFIX + "presence", b"n1", leased=True)
        await asyncio.sleep(5)
        assert etcd.lease_id == lease_id
        assert leases.calls == [("granted", lease_id)]
        assert await etcd.get(PREFIX + "presence") is not None
        assert await remaining_ttl(server.client_url, lease_id) > 0


async def test_a_lease_revoked_behind_its_back_is_lost_then_replaced(server: EtcdServer) -> None:
    leases = LeaseLog()
    async with Etcd(
        [server.client_url],
        lease_ttl_s=2,
        on_lease_lost=leases.lost,
        on_lease_granted=leases.granted,
    ) as etcd:
        old = etcd.lease_id
        assert old is not None
        await etcd.put(PREFIX + "presence", b"n1", leased=True)
        await gateway(server.client_url, "lease/revoke", {"ID": str(old)})
        assert await etcd.get(PREFIX + "presence") is None

        await eventually(lambda: len(leases.calls) == 3)
        new = etcd.lease_id
        assert new is not None
        assert new != old
        assert leases.calls == [("granted", old), ("lost", None), ("granted", new)]
        await etcd.put(PREFIX + "presence", b"n1", leased=True)
        assert await remaining_ttl(server.client_url, new) > 0


async def test_a_leased_write_on_a_vanished_lease_fences_the_node(server: EtcdServer) -> None:
    leases = LeaseLog()
    async with Etcd(
        [server.client_url],
        lease_ttl_s=5,
        on_lease_lost=leases.lost,
        on_lease_granted=leases.granted,
    ) as etcd:
        old = etcd.lease_id
        assert old is not None
        await gateway(server.client_url, "lease/revoke", {"ID": str(old)})
        with pytest.raises(EtcdFenced):
            await etcd.put(PREFIX + "presence", b"n1", leased=True)
        with pytest.raises(EtcdFenced):
            await etcd.put_if(PREFIX + "owner", b"n1", mod_revision=0, leased=True)
        assert ("lost", None) in leases.calls
        assert await etcd.get(PREFIX + "owner") is None
        await eventually(lambda: etcd.has_lease)
        assert await etcd.put_if(PREFIX + "owner", b"n1", mod_revision=0, leased=True)


async def test_exit_right_after_a_fencing_write_returns(server: EtcdServer) -> None:
    # The keep-alive task is woken by the fencing write and cancelled in the same loop turn.
    async with asyncio.timeout(10):
        etcd = Etcd([server.client_url])
        async with etcd:
            await gateway(server.client_url, "lease/revoke", {"ID": str(etcd.lease_id)})
            with pytest.raises(EtcdFenced):
                await etcd.put(PREFIX + "presence", b"n1", leased=True)
        assert not etcd.has_lease


async def test_a_frozen_etcd_times_out_requests_and_exit_returns(server: EtcdServer) -> None:
    pid = server.pid
    assert pid is not None
    async with asyncio.timeout(15):
        try:
            async with Etcd([server.client_url], lease_ttl_s=2, request_timeout_s=0.5) as etcd:
                await asyncio.sleep(0.1)
                os.kill(pid, signal.SIGSTOP)  # connections stay open, nothing answers
                with pytest.raises(EtcdUnavailable, match="no answer in time"):
                    await etcd.get(PREFIX + "a")
                pending = asyncio.create_task(etcd.get(PREFIX + "a"))
                await asyncio.sleep(0.1)
                pending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pending
                await asyncio.sleep(1)  # the keep-alive is now waiting on the frozen etcd
        finally:
            os.kill(pid, signal.SIGCONT)


# Watches


async def test_watch_sees_puts_and_deletes_in_order_across_a_restart(tmp_path: Path) -> None:
    client_port, peer_port = free_port(), free_port()
    first = EtcdServer("e1", tmp_path / "e1", client_port=client_port, peer_port=peer_port)
    # The same member again: same ports, same data.
    again = EtcdServer("e1", tmp_path / "e1", client_port=client_port, peer_port=peer_port)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(first)
        stack.push_async_callback(again.stop)
        etcd = await stack.enter_async_context(Etcd([first.client_url]))
        start = await etcd.put(PREFIX + "a", b"1")
        await etcd.put(PREFIX + "b", b"2")
        await etcd.delete(PREFIX + "a")
        await etcd.put("/callmesh/site-b/a", b"not watched")
        events = await stack.enter_async_context(
            contextlib.aclosing(etcd.watch_prefix(PREFIX, start))
        )
        seen = [await next_event(events) for _ in range(3)]
        assert [(e.kind, e.key, e.value) for e in seen] == [
            (EventKind.PUT, PREFIX + "a", b"1"),
            (EventKind.PUT, PREFIX + "b", b"2"),
            (EventKind.DELETE, PREFIX + "a", b""),
        ]
        assert [e.mod_revision for e in seen] == [start, start + 1, start + 2]

        await first.stop()
        await again.__aenter__()
        # Made before the watch is back: it must resume from its last revision + 1.
        await etcd.put(PREFIX + "c", b"3")
        await etcd.delete(PREFIX + "b")
        after = [await next_event(events) for _ in range(2)]
        assert [(e.kind, e.key, e.mod_revision) for e in after] == [
            (EventKind.PUT, PREFIX + "c", start + 4),  # start + 3 was site-b's put
            (EventKind.DELETE, PREFIX + "b", start + 5),
        ]
        await etcd.put(PREFIX + "d", b"4")
        assert (await next_event(events)).key == PREFIX + "d"


async def test_a_watch_from_a_compacted_revision_asks_for_a_re_read(server: EtcdServer) -> None:
    async with Etcd([server.client_url]) as etcd:
        start = await etcd.put(PREFIX + "a", b"1")
        last = await etcd.put(PREFIX + "a", b"2")
        await gateway(server.client_url, "kv/compaction", {"revision": str(last)})
        with pytest.raises(WatchCompacted) as caught:
            async with contextlib.aclosing(etcd.watch_prefix(PREFIX, start)) as events:
                await next_event(events)
        assert (caught.value.revision, caught.value.compact_revision) == (start, last)
        _, revision = await etcd.get_prefix(PREFIX)
        async with contextlib.aclosing(etcd.watch_prefix(PREFIX, revision + 1)) as events:
            await etcd.put(PREFIX + "b", b"3")
            assert (await next_event(events)).key == PREFIX + "b"


async def test_exit_ends_watches_and_leaves_no_task(server: EtcdServer) -> None:
    before = asyncio.all_tasks()
    async with Etcd([server.client_url]) as etcd:
        start = await etcd.put(PREFIX + "a", b"1")
        events = etcd.watch_prefix(PREFIX, start)
        assert (await next_event(events)).key == PREFIX + "a"
        assert len(asyncio.all_tasks() - before) >= 1  # the keep-alive task, at least
        waiting = asyncio.create_task(next_event(events))
        await asyncio.sleep(0.1)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


# Fail-over


async def test_requests_fail_over_from_a_dead_endpoint(server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with Etcd([dead, server.client_url]) as etcd:
        assert etcd.has_lease
        revision = await etcd.put(PREFIX + "a", b"1", leased=True)
        got = await etcd.get(PREFIX + "a")
        assert got is not None
        assert got.mod_revision == revision
        async with contextlib.aclosing(etcd.watch_prefix(PREFIX, revision)) as events:
            assert (await next_event(events)).key == PREFIX + "a"


async def test_no_endpoint_answering_is_a_clear_error() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(EtcdUnavailable) as caught:
        async with Etcd(dead, connect_timeout_s=0.5):
            pass
    assert caught.value.code == "etcd_unavailable"
    for url in dead:
        assert url in str(caught.value)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, size: int = 3) -> AsyncIterator[list[EtcdServer]]:
    """A `size`-member etcd cluster, members started together (each waits for the others)."""
    peers = {f"m{i}": free_port() for i in range(size)}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in peers.items()}
    members = [EtcdServer(n, tmp_path / n, peer_port=p, cluster=urls) for n, p in peers.items()]
    try:
        await asyncio.gather(*(member.__aenter__() for member in members))
        yield members
    finally:
        await asyncio.gather(*(member.stop() for member in members))


async def is_leader(member: EtcdServer) -> bool:
    status = await gateway(member.client_url, "maintenance/status", {})
    return bool(status["header"]["member_id"] == status["leader"])


async def leader_first(members: list[EtcdServer]) -> list[EtcdServer]:
    leading = [await is_leader(member) for member in members]
    assert leading.count(True) == 1
    return sorted(members, key=lambda member: not leading[members.index(member)])


@pytest.mark.slow
async def test_the_lease_survives_a_restart_of_the_leader(tmp_path: Path) -> None:
    leases = LeaseLog()
    async with cluster(tmp_path) as members:
        members = await leader_first(members)  # the leader is also the endpoint tried first
        async with Etcd(
            [m.client_url for m in members],
            lease_ttl_s=5,
            on_lease_lost=leases.lost,
            on_lease_granted=leases.granted,
        ) as etcd:
            lease_id = etcd.lease_id
            assert lease_id is not None
            await etcd.put(PREFIX + "presence", b"n1", leased=True)

            leader = members[0]
            await leader.stop()
            await etcd.put(PREFIX + "during", b"x")  # served by another member
            await asyncio.sleep(2)
            restarted = EtcdServer(
                leader.name,
                leader.data_dir,
                client_port=leader.client_port,
                peer_port=leader.peer_port,
                cluster=leader.cluster,
            )
            async with restarted:
                await asyncio.sleep(2)
                assert leases.calls == [("granted", lease_id)]
                assert etcd.lease_id == lease_id
                assert await etcd.get(PREFIX + "presence") is not None
                assert await remaining_ttl(members[1].client_url, lease_id) > 0
