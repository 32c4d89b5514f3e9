"""A partner site is semi-trusted (docs/SECURITY.md): over real nodes of an in-house site and a
partner site, tokens and revocation pushes signed with partner-c's own key count at an in-house
node only within partner-c's scope (its own agents, role agent; its own users' revocations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from node.auth import Claims, Role, TokenSigner
from node.localcluster import LocalCluster, SitePlan
from node.revocations import Kind, Revocation
from node.revoker import sealed
from node.sitekeys import SiteKeys, generate
from registry.clock import wall_ms
from registry.records import Trust
from tests.node.test_cluster import Client

A1, C1 = "site-a-n1", "partner-c-n1"


async def test_a_partner_node_mints_and_revokes_only_within_its_scope(tmp_path: Path) -> None:
    sites = [SitePlan("site-a", "inhouse", 1), SitePlan("partner-c", "partner", 1)]
    async with (
        LocalCluster(sites, tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as admin_http,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, admin_http)
        await client.all_ready(30)
        keys = cluster.credentials

        async def send(method: str, node: str, path: str, token: str, body: Any = None) -> Any:
            headers = {"Authorization": f"Bearer {token}"}
            url = client.url(node, path)
            async with http.request(method, url, headers=headers, json=body) as response:
                reply = await response.json()
                return response.status, reply.get("error") if isinstance(reply, dict) else None

        # an in-house supervisor's token minted with partner-c's key: refused at site-a, while
        # the same claims signed by site-a pass (the rule, not the route, refuses it)
        forged_sue = keys.mint("sue", Role.SUPERVISOR, site="partner-c")
        assert await send("GET", A1, "/supervisor", forged_sue) == (403, "out_of_scope")
        sue = keys.mint("sue", Role.SUPERVISOR, site="site-a")
        assert (await send("GET", A1, "/supervisor", sue))[0] == 200
        # ... and the records of customers' calls stay closed to it too
        assert await send("GET", A1, "/records", forged_sue) == (403, "out_of_scope")
        # an admin's token minted with partner-c's key: the same
        forged_admin = keys.mint("admin", Role.ADMIN, site="partner-c")
        assert await send("GET", A1, "/registry", forged_admin) == (403, "out_of_scope")
        unblock: dict[str, list[str]] = {"block": []}
        assert await send("POST", A1, "/debug/faults", forged_admin, unblock) == (
            403,
            "out_of_scope",
        )
        # an in-house agent's token minted by the partner: refused
        forged_ann = keys.mint("ann", Role.AGENT, site="partner-c")
        assert await send("GET", A1, "/agents/ann/offers", forged_ann) == (403, "out_of_scope")
        # a partner agent logged in at partner-c: its token works at the in-house node
        pia = await client.login_user(C1, "pia")
        assert await send("GET", A1, "/agents/pia/offers", pia) == (404, "session_not_here")
        assert (await send("POST", A1, "/agents/pia/login", pia))[0] == 200
        assert (await send("GET", A1, "/agents/pia/offers", pia))[0] == 200
        # a token signed with a key no site holds (claiming partner-c, or an unknown site)
        ring, privates = generate({"partner-c": Trust.PARTNER, "site-x": Trust.INHOUSE})
        for site in ("partner-c", "site-x"):
            stranger = TokenSigner(SiteKeys(site, privates[site], ring))
            token = stranger.issue(Claims("pia", Role.AGENT, wall_ms() + 600_000))
            assert await send("GET", A1, "/agents/pia/offers", token) == (401, "unauthorized")

        # revocation pushes signed with partner-c's key: its own agent's tokens go; an
        # in-house user's do not
        partner = keys.auth("partner-c")
        ann = await client.login_user(A1, "ann")
        now = wall_ms()
        beyond = sealed(partner, [Revocation(Kind.USER, "ann", now, now + 3_600_000)])
        async with http.post(client.url(A1, "/revocations"), json=beyond) as response:
            reply = await response.json()
            assert (response.status, reply["error"]) == (403, "out_of_scope"), reply
            assert "may revoke only its own users' tokens" in reply["message"]
        kept = await send("GET", A1, "/agents/ann/offers", ann)
        assert kept == (404, "session_not_here"), "ann's token still passes (she is not in)"
        own = sealed(partner, [Revocation(Kind.USER, "pia", now, now + 3_600_000)])
        async with http.post(client.url(A1, "/revocations"), json=own) as response:
            assert response.status == 200, await response.text()
        assert await send("GET", A1, "/agents/pia/offers", pia) == (401, "token_revoked")
