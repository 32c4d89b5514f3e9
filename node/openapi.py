"""The node's HTTP API described as OpenAPI 3.1, served at GET /openapi.json.

A test checks that every route the node serves is described here and nothing else is, so the
document stays true as routes come and go.
"""

from __future__ import annotations

from typing import Any

from node.auth import Access, access_for

ERROR = {"$ref": "#/components/schemas/Error"}
OBJECT = {"type": "object"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    *,
    body: dict[str, Any] | None = None,
    ok: int = 200,
    errors: tuple[int, ...] = (400, 404, 409, 503),
    tag: str = "",
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(ok): {"description": "done", **_json(OBJECT)}}
    for code in errors:
        responses[str(code)] = {"description": "error (see the code)", **_json(ERROR)}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if tag:
        operation["tags"] = [tag]
    if body is not None:
        operation["requestBody"] = {"required": False, **_json(body)}
    return operation


AGENT = {"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}
SDP = {"type": "string", "maxLength": 20000}
BOOL = {"type": "boolean"}
USER = {"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}
CALL = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
DIGITS_BODY = {
    "type": "object",
    "required": ["digits"],
    "properties": {"digits": {"type": "string", "pattern": "^[0-9*#A-D]{1,32}$"}},
}

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": _op("Liveness", errors=(), tag="operations")},
    "/readyz": {
        "get": _op("Readiness: lease held, synced, not draining", errors=(503,), tag="operations")
    },
    "/metrics": {"get": _op("Prometheus metrics (text format)", errors=(), tag="operations")},
    "/registry": {
        "get": _op(
            "The node's registry replica: agents, queues, nodes; and the nodes its offers "
            "could not reach lately (unreachable_nodes)",
            errors=(),
            tag="operations",
        )
    },
    "/openapi.json": {"get": _op("This document", errors=(), tag="operations")},
    "/login": {
        "post": _op(
            "Log in with user and password: a token for Authorization: Bearer TOKEN, which counts "
            "at the sites of its audience only (by default an in-house site's tokens at the "
            "in-house sites; ask for others with audience: [SITE, ...])",
            body={
                "type": "object",
                "required": ["user", "password"],
                "properties": {
                    "user": {"type": "string", "maxLength": 64},
                    "password": {"type": "string", "maxLength": 1024},
                    "audience": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 64},
                        "minItems": 1,
                        "maxItems": 32,
                    },
                },
            },
            errors=(400, 401, 404, 429),
            tag="authentication",
        )
    },
    "/debug/faults": {
        "post": _op(
            "Cut links to other nodes, skew the registry clock (only with fault_injection)",
            body={
                "type": "object",
                "properties": {
                    "block": {"type": "array", "items": {"type": "string"}},
                    "clock_offset_ms": {"type": "integer"},
                },
            },
            errors=(400,),
            tag="operations",
        )
    },
    "/agents/{agent_id}/login": {
        "post": _op(
            "Log an agent in at this node (its home)",
            body={
                "type": "object",
                "properties": {
                    "skills": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 10},
                    },
                    "tier": {"type": "integer", "minimum": 1, "maximum": 9},
                    "capacity": {"type": "integer", "minimum": 1, "maximum": 64},
                },
            },
            tag="agents",
        )
    },
    "/agents/{agent_id}/state": {
        "post": _op(
            "Set available or not-ready (with a reason)",
            body={
                "type": "object",
                "required": ["state"],
                "properties": {
                    "state": {"enum": ["available", "not-ready"]},
                    "reason": {"type": "string"},
                },
            },
            tag="agents",
        )
    },
    "/agents/{agent_id}/logout": {"post": _op("Log out", tag="agents")},
    "/agents/{agent_id}/offers": {"get": _op("Offers and calls of the agent", tag="agents")},
    "/agents/{agent_id}/events": {
        "get": _op("Websocket: hello, then offer, released and state events", tag="agents")
    },
    "/agents/{agent_id}/calls/{call_id}/answer": {"post": _op("Answer an offer", tag="agents")},
    "/agents/{agent_id}/calls/{call_id}/reject": {"post": _op("Reject an offer", tag="agents")},
    "/agents/{agent_id}/calls/{call_id}/hangup": {"post": _op("Hang up", tag="agents")},
    "/agents/{agent_id}/calls/{call_id}/escalate": {
        "post": _op(
            "Escalate with notes: cold hands the call to the queue; warm consults an agent of it",
            body={
                "type": "object",
                "required": ["queue"],
                "properties": {
                    "queue": {"type": "string"},
                    "notes": {"type": "string", "maxLength": 2000},
                    "mode": {"enum": ["cold", "warm"]},
                },
            },
            tag="agents",
        )
    },
    "/agents/{agent_id}/calls/{call_id}/handover": {
        "post": _op(
            "Warm escalation: leave the call to the consulted agent, who has answered", tag="agents"
        )
    },
    "/agents/{agent_id}/wrap-up/done": {
        "post": _op(
            "End wrap-up; a disposition (and notes) go onto the agent's leg of the call in the "
            "call records; disposition_saved says whether they were stored",
            body={
                "type": "object",
                "properties": {
                    "disposition": {"type": "string", "maxLength": 100},
                    "notes": {"type": "string", "maxLength": 2000},
                },
            },
            tag="agents",
        )
    },
    "/agents/{agent_id}/media": {
        "get": _op("The agent's media leg: packets, loss, jitter, round trip", tag="agents"),
        "post": _op(
            "The agent page's peer connection: an SDP offer in, the answer out; kept up between "
            "calls, a new offer replaces it",
            body={"type": "object", "required": ["sdp"], "properties": {"sdp": SDP}},
            tag="agents",
        ),
    },
    "/agents/{agent_id}/phone": {
        "post": _op(
            "The agent's external phone: its offers are called out through the SIP trunk and the "
            'audio is on the phone ("" removes it); the agent still answers and acts here',
            body={
                "type": "object",
                "required": ["number"],
                "properties": {"number": {"type": "string", "pattern": "^[+0-9*#]{0,32}$"}},
            },
            tag="agents",
        )
    },
    "/agents/{agent_id}/calls/{call_id}/hold": {
        "post": _op(
            "Hold (music on hold to the caller, no audio either way) or resume",
            body={"type": "object", "required": ["hold"], "properties": {"hold": BOOL}},
            tag="agents",
        )
    },
    "/calls": {
        "post": _op(
            "A caller arrives in a queue, or at an entry point whose hook runs the IVR; with "
            "sdp (a WebRTC audio offer) the reply carries the answer",
            body={
                "type": "object",
                "properties": {
                    "queue": {"type": "string"},
                    "entry": {"type": "string", "description": "instead of queue"},
                    "caller": {"type": "string", "maxLength": 128},
                    "sdp": {"type": "string", "maxLength": 20000},
                },
            },
            ok=201,
            tag="callers",
        )
    },
    "/calls/{call_id}": {
        "get": _op("A call: state, position, estimated wait, agent", tag="callers")
    },
    "/calls/{call_id}/hangup": {"post": _op("The caller hangs up", tag="callers")},
    "/calls/{call_id}/media": {
        "get": _op(
            "The call's media legs on this node: packets, loss, jitter, round trip; recording",
            tag="callers",
        )
    },
    "/calls/{call_id}/digits": {
        "post": _op(
            "DTMF from the caller's keypad, for the entry point's IVR",
            body=DIGITS_BODY,
            tag="callers",
        )
    },
    "/agents/{agent_id}/calls/{call_id}/digits": {
        "post": _op(
            "DTMF from the agent's keypad: a digits event for the call's hook",
            body=DIGITS_BODY,
            tag="agents",
        )
    },
    "/voicemails": {
        "get": _op("Messages callers left (queue overflow or hook)", errors=(), tag="supervisors")
    },
    "/prompts": {
        "get": _op("The prompts a hook may play: name, text, seconds", errors=(), tag="callers")
    },
    "/records": {"get": _op("Call records (JSON, or ?format=csv)", tag="supervisors")},
    "/records/{call_id}": {"get": _op("One call record with its legs", tag="supervisors")},
    "/records/billing": {
        "get": _op(
            "Consultation and talk time per customer and per service (queue)",
            errors=(),
            tag="supervisors",
        )
    },
    "/supervisor": {
        "get": _op("Agents by state and waiting calls, per site", errors=(), tag="supervisors")
    },
    # last: schemathesis walks the paths in order, and these revoke the token it uses
    "/logout": {
        "post": _op(
            "Revoke the token this request carries, at every node of every site",
            errors=(401, 404),
            tag="authentication",
        )
    },
    "/users/{user}/revoke": {
        "post": _op(
            "Revoke every token of a user issued until now, at every node of every site",
            errors=(400, 404),
            tag="authentication",
        )
    },
}


