"""The cluster fabric with real etcd processes and real node processes on loopback."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.localcluster import LocalCluster, SitePlan

TTL_S = 2  # the fast preset's lease
MARGIN_S = 6  # an etcd leader election, a keep-alive period, gossip and polling


async def eventually(
    check: Callable[[], Awaitable[bool]], within_s: float, what: str = "condition"
) -> float:
    """Poll until `check` holds; return the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within_s:
            raise AssertionError(f"{what} not reached within {within_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class Client:
    """HTTP to a LocalCluster's nodes as its admin: the admin's token goes into `http`'s default
    headers, so raw `client.http.get(...)` calls are authenticated too."""

    def __init__(self, cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.http = http
        self.token = cluster.credentials.token("admin")
        http.headers["Authorization"] = f"Bearer {self.token}"

    async def login_user(self, node_id: str, user: str) -> str:
        """POST /login as a sample user (node/sampleusers.py) with its password: its token."""
        password = self.cluster.credentials.passwords[user]
        async with self.http.post(
            self.url(node_id, "/login"), json={"user": user, "password": password}
        ) as response:
            body = await response.json()
            assert response.status == 200, body
            return str(body["token"])

    def url(self, node_id: str, path: str) -> str:
        return f"http://{self.cluster.plans[node_id].http}{path}"

    async def get(self, node_id: str, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url(node_id, path)) as response:
            return response.status, await response.json()

    async def post(self, node_id: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.http.post(self.url(node_id, path), json=body or {}) as response:
            return response.status, await response.json()

    async def agent(self, node_id: str, agent_id: str) -> dict[str, Any] | None:
        try:
            status, view = await self.get(node_id, "/registry")
        except aiohttp.ClientError:
            return None
        assert status == 200
        return next((a for a in view["agents"] if a["agent_id"] == agent_id), None)

    async def ready(self, node_id: str) -> bool:
        try:
            status, _ = await self.get(node_id, "/readyz")
        except aiohttp.ClientError:
            return False
        return status == 200

    async def login(self, node_id: str, agent_id: str) -> dict[str, Any]:
        status, body = await self.post(
            node_id, f"/agents/{agent_id}/login", {"skills": {"sales": 5}, "tier": 1}
        )
        assert status == 200, body
        return dict(body)

    def nodes(self) -> list[str]:
        return list(self.cluster.plans)

    async def all_ready(self, within_s: float) -> None:
        for node_id in self.nodes():

            async def check(node_id: str = node_id) -> bool:
                return await self.ready(node_id)

            await eventually(check, within_s, f"{node_id} ready")


TWO_SITES = [SitePlan("site-a", "inhouse", 2), SitePlan("site-b", "inhouse", 2)]


@pytest.fixture
async def two_sites(tmp_path: Path) -> AsyncIterator[Client]:
    async with (
        LocalCluster(TWO_SITES, tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        yield client


async def seen_everywhere(
    client: Client, agent_id: str, nodes: list[str], **fields: object
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for node_id in nodes:
            record = await client.agent(node_id, agent_id)
            if record is None or any(record.get(k) != v for k, v in fields.items()):
                return False
        return True

    return check


@pytest.mark.slow
async def test_login_spreads_to_both_sites_and_a_new_login_fences_the_old(
    two_sites: Client,
) -> None:
    client = two_sites
    everyone = client.nodes()
    first = await client.login("site-a-n1", "ann")
    await eventually(
        await seen_everywhere(client, "ann", everyone, home_node="site-a-n1", state="available"),
        3,
        "ann seen everywhere",
    )
    second = await client.login("site-a-n2", "ann")
    assert second["epoch"] > first["epoch"]
    await eventually(
        await seen_everywhere(
            client, "ann", everyone, home_node="site-a-n2", epoch=second["epoch"]
        ),
        3,
        "the new session seen everywhere",
    )

    async def old_holder_dropped() -> bool:
        status, _ = await client.post(
            "site-a-n1", "/agents/ann/state", {"state": "not-ready", "reason": "x"}
        )
        return status == 404

    await eventually(old_holder_dropped, 3, "site-a-n1 dropped ann's session")
    status, body = await client.post(
        "site-a-n2", "/agents/ann/state", {"state": "not-ready", "reason": "lunch"}
    )
    assert status == 200, body
    await eventually(
        await seen_everywhere(client, "ann", everyone, state="not-ready", reason="lunch"),
        3,
        "not-ready everywhere",
    )


@pytest.mark.slow
async def test_members_of_other_sites_are_learned_by_gossip(two_sites: Client) -> None:
    client = two_sites
    plans = client.cluster.plans
    expected = {
        node_id: {"grpc": plan.grpc, "http": plan.http, "gateway": plan.gateway, "up": True}
        for node_id, plan in plans.items()
    }

    async def everyone_knows_everyone() -> bool:
        for node_id in plans:
            _, view = await client.get(node_id, "/registry")
            known = {
                n["node_id"]: {k: n[k] for k in ("grpc", "http", "gateway", "up")}
                for n in view["nodes"]
            }
            if known != expected:
                return False
        return True

    await eventually(everyone_knows_everyone, 3, "every node knows every node's addresses")


@pytest.mark.slow
async def test_sigterm_leaves_cleanly(two_sites: Client) -> None:
    client = two_sites
    login = await client.login("site-b-n2", "hal")
    survivors = [n for n in client.nodes() if n != "site-b-n2"]
    await eventually(await seen_everywhere(client, "hal", survivors, state="available"), 3)
    assert await client.cluster.stop_node("site-b-n2") == 0
    # the leaving node itself wrote hal offline (same epoch: no survivor had to reap him)
    await eventually(
        await seen_everywhere(client, "hal", survivors, state="offline", epoch=login["epoch"]),
        3,
        "hal offline, written by his own node",
    )

    async def left() -> bool:
        _, view = await client.get("site-a-n1", "/registry")
        return any(n["node_id"] == "site-b-n2" and not n["up"] for n in view["nodes"])

    await eventually(left, 3, "site-b-n2 shown as left")
    await eventually(lambda: client.ready("site-b-n1"), 5, "site-b-n1 ready without its peer")


@pytest.mark.slow
async def test_killed_node_agents_go_offline_everywhere(two_sites: Client) -> None:
    client = two_sites
    await client.login("site-a-n2", "bob")
    survivors = [n for n in client.nodes() if n != "site-a-n2"]
    await eventually(await seen_everywhere(client, "bob", survivors, state="available"), 3)
    await client.cluster.kill_node("site-a-n2")
    await eventually(
        await seen_everywhere(client, "bob", survivors, state="offline"),
        TTL_S + MARGIN_S,
        "bob offline after his node was killed",
    )


@pytest.mark.slow
async def test_paused_node_fences_itself_and_does_not_act_on_stale_state(
    two_sites: Client,
) -> None:
    client = two_sites
    await client.login("site-a-n2", "cy")
    survivors = [n for n in client.nodes() if n != "site-a-n2"]
    await eventually(await seen_everywhere(client, "cy", survivors, state="available"), 3)
    client.cluster.signal("site-a-n2", signal.SIGSTOP)
    try:
        await eventually(
            await seen_everywhere(client, "cy", survivors, state="offline"),
            TTL_S + MARGIN_S,
            "cy offline while his node is paused",
        )
    finally:
        client.cluster.signal("site-a-n2", signal.SIGCONT)
    status, body = await client.post("site-a-n2", "/agents/cy/state", {"state": "available"})
    assert status in (404, 503), body  # fenced or session dropped: never a stale write
    await eventually(lambda: client.ready("site-a-n2"), 10, "site-a-n2 holds a new lease")
    await asyncio.sleep(1)  # gossip rounds: the stale node must not bring cy back
    for node_id in client.nodes():
        record = await client.agent(node_id, "cy")
        assert record is not None
        assert record["state"] == "offline"


@pytest.mark.slow
async def test_cut_off_site_keeps_serving_and_converges_after_heal(two_sites: Client) -> None:
    client = two_sites
    cluster = client.cluster
    gw_a, gw_b = cluster.plans["site-a-n1"], cluster.plans["site-b-n1"]
    await client.post(gw_a.node_id, "/debug/faults", {"block": [gw_b.grpc]})
    await client.post(gw_b.node_id, "/debug/faults", {"block": [gw_a.grpc]})
    await client.login("site-a-n2", "dee")
    await client.login("site-b-n2", "eve")
    site_a, site_b = ["site-a-n1", "site-a-n2"], ["site-b-n1", "site-b-n2"]
    await eventually(await seen_everywhere(client, "dee", site_a), 3, "dee within site-a")
    await eventually(await seen_everywhere(client, "eve", site_b), 3, "eve within site-b")
    await asyncio.sleep(1)
    assert await client.agent("site-b-n1", "dee") is None
    assert await client.agent("site-a-n1", "eve") is None
    await client.post(gw_a.node_id, "/debug/faults", {"block": []})
    await client.post(gw_b.node_id, "/debug/faults", {"block": []})

    async def all_equal() -> bool:
        views = [(await client.get(n, "/registry"))[1]["agents"] for n in client.nodes()]
        return len(views[0]) == 2 and all(v == views[0] for v in views)

    await eventually(all_equal, 5, "every registry equal after the heal")


@pytest.mark.slow
async def test_etcd_member_restart_keeps_sessions_single(tmp_path: Path) -> None:
    sites = [SitePlan("site-a", "inhouse", 2, etcd_members=3)]
    async with (
        LocalCluster(sites, tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        await client.login("site-a-n1", "fay")
        member = cluster.etcds["site-a"][0]
        await member.stop()
        await asyncio.sleep(TTL_S)
        await member.start()
        await member.wait_healthy()
        await client.login("site-a-n2", "gus")
        await client.all_ready(15)
        await eventually(
            await seen_everywhere(
                client, "fay", client.nodes(), home_node="site-a-n1", state="available"
            ),
            5,
            "fay still logged in once, at site-a-n1",
        )
        await eventually(await seen_everywhere(client, "gus", client.nodes(), state="available"), 5)
