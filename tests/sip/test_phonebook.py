"""An agent's external phone number outlives a node restart: POST /agents/ID/phone keeps it in
the site's etcd and the node lines it up again when it starts (a real node and etcd)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from loadtest.bench_sip import sip_node
from node.etcd_server import free_port
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


async def test_numbers_are_kept_per_site_forgotten_and_bad_stored_values_skipped() -> None:
    store = MemoryStore()
    book, other = PhoneBook(store, "site-a"), PhoneBook(store, "site-b")
    await book.save("bea", "+4930777")
    await book.save("cal", "+4930778")
    await other.save("dan", "+4930779")
    await book.save("cal", "")  # removed
    store.data[phones_prefix("site-a") + "eve"] = b"not a number"
    assert await book.load() == {"bea": "+4930777"}
    assert await other.load() == {"dan": "+4930779"}
    with pytest.raises(BadNumber):
        await book.save("bea", "call me")


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
        assert node.sip.phones is not None
        assert node.sip.phones.numbers == {"bea": "+4930777"}
