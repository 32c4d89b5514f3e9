"""HTTP authentication: password hashes, signed tokens, the route table, rate limits, and the
middleware in front of a real aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node.auth import Access, Auth, Forbidden, RateLimit, RateLimited, access_for, decide
from node.config import ConfigError, NodeConfig
from node.http_api import caller_token, make_app
from node.sessions import Profile
from node.sitekeys import SiteKeyError, SiteKeys, generate
from node.tokens import Audience, AuthError, Claims, TokenExpired, TokenSigner
from node.users import (
    Role,
    User,
    UsersFileError,
    hash_password,
    users_from_toml,
    users_toml,
    verify_password,
)
from registry.records import AgentRecord, AgentState, Trust
from registry.registry import Registry

RING, PRIVATE = generate({"site-a": Trust.INHOUSE, "partner-c": Trust.PARTNER})
KEYS = SiteKeys("site-a", PRIVATE["site-a"], RING)
HOUSE = Audience(inhouse=True)
"""Tokens that count at every in-house site."""
"""site-a's node: it signs with site-a's key and knows site-a's and partner-c's public keys."""
FOREIGN_RING, FOREIGN = generate({"site-a": Trust.INHOUSE, "site-x": Trust.INHOUSE})
FAST_N = 2**10


def test_password_hash_verifies_only_the_password_and_is_salted() -> None:
    stored = hash_password("s3cret", n=FAST_N)
    assert stored.startswith("scrypt$")
    assert "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    assert hash_password("s3cret", n=FAST_N) != stored
    assert not verify_password("s3cret", "plain:s3cret")
    assert not verify_password("s3cret", "scrypt$99999999999$8$1$AA$AA")


def test_tokens_verify_expire_and_refuse_tampering() -> None:
    signer = TokenSigner(KEYS)
    token = signer.issue(Claims("ann", Role.AGENT, 10_000, audience=HOUSE))
    assert signer.verify(token, 9_999) == (
        Claims("ann", Role.AGENT, 10_000, site="site-a", audience=HOUSE),
        Trust.INHOUSE,
    )
    with pytest.raises(TokenExpired):
        signer.verify(token, 10_000)
    version, _payload, signature = token.split(".")
    forged = signer.issue(Claims("ann", Role.ADMIN, 10_000, audience=HOUSE))
    with pytest.raises(AuthError, match="signature does not verify under site site-a's key"):
        signer.verify(f"{version}.{forged.split('.')[1]}.{signature}", 0)
    # a key the ring does not hold, for a site it knows or for one it does not
    foreign = TokenSigner(SiteKeys("site-a", FOREIGN["site-a"], FOREIGN_RING))
    with pytest.raises(AuthError, match="does not verify under site site-a's key"):
        signer.verify(foreign.issue(Claims("root", Role.ADMIN, 10_000, audience=HOUSE)), 0)
    unknown = TokenSigner(SiteKeys("site-x", FOREIGN["site-x"], FOREIGN_RING))
    with pytest.raises(AuthError, match="site 'site-x', which has no key in the key ring"):
        signer.verify(unknown.issue(Claims("root", Role.ADMIN, 10_000, audience=HOUSE)), 0)
    with pytest.raises(AuthError):
        signer.verify("garbage", 0)
    with pytest.raises(AuthError, match="malformed"):
        signer.verify(f"{version}.{token.split('.')[1]}.ßignature\udc80", 0)
    with pytest.raises(AuthError, match=r"v2\.payload\.signature"):
        signer.verify(f"v1.{token.split('.')[1]}.{signature}", 0)
    with pytest.raises(SiteKeyError, match="not site site-a's"):
        SiteKeys("site-a", PRIVATE["partner-c"], RING)


def test_users_file_round_trips_and_refuses_plain_passwords() -> None:
    users = {
        "ann": User(
            "ann", Role.AGENT, hash_password("x", n=FAST_N), Profile(2, (("sales", 4),)), "site-a"
        ),
        "sue": User("sue", Role.SUPERVISOR, hash_password("y", n=FAST_N)),
    }
    assert users_from_toml(users_toml(users)) == users
    with pytest.raises(UsersFileError, match="never the plain password"):
        users_from_toml('[users.bob]\nrole = "agent"\npassword = "hunter2"\n')
    with pytest.raises(UsersFileError, match="role must be"):
        users_from_toml('[users.bob]\nrole = "root"\npassword = "scrypt$1"\n')
    with pytest.raises(UsersFileError, match="unknown keys"):
        users_from_toml('[users.bob]\nrole = "admin"\npassword = "scrypt$1"\nshell = 1\n')
    with pytest.raises(UsersFileError, match="user bob: site"):
        users_from_toml('[users.bob]\nrole = "agent"\npassword = "scrypt$1"\nsite = "a b"\n')
    with pytest.raises(UsersFileError, match="user bob: site"):
        users_from_toml('[users.bob]\nrole = "agent"\npassword = "scrypt$1"\nsite = 3\n')


@pytest.mark.parametrize(
    ("method", "route", "access"),
    [
        ("GET", "/healthz", Access.OPEN),
        ("GET", "/metrics", Access.OPEN),
        ("GET", "/openapi.json", Access.OPEN),
        ("GET", "/ui/{name}", Access.OPEN),
        ("POST", "/login", Access.OPEN),
        ("POST", "/calls", Access.CALLER_START),
        ("GET", "/calls/{call_id}", Access.CALL_PARTY),
        ("POST", "/calls/{call_id}/hangup", Access.CALL_PARTY),
        ("POST", "/agents/{agent_id}/state", Access.OWN_AGENT),
        ("GET", "/agents/{agent_id}/events", Access.OWN_AGENT),
        ("GET", "/registry", Access.STAFF_READ),
        ("GET", "/records/{call_id}", Access.STAFF_READ),
        ("POST", "/debug/faults", Access.ADMIN),
        ("POST", "/something/new", Access.ADMIN),
    ],
)
def test_route_table(method: str, route: str, access: Access) -> None:
    assert access_for(method, route) is access


def test_roles() -> None:
    ann = Claims("ann", Role.AGENT, 1)
    sue = Claims("sue", Role.SUPERVISOR, 1)
    root = Claims("root", Role.ADMIN, 1)
    caller = Claims("caller:c-1", Role.CALLER, 1, "c-1")
    decide(Access.OWN_AGENT, "POST", ann, {"agent_id": "ann"})
    with pytest.raises(Forbidden):
        decide(Access.OWN_AGENT, "POST", ann, {"agent_id": "bob"})
    decide(Access.OWN_AGENT, "GET", sue, {"agent_id": "bob"})
    with pytest.raises(Forbidden):
        decide(Access.OWN_AGENT, "POST", sue, {"agent_id": "bob"})
    decide(Access.ADMIN, "POST", root, {})
    with pytest.raises(Forbidden):
        decide(Access.ADMIN, "GET", sue, {})
    decide(Access.CALL_PARTY, "POST", caller, {"call_id": "c-1"})
    with pytest.raises(Forbidden):
        decide(Access.CALL_PARTY, "POST", caller, {"call_id": "c-2"})
    with pytest.raises(Forbidden):
        decide(Access.STAFF_READ, "GET", ann, {})
    with pytest.raises(AuthError):
        decide(Access.STAFF_READ, "GET", None, {})


def test_rate_limit_is_a_token_bucket_per_address() -> None:
    now = [0.0]
    limit = RateLimit(1.0, 3, max_clients=2, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b")
    now[0] = 1.0
    assert limit.allow("a")
    assert not limit.allow("a")


def test_config_needs_the_site_keys_with_a_users_file() -> None:
    base = {"node_id": "n1", "site": "s", "etcd_endpoints": ["http://127.0.0.1:1"]}
    with pytest.raises(ConfigError, match=r"^site_key: users_file is set"):
        NodeConfig.from_mapping({**base, "users_file": "users.toml"})
    with pytest.raises(ConfigError, match=r"^site_keys_file: users_file is set"):
        NodeConfig.from_mapping({**base, "users_file": "users.toml", "site_key": "s.key"})
    keys = {"site_key": "s.key", "site_keys_file": "site-keys.toml"}
    config = NodeConfig.from_mapping({**base, "users_file": "users.toml", **keys})
    assert config.users_file == "users.toml"
    with pytest.raises(ConfigError, match="unknown config keys: auth_secret"):
        NodeConfig.from_mapping({**base, "auth_secret": "x" * 16})


# -- the middleware in front of a real app ---------------------------------------------------------


class FakeSessions:
    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}

    async def login(self, agent_id: str, profile: Profile) -> AgentRecord:
        self.profiles[agent_id] = profile
        return AgentRecord(
            agent_id, "n1", "s", Trust.INHOUSE, profile.tier, profile.skills,
            AgentState.AVAILABLE, "", 0, profile.capacity, 0, 1, 1,
        )  # fmt: skip


class Ready:
    def reasons_not_ready(self) -> list[str]:
        return []


@pytest.fixture
def auth(tmp_path: Path) -> Auth:
    users = {
        "root": User("root", Role.ADMIN, hash_password("rootpw", n=FAST_N)),
        "sue": User("sue", Role.SUPERVISOR, hash_password("suepw", n=FAST_N)),
        "ann": User("ann", Role.AGENT, hash_password("annpw", n=FAST_N), Profile(2, (("x", 7),))),
        "bob": User("bob", Role.AGENT, hash_password("bobpw", n=FAST_N)),
    }
    return Auth(users, KEYS, caller_limit=RateLimit(0.001, 2), login_limit=RateLimit(100, 100))


@pytest.fixture
async def served(auth: Auth) -> AsyncIterator[tuple[str, aiohttp.ClientSession, FakeSessions]]:
    sessions = FakeSessions()
    app = make_app(Registry("n1"), cast(Any, sessions), Ready(), auth=auth)

    async def start_call(request: web.Request) -> web.Response:  # stands in for calls_api
        return web.json_response({"call_id": "c-1", **caller_token(request, "c-1")}, status=201)

    async def show_call(request: web.Request) -> web.Response:
        return web.json_response({"call_id": request.match_info["call_id"]})

    app.router.add_post("/calls", start_call)
    app.router.add_get("/calls/{call_id}", show_call)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield f"http://127.0.0.1:{server.port}", http, sessions
    await server.close()


async def _login(http: aiohttp.ClientSession, base: str, user: str, password: str) -> Any:
    async with http.post(f"{base}/login", json={"user": user, "password": password}) as r:
        return r.status, await r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_then_roles_over_http(
    served: tuple[str, aiohttp.ClientSession, FakeSessions],
) -> None:
    base, http, sessions = served
    status, body = await _login(http, base, "ann", "wrong")
    assert (status, body["error"]) == (401, "login_failed")
    status, body = await _login(http, base, "nobody", "x")
    assert (status, body["error"]) == (401, "login_failed")
    status, ann = await _login(http, base, "ann", "annpw")
    assert status == 200
    assert ann["role"] == "agent"
    assert ann["user"] == "ann"

    async with http.post(f"{base}/agents/ann/login") as r:
        assert (r.status, (await r.json())["error"]) == (401, "unauthorized")
    # the agent logs in without a body: the users file's profile applies
    async with http.post(f"{base}/agents/ann/login", headers=bearer(ann["token"])) as r:
        assert r.status == 200, await r.text()
    assert sessions.profiles["ann"] == Profile(2, (("x", 7),))
    # ... and cannot raise its own skills through the body
    body = {"skills": {"x": 10}, "tier": 2}
    async with http.post(f"{base}/agents/ann/login", json=body, headers=bearer(ann["token"])):
        assert sessions.profiles["ann"] == Profile(2, (("x", 7),))
    async with http.post(f"{base}/agents/bob/login", headers=bearer(ann["token"])) as r:
        assert (r.status, (await r.json())["error"]) == (403, "forbidden")
    async with http.get(f"{base}/registry", headers=bearer(ann["token"])) as r:
        assert r.status == 403

    _, sue = await _login(http, base, "sue", "suepw")
    async with http.get(f"{base}/registry", headers=bearer(sue["token"])) as r:
        assert r.status == 200
    async with http.post(f"{base}/agents/bob/logout", headers=bearer(sue["token"])) as r:
        assert r.status == 403
    _, root = await _login(http, base, "root", "rootpw")
    async with http.post(
        f"{base}/agents/bob/login", json={"skills": {"y": 3}}, headers=bearer(root["token"])
    ) as r:
        assert r.status == 200
    assert sessions.profiles["bob"].skills == (("y", 3),)
    # websockets carry the token in the query
    async with http.get(f"{base}/registry", params={"token": sue["token"]}) as r:
        assert r.status == 200
    async with http.get(f"{base}/healthz", headers=bearer("stale.token.x")) as r:
        assert r.status == 200


async def test_expired_and_forged_tokens_are_refused(
    served: tuple[str, aiohttp.ClientSession, FakeSessions], auth: Auth
) -> None:
    base, http, _ = served
    expired = auth.signer.issue(Claims("root", Role.ADMIN, 1, audience=HOUSE))
    async with http.get(f"{base}/registry", headers=bearer(expired)) as r:
        assert (r.status, (await r.json())["error"]) == (401, "token_expired")
    foreign = TokenSigner(SiteKeys("site-a", FOREIGN["site-a"], FOREIGN_RING))
    forged = foreign.issue(Claims("root", Role.ADMIN, 2**50, audience=HOUSE))
    async with http.get(f"{base}/registry", headers=bearer(forged)) as r:
        assert (r.status, (await r.json())["error"]) == (401, "unauthorized")
    partner = TokenSigner(SiteKeys("partner-c", PRIVATE["partner-c"], RING))
    beyond = partner.issue(Claims("root", Role.ADMIN, 2**50, audience=HOUSE))
    async with http.get(f"{base}/registry", headers=bearer(beyond)) as r:
        body = await r.json()
        assert (r.status, body["error"]) == (403, "out_of_scope"), body
        assert "partner site partner-c may not issue admin tokens" in body["message"]


async def test_callers_are_rate_limited_and_get_a_token_for_their_call_only(
    served: tuple[str, aiohttp.ClientSession, FakeSessions], auth: Auth
) -> None:
    base, http, _ = served
    replies = []
    for _ in range(3):
        async with http.post(f"{base}/calls", json={}) as r:
            replies.append((r.status, await r.json()))
    assert [status for status, _ in replies] == [201, 201, 429]
    assert replies[2][1]["error"] == "rate_limited"
    token = replies[0][1]["caller_token"]
    async with http.get(f"{base}/calls/c-1", headers=bearer(token)) as r:
        assert r.status == 200
    async with http.get(f"{base}/calls/c-2", headers=bearer(token)) as r:
        assert r.status == 403
    async with http.get(f"{base}/calls/c-1") as r:
        assert r.status == 401
    admin = auth.token_for("root", Role.ADMIN)
    async with http.post(f"{base}/calls", json={}, headers=bearer(admin)) as r:
        assert r.status == 201  # staff (a load generator, a trunk) is not rate-limited


async def test_oversized_body_is_refused(
    served: tuple[str, aiohttp.ClientSession, FakeSessions],
) -> None:
    base, http, _ = served
    async with http.post(f"{base}/login", data=b"x" * (65 * 1024)) as r:
        assert r.status == 413


def test_login_attempts_are_rate_limited_per_address() -> None:
    users = {"root": User("root", Role.ADMIN, hash_password("pw", n=FAST_N))}
    auth = Auth(users, KEYS, login_limit=RateLimit(0.001, 2))
    auth.admit_login("10.0.0.1")
    auth.admit_login("10.0.0.1")
    with pytest.raises(RateLimited):
        auth.admit_login("10.0.0.1")
    auth.admit_login("10.0.0.2")
    assert auth.login("root", "pw").claims.role is Role.ADMIN


def test_cli_hashes_a_password_for_the_users_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from node.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    with pytest.raises(SystemExit) as done:
        main(["hash-password", "--stdin"])
    assert done.value.code == 0
    stored = capsys.readouterr().out.strip()
    assert verify_password("correct horse", stored)


def test_agent_profiles_are_checked_when_the_users_file_is_read() -> None:
    stored = hash_password("x", n=FAST_N)
    for bad in ("skills = { sales = 11 }", "tier = 0", "capacity = 999", 'skills = { "" = 3 }'):
        with pytest.raises(UsersFileError, match="user ann"):
            users_from_toml(f'[users.ann]\nrole = "agent"\npassword = "{stored}"\n{bad}\n')
