"""An agent's external phone number outlives a node restart and reaches every node of the site:
POST /agents/ID/phone keeps it in the site's etcd, a node lines the numbers up when it starts and
follows the changes other nodes make (a real node and etcd)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from loadtest.bench_sip import sip_node
from node.etcd import Etcd, WatchEvent
from node.etcd_server import EtcdServer, free_port
from node.sessions import Profile
from sip.phonebook import PhoneBook, phones_prefix
from sip.phones import BadNumber


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get_prefix(self, prefix: str) -> tuple[Sequence[Item], int]:
        found = [Item(k, v) for k, v in sorted(self.data.items()) if k.startswith(prefix)]
        return found, 1

    async def put(self, key: str, value: bytes, *, leased: bool = False) -> int:
        assert not leased  # a number is the agent's profile, not its session
        self.data[key] = value
        return 1

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """No changes: the watch ends at once (a follow returns after lining up)."""
        return
        yield  # pragma: no cover


class Lines:
    """The phone lines of a node: what was registered, in order."""

    def __init__(self) -> None:
        self.numbers: dict[str, str] = {}
        self.registered: list[tuple[str, str]] = []

    def register(self, agent_id: str, number: str) -> None:
        self.registered.append((agent_id, number))
        if number:
            self.numbers[agent_id] = number
        else:
            self.numbers.pop(agent_id, None)


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not true after {timeout_s} s")


async def test_numbers_are_kept_per_site_forgotten_and_bad_stored_values_skipped() -> None:
    store = MemoryStore()
    book, other = PhoneBook(store, "site-a"), PhoneBook(store, "site-b")
    await book.save("bea", "+4930777")
    await book.save("cal", "+4930778")
    await other.save("dan", "+4930779")
    await book.save("cal", "")  # removed
    store.data[phones_prefix("site-a") + "eve"] = b"not a number"
    here, there = Lines(), Lines()
    await book.follow(here)
    await other.follow(there)
    assert here.numbers == {"bea": "+4930777"}
    assert there.numbers == {"dan": "+4930779"}
    with pytest.raises(BadNumber):
        await book.save("bea", "call me")


async def test_a_node_follows_the_numbers_other_nodes_of_its_site_change(tmp_path: Path) -> None:
    async with (
        EtcdServer("e1", tmp_path / "e1") as server,
        Etcd([server.client_url]) as mine,
        Etcd([server.client_url]) as theirs,
    ):
        here, there = PhoneBook(mine, "site-a"), PhoneBook(theirs, "site-a")
        await there.save("bea", "+4930777")
        await PhoneBook(theirs, "site-b").save("dan", "+4930779")  # another site's
        lines = Lines()
        follow = asyncio.create_task(here.follow(lines))
        try:
            await eventually(lambda: lines.numbers == {"bea": "+4930777"})
            await there.save("cal", "+4930778")  # registered at another node, later
            await there.save("bea", "+4930770")  # changed
            await eventually(lambda: lines.numbers == {"bea": "+4930770", "cal": "+4930778"})
            await there.save("cal", "")  # removed
            await theirs.put(phones_prefix("site-a") + "eve", b"not a number")
            await eventually(lambda: "cal" not in lines.numbers)
            lines.register("gus", "+4930771")  # as the API does on the node asked, then saves
            await here.save("gus", "+4930771")
            await there.save("bea", "+4930772")  # a later change: the watch has seen gus's
            await eventually(lambda: lines.numbers.get("bea") == "+4930772")
            assert lines.numbers == {"bea": "+4930772", "gus": "+4930771"}
            assert lines.registered.count(("gus", "+4930771")) == 1  # not lined up twice
            assert ("eve", "not a number") not in lines.registered
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)


async def test_following_waits_for_an_unreachable_etcd_then_lines_up(tmp_path: Path) -> None:
    client_port, peer_port = free_port(), free_port()

    def server() -> EtcdServer:
        return EtcdServer("e1", tmp_path / "e1", client_port=client_port, peer_port=peer_port)

    async with server() as first:
        etcd = await Etcd([first.client_url], request_timeout_s=0.5).__aenter__()
    try:  # the server is gone: the first reads fail, and the book keeps trying
        lines = Lines()
        follow = asyncio.create_task(PhoneBook(etcd, "site-a").follow(lines))
        await asyncio.sleep(1.5)
        assert not follow.done()
        async with (
            server() as again,
            Etcd([again.client_url]) as other,
        ):
            await PhoneBook(other, "site-a").save("bea", "+4930777")
            await eventually(lambda: lines.numbers == {"bea": "+4930777"}, 20)
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
    finally:
        await etcd.__aexit__(None, None, None)


@pytest.mark.slow
async def test_a_registered_phone_is_lined_up_again_after_the_node_restarts(
    tmp_path: Path,
) -> None:
    phones = free_port()
    async with sip_node(tmp_path, phones) as node:
        assert node.sessions is not None
        await node.sessions.login("bea", Profile(tier=1, skills=(("sales", 5),)))
        url = f"http://{node.http_address}/agents/bea/phone"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"number": "+4930777"}) as response:
                assert response.status == 200, await response.text()
            async with http.post(url, json={"number": "call me"}) as response:
                assert response.status == 400, await response.text()
        assert node.sip is not None
        assert node.sip.phones is not None
        assert node.sip.phones.numbers == {"bea": "+4930777"}
    async with sip_node(tmp_path, phones) as node:  # the same etcd data: a restart
        assert node.sip is not None
        lines = node.sip.phones
        assert lines is not None
        await eventually(lambda: lines.numbers == {"bea": "+4930777"})