def _secured(path: str, method: str, op: dict[str, Any]) -> dict[str, Any]:
    """The operation with who may call it (node/auth.py's table) and its 401/403/429 answers."""
    access = access_for(method.upper(), path)
    responses = dict(op["responses"])
    error = {"description": "error (see the code)", **_json(ERROR)}
    if access is Access.OPEN:
        return {**op, "security": []}
    if access is Access.CALLER_START:
        responses["401"] = responses["403"] = responses["429"] = error  # 403: out of scope
        return {**op, "responses": responses, "security": [{}, {"bearer": []}]}
    responses["401"] = responses["403"] = error
    return {
        **op,
        "responses": responses,
        "security": [{"bearer": []}, {"token_query": []}],
        "description": f"access: {access.value} ({access.__doc__ or ''})".strip(),
    }


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, operations in PATHS.items():
        named = ((AGENT, "{agent_id}"), (CALL, "{call_id}"), (USER, "{user}"))
        parameters = [p for p, name in named if name in path]
        paths[path] = {
            method: _secured(path, method, {**op, "parameters": parameters} if parameters else op)
            for method, op in operations.items()
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callmesh node",
            "version": "0.1.0",
            "description": (
                "One node's HTTP API: agents, callers, supervisors, operations. The browser "
                "pages that use it are served under /ui/ (and / redirects there); they are "
                "static files, not part of this API."
            ),
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from POST /login, or a call's caller_token",
                },
                "token_query": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "the same token, for websockets (browsers send no headers)",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "a stable code"},
                        "message": {"type": "string"},
                    },
                }
            },
        },
    }
