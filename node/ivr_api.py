"""HTTP routes of the IVR: DTMF from the caller's keypad and the agent's, voicemails, prompts.

Handlers parse, call one service method and render; errors carry codes (node/http_api.py).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from node.agentdesk import AgentDesk
from node.cdr import CallRecords
from node.exchange import AgentAction
from node.http_api import BadRequest, _body, agent_id_from
from node.ivr import Ivr
from node.prompts import catalogue


def add_ivr_routes(
    app: web.Application, ivr: Ivr, desk: AgentDesk, records: CallRecords, prompts: Path
) -> None:
    async def caller_digits(request: web.Request) -> web.Response:
        call = ivr.digits(request.match_info["call_id"], await _digits(request))
        return web.json_response({"call_id": call.call_id, "state": call.state.value})

    async def agent_digits(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        digits = await _digits(request)
        verdict = await desk.act(
            agent, request.match_info["call_id"], AgentAction.DIGITS, notes=digits
        )
        status = 200 if verdict.accepted else 409
        return web.json_response(
            {"accepted": verdict.accepted, "reason": verdict.reason}, status=status
        )

    async def voicemails(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        return web.json_response({"voicemails": records.voicemails(max(1, min(limit, 10_000)))})

    async def list_prompts(request: web.Request) -> web.Response:
        return web.json_response({"prompts": catalogue(prompts)})

    app.router.add_post("/calls/{call_id}/digits", caller_digits)
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/digits", agent_digits)
    app.router.add_get("/voicemails", voicemails)
    app.router.add_get("/prompts", list_prompts)


async def _digits(request: web.Request) -> str:
    digits = (await _body(request)).get("digits")
    if not isinstance(digits, str):
        raise BadRequest('digits must be a string of 0-9 * # A-D, e.g. {"digits": "12#"}')
    return digits
