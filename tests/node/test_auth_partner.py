"""A partner site is semi-trusted (docs/SECURITY.md): over real nodes of an in-house site and a
partner site, tokens signed with partner-c's own key count at an in-house node only within
partner-c's scope (its own agents, role agent), and a partner agent's logout reaches the
in-house site."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from node.localcluster import LocalCluster, SitePlan
from node.sitekeys import SiteKeys, generate
from node.tokens import Audience, Claims, TokenSigner
from node.users import Role
from registry.clock import wall_ms
from registry.records import Trust
from tests.node.test_cluster import Client, eventually

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
            token = stranger.issue(
                Claims("pia", Role.AGENT, wall_ms() + 600_000, audience=Audience(inhouse=True))
            )
            assert await send("GET", A1, "/agents/pia/offers", token) == (401, "unauthorized")

        # a logout at partner-c reaches site-a over the nodes' gRPC with mutual TLS: pia's
        # token goes there too. (A partner's push revoking an in-house user is refused:
        # tests/node/test_revocation_rpc.py, over a real partner certificate.)
        other_pia = await client.login_user(C1, "pia")
        assert (await send("POST", C1, "/logout", pia))[0] == 200

        async def revoked_at_site_a() -> bool:
            return bool(await send("GET", A1, "/agents/pia/offers", pia) == (401, "token_revoked"))

        await eventually(revoked_at_site_a, 10, "pia's logout seen at site-a")
        assert (await send("GET", A1, "/agents/pia/offers", other_pia))[0] == 200


async def test_tokens_count_only_at_the_sites_of_their_audience(tmp_path: Path) -> None:
    """An in-house login's token is refused at the partner node (401 wrong_audience), and one
    asked for the partner site only is refused in-house (no replay either way); a partner
    agent's token counts at its site and in-house; a partner node knows only its own users."""
    sites = [SitePlan("site-a", "inhouse", 1), SitePlan("partner-c", "partner", 1)]
    async with (
        LocalCluster(sites, tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as admin_http,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, admin_http)
        await client.all_ready(30)
        passwords = cluster.credentials.passwords

        async def login(node: str, user: str, **extra: Any) -> tuple[int, Any]:
            body = {"user": user, "password": passwords[user], **extra}
            async with http.post(client.url(node, "/login"), json=body) as response:
                return response.status, await response.json()

        async def send(node: str, path: str, token: str) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(client.url(node, path), headers=headers) as response:
                return response.status, await response.json()

        # ann's and sue's tokens from site-a: good at site-a, refused at partner-c
        status, ann = await login(A1, "ann")
        assert (status, ann["audience"]) == (200, ["@inhouse"]), ann
        assert (await send(A1, "/agents/ann/offers", ann["token"]))[0] == 404  # not in: passes
        status, refused = await send(C1, "/agents/ann/offers", ann["token"])
        assert (status, refused["error"]) == (401, "wrong_audience"), refused
        assert "for the in-house sites only" in refused["message"]
        assert "site partner-c (a partner site)" in refused["message"]
        status, sue = await login(A1, "sue")
        assert (await send(A1, "/supervisor", sue["token"]))[0] == 200
        assert (await send(C1, "/supervisor", sue["token"]))[0] == 401
        # asked for partner-c: good there, and not replayable at site-a
        status, for_c = await login(A1, "sue", audience=["partner-c"])
        assert (status, for_c["audience"]) == (200, ["partner-c"]), for_c
        assert (await send(C1, "/supervisor", for_c["token"]))[0] == 200
        status, refused = await send(A1, "/supervisor", for_c["token"])
        assert (status, refused["error"]) == (401, "wrong_audience"), refused
        # an audience of unknown sites, or no list: 400
        status, bad = await login(A1, "sue", audience=["site-z"])
        assert (status, bad["error"]) == (400, "bad_request"), bad
        assert "site-z not in the key ring" in bad["message"]
        assert (await login(A1, "sue", audience="partner-c"))[0] == 400
        # pia's token from partner-c: good at partner-c and at site-a, as before
        status, pia = await login(C1, "pia")
        assert (status, pia["audience"]) == (200, ["@inhouse", "partner-c"]), pia
        assert (await send(C1, "/agents/pia/offers", pia["token"]))[0] == 404
        assert (await send(A1, "/agents/pia/offers", pia["token"]))[0] == 404
        # partner-c's own admin: good at partner-c only
        status, admin = await login(C1, "admin")
        assert (status, admin["audience"]) == (200, ["partner-c"]), admin
        assert (await send(C1, "/registry", admin["token"]))[0] == 200
        status, refused = await send(A1, "/registry", admin["token"])
        assert (status, refused["error"]) == (401, "wrong_audience"), refused

        # partner-c's users file holds its own users only: ann cannot log in there
        status, failed = await login(C1, "ann")
        assert (status, failed["error"]) == (401, "login_failed"), failed
        assert (await login(C1, "sue"))[0] == 200  # partner-c's own supervisor account
