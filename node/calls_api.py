"""HTTP routes for calls (callers, agents, records), signalling only: media comes with WebRTC.

Handlers parse, call one service method and render; errors carry codes that node/http_api.py
maps to statuses.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from node.agentdesk import AgentDesk, offer_json
from node.callstate import Call
from node.cdr import COLUMNS, CallRecords
from node.events import EventHub
from node.exchange import AgentAction
from node.http_api import (
    MAX_WS_MESSAGE,
    BadRequest,
    _body,
    agent_id_from,
    agent_json,
    caller_token,
)
from node.media_api import arrive_with_media
from node.mediaplane import MediaPlane
from node.switchboard import Switchboard
from registry.registry import Registry

MAX_CALLER = 128
MAX_NOTES = 2000
MAX_DISPOSITION = 100


def call_json(
    call: Call, position: int = 0, estimated_wait_s: float | None = None
) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "owner_node": call.owner_node,
        "queue": call.queue,
        "caller": call.caller,
        "state": call.state.value,
        "arrived_ms": call.arrived_ms,
        "agent_id": call.agent_id,
        "agent_node": call.agent_node,
        "outcome": None if call.outcome is None else call.outcome.value,
        "reason": call.reason,
        "notes": call.notes,
        "escalations": call.escalations,
        "position": position,
        "estimated_wait_s": estimated_wait_s,  # None until the queue's pace is known here
        "entry": call.entry,
        "ivr_ms": call.ivr_ms,
    }


def add_call_routes(
    app: web.Application,
    board: Switchboard,
    desk: AgentDesk,
    records: CallRecords,
    registry: Registry,
    hub: EventHub,
    media: MediaPlane | None = None,
    estimate: Callable[[Call], float | None] = lambda call: None,
    admit: Callable[[], None] = lambda: None,
) -> None:
    async def start(request: web.Request) -> web.Response:
        body = await _body(request)
        queue, caller = body.get("queue", ""), body.get("caller", "anonymous")
        entry = body.get("entry", "")
        if not isinstance(queue, str) or not isinstance(caller, str) or not isinstance(entry, str):
            raise BadRequest('queue, entry and caller must be strings, e.g. {"queue": "sales"}')
        if bool(queue) == bool(entry):
            raise BadRequest(
                'name a queue or an entry point (one of them), e.g. {"queue": "sales"} or '
                '{"entry": "main"}'
            )
        if len(caller) > MAX_CALLER:
            raise BadRequest(f"caller must be at most {MAX_CALLER} characters")
        call, extra = await arrive_with_media(
            media, body.get("sdp"), lambda: board.arrive(queue, caller, entry=entry), admit
        )
        reply = {**call_json(call, board.position(call)), **extra}
        return web.json_response({**reply, **caller_token(request, call.call_id)}, status=201)

    async def show(request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        live = board.calls.get(call_id)
        if live is not None:
            shown = call_json(live, board.position(live), estimate(live))
            return web.json_response({**shown, "events": records.events(call_id)})
        row = records.call(call_id)
        if row is None:
            board.get(call_id)  # raises call_not_found
        return web.json_response({**(row or {}), "events": records.events(call_id)})

    async def hangup(request: web.Request) -> web.Response:
        return web.json_response(
            call_json(await board.hangup_caller(request.match_info["call_id"]))
        )

    async def list_records(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        rows = records.calls(max(1, min(limit, 10_000)))
        if request.query.get("format", "json") == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            return web.Response(text=out.getvalue(), content_type="text/csv")
        return web.json_response({"calls": rows})

    async def billing(request: web.Request) -> web.Response:
        return web.json_response({"billing": records.billing()})

    async def one_record(request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        row = records.call(call_id)
        if row is None:
            board.get(call_id)
        legs = [dataclasses.asdict(leg) for leg in records.legs(call_id)]
        events = records.events(call_id)
        return web.json_response({"call": row, "legs": legs, "events": events})

    async def offers(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        return web.json_response({"offers": [offer_json(o) for o in desk.offer_list(agent)]})

    def action(kind: AgentAction) -> Any:
        async def handler(request: web.Request) -> web.Response:
            agent = agent_id_from(request)
            verdict = await desk.act(agent, request.match_info["call_id"], kind)
            status = 200 if verdict.accepted else 409
            return web.json_response(
                {"accepted": verdict.accepted, "reason": verdict.reason}, status=status
            )

        return handler

    async def escalate(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        body = await _body(request)
        queue, notes, mode = body.get("queue"), body.get("notes", ""), body.get("mode", "cold")
        if mode not in ("cold", "warm"):
            raise BadRequest('mode must be "cold" (hand over to the queue) or "warm" (consult)')
        if not isinstance(queue, str) or not isinstance(notes, str) or len(notes) > MAX_NOTES:
            raise BadRequest(
                f"queue must be a string and notes a string of at most {MAX_NOTES} characters, "
                f'e.g. {{"queue": "escalations", "notes": "wants a refund"}}'
            )
        kind = AgentAction.ESCALATE if mode == "cold" else AgentAction.CONSULT
        verdict = await desk.act(
            agent, request.match_info["call_id"], kind, queue=queue, notes=notes
        )
        status = 200 if verdict.accepted else 409
        return web.json_response(
            {"accepted": verdict.accepted, "reason": verdict.reason}, status=status
        )

    async def wrap_up_done(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        body = await _body(request)
        disposition, notes = body.get("disposition", ""), body.get("notes", "")
        if not isinstance(disposition, str) or not isinstance(notes, str):
            raise BadRequest('disposition and notes must be strings, e.g. {"disposition": "x"}')
        if len(disposition) > MAX_DISPOSITION or len(notes) > MAX_NOTES:
            raise BadRequest(
                f"disposition must be at most {MAX_DISPOSITION} characters, notes {MAX_NOTES}"
            )
        text = f"{disposition}: {notes}" if disposition and notes else disposition or notes
        verdict = await desk.finish_wrap_up(agent, text)
        reply: dict[str, Any] = {"state": "available", "disposition_saved": verdict.accepted}
        if not verdict.accepted:
            reply["reason"] = verdict.reason
        return web.json_response(reply)

    async def events(request: web.Request) -> web.StreamResponse:
        agent = agent_id_from(request)
        offers = desk.offer_list(agent)  # refuses an agent whose session is not held here
        record = registry.agent(agent)
        socket = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_WS_MESSAGE)
        await socket.prepare(request)
        with hub.subscribe(agent) as queue:
            hello = {
                "type": "hello",
                "agent": agent_json(record) if record is not None else None,
                "offers": [offer_json(o) for o in offers],
            }
            await socket.send_json(hello)
            reader = asyncio.ensure_future(socket.receive())
            try:
                while not socket.closed:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getter, reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader in done:  # the page closed (or sent something: ignored)
                        getter.cancel()
                        break
                    await socket.send_json(getter.result())
            finally:
                reader.cancel()
        await socket.close()
        return socket

    async def supervisor(request: web.Request) -> web.Response:
        now = time.time_ns() // 1_000_000
        sites: dict[str, dict[str, Any]] = {}
        for agent in registry.agents():
            site = sites.setdefault(agent.site, {"agents": {}, "queues": []})
            state = agent.state.name.lower().replace("_", "-")
            site["agents"][state] = site["agents"].get(state, 0) + 1
        for node in registry.nodes():
            sites.setdefault(node.site, {"agents": {}, "queues": []})
        site_of = {n.node_id: n.site for n in registry.nodes()}
        for summary in sorted(registry.queues(), key=lambda q: q.key):
            site = sites.setdefault(site_of.get(summary.node, "?"), {"agents": {}, "queues": []})
            site["queues"].append(
                {
                    "queue": summary.queue,
                    "node": summary.node,
                    "waiting": summary.waiting,
                    "oldest_wait_s": round((now - summary.oldest_since_ms) / 1000, 1)
                    if summary.waiting
                    else 0.0,
                }
            )
        return web.json_response({"sites": sites})

    app.router.add_get("/agents/{agent_id}/events", events)
    app.router.add_get("/supervisor", supervisor)
    app.router.add_post("/calls", start)
    app.router.add_get("/calls/{call_id}", show)
    app.router.add_post("/calls/{call_id}/hangup", hangup)
    app.router.add_get("/records", list_records)
    app.router.add_get("/records/billing", billing)
    app.router.add_get("/records/{call_id}", one_record)
    app.router.add_get("/agents/{agent_id}/offers", offers)
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/answer", action(AgentAction.ANSWER))
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/reject", action(AgentAction.REJECT))
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/hangup", action(AgentAction.HANGUP))
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/escalate", escalate)
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/handover", action(AgentAction.HANDOVER))
    app.router.add_post("/agents/{agent_id}/wrap-up/done", wrap_up_done)
