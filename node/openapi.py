"""The node's HTTP API described as OpenAPI 3.1, served at GET /openapi.json.

A test checks that every route the node serves is described here and nothing else is, so the
document stays true as routes come and go.
"""

from __future__ import annotations

from typing import Any

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
CALL = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": _op("Liveness", errors=(), tag="operations")},
    "/readyz": {
        "get": _op("Readiness: lease held, synced, not draining", errors=(503,), tag="operations")
    },
    "/metrics": {"get": _op("Prometheus metrics (text format)", errors=(), tag="operations")},
    "/registry": {
        "get": _op(
            "The node's registry replica: agents, queues, nodes", errors=(), tag="operations"
        )
    },
    "/openapi.json": {"get": _op("This document", errors=(), tag="operations")},
    "/debug/faults": {
        "post": _op(
            "Cut gossip links (only with fault_injection)",
            body={
                "type": "object",
                "properties": {"block": {"type": "array", "items": {"type": "string"}}},
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
    "/agents/{agent_id}/wrap-up/done": {"post": _op("End wrap-up early", tag="agents")},
    "/calls": {
        "post": _op(
            "A caller arrives (signalling only)",
            body={
                "type": "object",
                "required": ["queue"],
                "properties": {
                    "queue": {"type": "string"},
                    "caller": {"type": "string", "maxLength": 128},
                },
            },
            ok=201,
            tag="callers",
        )
    },
    "/calls/{call_id}": {"get": _op("A call: state, position, agent", tag="callers")},
    "/calls/{call_id}/hangup": {"post": _op("The caller hangs up", tag="callers")},
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
}


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, operations in PATHS.items():
        parameters = [p for p, name in ((AGENT, "{agent_id}"), (CALL, "{call_id}")) if name in path]
        paths[path] = {
            method: ({**op, "parameters": parameters} if parameters else op)
            for method, op in operations.items()
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callmesh node",
            "version": "0.1.0",
            "description": "One node's HTTP API: agents, callers, supervisors, operations.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "a stable code"},
                        "message": {"type": "string"},
                    },
                }
            }
        },
    }
