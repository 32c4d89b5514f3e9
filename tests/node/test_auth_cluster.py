"""Authentication on real node processes: LocalCluster's users file, a token from one node
accepted by another (signed with the site's key, checked with the key ring), an agent logging
in with its sample profile."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from node.localcluster import LocalCluster, SitePlan
from tests.node.test_cluster import Client


async def test_a_token_from_one_node_works_at_another_and_roles_hold(tmp_path: Path) -> None:
    sites = [SitePlan("site-a", "inhouse", 2)]
    async with (
        LocalCluster(sites, tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as anonymous,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        n1, n2 = "site-a-n1", "site-a-n2"
        async with anonymous.get(client.url(n1, "/registry")) as response:
            assert response.status == 401
        token = await client.login_user(n1, "ann")
        ann = {"Authorization": f"Bearer {token}"}
        # logged in at n1, the token works at n2; no body: the users file's profile
        async with anonymous.post(client.url(n2, "/agents/ann/login"), headers=ann) as response:
            record = await response.json()
            assert response.status == 200, record
        assert record["skills"] == {"sales": 3, "support": 5}
        assert record["tier"] == 1
        async with anonymous.post(client.url(n2, "/agents/bo/logout"), headers=ann) as response:
            assert response.status == 403
        sue = {"Authorization": f"Bearer {await client.login_user(n2, 'sue')}"}
        async with anonymous.get(client.url(n1, "/supervisor"), headers=sue) as response:
            assert response.status == 200
        async with anonymous.post(
            client.url(n1, "/debug/faults"), json={"block": []}, headers=sue
        ) as response:
            assert response.status == 403
        # the admin helper's own requests pass
        status, _ = await client.get(n1, "/registry")
        assert status == 200
