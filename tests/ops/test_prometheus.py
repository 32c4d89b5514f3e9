"""A real Prometheus scrapes two real node processes and answers queries over its HTTP API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from node.localcluster import LocalCluster, SitePlan
from tests.ops.prometheus import Prometheus
from tests.ops.tools import RULES, exported_names

pytestmark = pytest.mark.slow


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within_s} s")
        await asyncio.sleep(0.2)


async def test_prometheus_scrapes_two_nodes_and_answers_agents_by_state(
    tmp_path: Path, exported: set[str]
) -> None:
    sites = [SitePlan("site-a", "inhouse", 2)]
    async with (
        LocalCluster(sites, tmp_path / "cluster", fast=True) as cluster,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=3), headers=cluster.credentials.headers()
        ) as http,
    ):
        n1, n2 = (cluster.plans[node_id].http for node_id in ("site-a-n1", "site-a-n2"))

        async def ready() -> bool:
            for address in (n1, n2):
                try:
                    async with http.get(f"http://{address}/readyz") as response:
                        if response.status != 200:
                            return False
                except aiohttp.ClientError:
                    return False
            return True

        await eventually(ready, 20, "both nodes ready")

        async def post(address: str, path: str, body: object) -> None:
            async with http.post(f"http://{address}{path}", json=body) as response:
                assert response.status == 200, await response.text()

        await post(n1, "/agents/ann/login", {"skills": {"sales": 5}, "tier": 1})
        await post(n2, "/agents/bob/login", {"skills": {"sales": 3}, "tier": 2})
        await post(n2, "/agents/bob/state", {"state": "not-ready", "reason": "lunch"})

        # Each node serves every family node/metrics.py defines, its live figures included.
        async with http.get(f"http://{n1}/metrics") as response:
            assert response.status == 200
            served = exported_names(await response.text())
        defined = {name for name in exported if name.startswith("callmesh_")}
        assert defined <= served, sorted(defined - served)

        async with Prometheus(tmp_path / "prometheus", [n1, n2], [RULES]) as prometheus:
            by_state: dict[str, float] = {}

            async def agents_counted() -> bool:
                nonlocal by_state
                answer = await prometheus.query(
                    'sum by (state) (callmesh_agents{state=~"available|not-ready"})'
                )
                by_state = {dict(labels)["state"]: value for labels, value in answer.items()}
                return by_state == {"available": 1, "not-ready": 1}

            try:
                await eventually(agents_counted, 20, "agents by state, over the HTTP API")
            except AssertionError:
                targets = await prometheus.api("targets")
                raise AssertionError(f"last answer {by_state}; targets {targets}") from None
            answer = await prometheus.query(
                'sum by (site, tier) (callmesh_agents{state="available"})'
            )
            assert answer == {
                (("site", "site-a"), ("tier", "1")): 1.0,
                (("site", "site-a"), ("tier", "2")): 0.0,
            }
            up = await prometheus.query('up{job="callmesh"}')
            assert sorted(dict(labels)["instance"] for labels in up) == sorted([n1, n2])
            assert set(up.values()) == {1.0}
            held = await prometheus.query("sum(callmesh_etcd_lease_held)")
            assert list(held.values()) == [2.0]
            entries = await prometheus.query('callmesh_registry_entries{kind="agents"}')
            assert set(entries.values()) == {2.0}  # both replicas hold ann and bob
            builds = await prometheus.query("count by (version) (callmesh_build_info)")
            assert list(builds.values()) == [2.0]
            rules = await prometheus.api("rules")
            names = {group["name"] for group in rules["groups"]}
            assert names == {"callmesh.records", "callmesh.alerts"}
            health = {rule["health"] for group in rules["groups"] for rule in group["rules"]}
            assert "err" not in health, rules
        assert prometheus.pid is not None
