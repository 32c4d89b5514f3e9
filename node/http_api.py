"""The node's HTTP API (aiohttp): health, readiness, the registry view and agent sessions.

Handlers parse, call one service method and render; errors map to statuses in one table.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from node import metrics, openapi
from node.auth import Auth
from node.revoker import Revoker
from node.sessions import Profile, Sessions
from node.tokens import Claims
from node.users import Role
from registry.errors import InvalidRecord
from registry.records import (
    AgentRecord,
    AgentState,
    NodeInfo,
    QueueSummary,
    check_id,
    skills_from,
)
from registry.registry import Registry

MAX_BODY = 64 * 1024
"""The largest request body any route reads (aiohttp's client_max_size: 413 past it)."""
MAX_WS_MESSAGE = 16 * 1024
"""The largest message a websocket accepts from a client (the connection closes past it)."""

_STATUS = {
    "bad_request": 400,
    "invalid_record": 400,
    "session_error": 409,
    "session_not_here": 404,
    "node_fenced": 503,
    "foreign_write": 409,
    "stale_epoch": 409,
    "etcd_unavailable": 503,
    "call_not_found": 404,
    "queue_not_found": 404,
    "offer_not_found": 404,
    "wrong_state": 409,
    "node_draining": 503,
    "node_overloaded": 503,
    "unauthorized": 401,
    "token_expired": 401,
    "token_revoked": 401,
    "wrong_audience": 401,
    "out_of_scope": 403,
    "login_failed": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "auth_disabled": 404,
    "bad_sdp": 400,
    "no_media": 409,
    "entry_not_found": 404,
    "digits_invalid": 400,
}


class Readiness(Protocol):
    def reasons_not_ready(self) -> list[str]: ...


class Faults(Protocol):
    blocked: frozenset[str]

    @property
    def clock_offset_ms(self) -> int: ...

    def block(self, addresses: Iterable[str]) -> None: ...

    def skew(self, offset_ms: int) -> None: ...


class BadRequest(Exception):
    code = "bad_request"


def agent_json(record: AgentRecord) -> dict[str, Any]:
    return {
        "agent_id": record.agent_id,
        "home_node": record.home_node,
        "site": record.site,
        "trust": record.trust.name.lower(),
        "tier": record.tier,
        "skills": dict(record.skills),
        "state": record.state.name.lower().replace("_", "-"),
        "reason": record.reason,
        "state_since_ms": record.state_since_ms,
        "capacity": record.capacity,
        "active_calls": record.active_calls,
        "epoch": record.epoch,
    }


def node_json(info: NodeInfo) -> dict[str, Any]:
    return {
        "node_id": info.node_id,
        "site": info.site,
        "trust": info.trust.name.lower(),
        "grpc": info.grpc,
        "http": info.http,
        "gateway": info.gateway,
        "up": info.up,
    }


def queue_json(summary: QueueSummary) -> dict[str, Any]:
    return {
        "node": summary.node,
        "queue": summary.queue,
        "waiting": summary.waiting,
        "oldest_since_ms": summary.oldest_since_ms,
        "top_priority": summary.top_priority,
        "required_skills": dict(summary.required_skills),
    }


def _state(name: object) -> AgentState:
    try:
        return AgentState[str(name).upper().replace("-", "_")]
    except KeyError:
        choices = ", ".join(s.name.lower().replace("_", "-") for s in AgentState)
        raise BadRequest(f"state must be one of {choices}, got {name!r:.40}") from None


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _profile(body: dict[str, Any]) -> Profile:
    skills = body.get("skills", {})
    if not isinstance(skills, dict):
        raise BadRequest('skills must be an object of name to level, e.g. {"sales": 3}')
    return Profile(
        tier=_whole(body, "tier"),
        skills=skills_from({str(k): v for k, v in skills.items()}),
        capacity=_whole(body, "capacity"),
    )


def _whole(body: dict[str, Any], name: str, default: int = 1) -> int:
    """A whole number of the body (JSON's 2 or 2.0; not 1.5, "2", true or 1e400)."""
    value = body.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a whole number, got {value!r:.40}")
    return value


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as error:
        code = getattr(error, "code", None)
        if not isinstance(code, str) or code not in _STATUS:
            raise
        return web.json_response({"error": code, "message": str(error)}, status=_STATUS[code])


def agent_id_from(request: web.Request) -> str:
    value = request.match_info["agent_id"]
    try:
        check_id("agent id", value)
    except InvalidRecord as error:
        raise BadRequest(str(error)) from None
    return value


AUTH = web.AppKey("callmesh.auth", Auth)
"""The app's Auth, when authentication is on (node/auth.py)."""
CLAIMS = web.RequestKey("callmesh.claims", Claims)
"""The request's verified token claims, when it carried a token (request.get(CLAIMS))."""


class AuthDisabled(Exception):
    code = "auth_disabled"


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request passes node/auth.py's table: a token from the Authorization header (or
    ?token= for websockets, which browsers open without headers) and the client address."""
    auth = request.app[AUTH]
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    if token is None and "token" in request.query:
        token = request.query["token"]
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else request.path
    claims = auth.authorize(
        request.method, canonical, request.match_info, token, request.remote or "?"
    )
    if claims is not None:
        request[CLAIMS] = claims
    return await handler(request)


def caller_token(request: web.Request, call_id: str) -> dict[str, str]:
    """{"caller_token": ...} for the reply to a new call when authentication is on, else {}."""
    auth = request.app.get(AUTH)
    return {} if auth is None else {"caller_token": auth.caller_token(call_id)}


def make_app(
    registry: Registry,
    sessions: Sessions,
    readiness: Readiness,
    faults: Faults | None = None,
    auth: Auth | None = None,
    unreachable: Callable[[], list[str]] = list,
    revoker: Revoker | None = None,
) -> web.Application:
    """`unreachable()`: the nodes this node's offers could not reach lately (GET /registry)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": registry.node_id})

    async def prometheus(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def readyz(request: web.Request) -> web.Response:
        reasons = readiness.reasons_not_ready()
        return web.json_response(
            {"ready": not reasons, "node": registry.node_id, "reasons": reasons},
            status=503 if reasons else 200,
        )

    async def spec(request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def view(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node": registry.node_id,
                "agents": [agent_json(a) for a in sorted(registry.agents(), key=_by_id)],
                "queues": [queue_json(q) for q in sorted(registry.queues(), key=_by_key)],
                "nodes": [node_json(n) for n in sorted(registry.nodes(), key=_by_node)],
                "unreachable_nodes": unreachable(),
            }
        )

    async def login(request: web.Request) -> web.Response:
        agent, body = agent_id_from(request), await _body(request)
        claims: Claims | None = request.get(CLAIMS)
        known = auth.profile(agent) if auth is not None else None
        if known is not None and (not body or (claims is not None and claims.role is Role.AGENT)):
            profile = known  # an agent logs in with the skills the users file gives it
        else:
            profile = _profile(body)
        record = await sessions.login(agent, profile)
        return web.json_response(agent_json(record))

    async def user_login(request: web.Request) -> web.Response:
        if auth is None:
            raise AuthDisabled("authentication is off on this node (no users_file configured)")
        body = await _body(request)
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise BadRequest('user and password must be strings, e.g. {"user": "ann", ...}')
        audience = auth.audience(body.get("audience"))
        auth.admit_login(request.remote or "?")
        done = await asyncio.to_thread(auth.login, user, password, audience)
        return web.json_response(
            {
                "token": done.token,
                "user": done.claims.user,
                "role": done.claims.role.value,
                "expires_ms": done.claims.expires_ms,
                "audience": done.claims.audience.wire(),
            }
        )

    def need_revoker() -> tuple[Auth, Revoker]:
        if auth is None or revoker is None:
            raise AuthDisabled("authentication is off on this node (no users_file configured)")
        return auth, revoker

    async def user_logout(request: web.Request) -> web.Response:
        auth, revoker = need_revoker()
        claims = request[CLAIMS]
        await revoker.revoked(auth.revoke_token(claims))
        return web.json_response({"revoked": "token", "user": claims.user})

    async def revoke_user(request: web.Request) -> web.Response:
        auth, revoker = need_revoker()
        user = request.match_info["user"]
        try:
            check_id("user", user)
        except InvalidRecord as error:
            raise BadRequest(str(error)) from None
        entry = auth.revoke_user(user)
        await revoker.revoked(entry)
        return web.json_response({"revoked": "user", "user": user, "before_ms": entry.at_ms})

    async def set_state(request: web.Request) -> web.Response:
        body = await _body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise BadRequest("reason must be a string")
        record = sessions.set_state(agent_id_from(request), _state(body.get("state")), reason)
        return web.json_response(agent_json(record))

    async def logout(request: web.Request) -> web.Response:
        return web.json_response(agent_json(await sessions.logout(agent_id_from(request))))

    async def set_faults(request: web.Request) -> web.Response:
        body = await _body(request)
        block, offset = body.get("block"), body.get("clock_offset_ms")
        if block is not None and (
            not isinstance(block, list) or not all(isinstance(a, str) for a in block)
        ):
            raise BadRequest('block must be a list of "host:port" gRPC addresses of other nodes')
        if offset is not None and (
            not isinstance(offset, int) or isinstance(offset, bool) or abs(offset) > 600_000
        ):
            raise BadRequest("clock_offset_ms must be an integer within ±600000")
        assert faults is not None
        if block is not None:
            faults.block(block)
        if offset is not None:
            faults.skew(offset)
        return web.json_response(
            {"blocked": sorted(faults.blocked), "clock_offset_ms": faults.clock_offset_ms}
        )

    middlewares = [_errors] if auth is None else [_errors, _authenticate]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    if auth is not None:
        app[AUTH] = auth
    app.router.add_post("/login", user_login)
    app.router.add_post("/logout", user_logout)
    app.router.add_post("/users/{user}/revoke", revoke_user)
    if faults is not None:
        app.router.add_post("/debug/faults", set_faults)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/registry", view)
    app.router.add_get("/openapi.json", spec)
    app.router.add_post("/agents/{agent_id}/login", login)
    app.router.add_post("/agents/{agent_id}/state", set_state)
    app.router.add_post("/agents/{agent_id}/logout", logout)
    return app


def _by_id(record: AgentRecord) -> str:
    return record.agent_id


def _by_node(info: NodeInfo) -> str:
    return info.node_id


def _by_key(summary: QueueSummary) -> tuple[str, str]:
    return summary.key
