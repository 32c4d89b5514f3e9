"""HTTP routes for media: an agent page's peer connection, hold; and the caller's offer that
POST /calls may carry (`arrive_with_media`, called by node/calls_api.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from media.offer import check_offer
from node.agentdesk import AgentDesk, OfferError
from node.callstate import Call
from node.http_api import BadRequest, _body, agent_id_from
from node.mediaplane import MediaPlane

SDP_EXAMPLE = '{"sdp": "v=0\\r\\n..."} (a WebRTC offer with audio)'


async def arrive_with_media(
    plane: MediaPlane | None,
    sdp: object,
    arrive: Callable[[], Awaitable[Call]],
    admit: Callable[[], None] = lambda: None,
) -> tuple[Call, dict[str, Any]]:
    """The call, and what its 201 reply adds: the node's SDP answer when the caller sent an
    offer; nothing for a signalling-only call. `admit()` raises when the node takes no new media
    calls now (admission control)."""
    if sdp is None:
        return await arrive(), {}
    if not isinstance(sdp, str):
        raise BadRequest(f"sdp must be a string: {SDP_EXAMPLE}")
    if plane is None:
        raise BadRequest("this node carries no media: place the call without sdp")
    check_offer(sdp)  # a bad offer is the caller's error (400), whatever the node's load
    admit()
    call, answer = await plane.call_in(sdp, arrive)
    return call, {"sdp": answer, "type": "answer"}


def add_media_routes(app: web.Application, plane: MediaPlane, desk: AgentDesk) -> None:
    async def agent_media(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        desk.offer_list(agent)  # refuses an agent whose session is not held here
        sdp = (await _body(request)).get("sdp")
        if not isinstance(sdp, str):
            raise BadRequest(f"sdp must be a string: {SDP_EXAMPLE}")
        return web.json_response({"sdp": await plane.agent_in(agent, sdp), "type": "answer"})

    async def hold(request: web.Request) -> web.Response:
        agent, call_id = agent_id_from(request), request.match_info["call_id"]
        on = (await _body(request)).get("hold")
        if not isinstance(on, bool):
            raise BadRequest('hold must be true or false, e.g. {"hold": true}')
        if not any(o.call.call_id == call_id and o.answered for o in desk.offer_list(agent)):
            raise OfferError(f"agent {agent} is not talking on call {call_id}")
        plane.hold(call_id, agent, on)
        return web.json_response({"call_id": call_id, "hold": on})

    async def agent_media_stats(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        desk.offer_list(agent)
        return web.json_response(plane.agent_media(agent))

    async def call_media(request: web.Request) -> web.Response:
        return web.json_response(plane.call_media(request.match_info["call_id"]))

    app.router.add_post("/agents/{agent_id}/media", agent_media)
    app.router.add_get("/agents/{agent_id}/media", agent_media_stats)
    app.router.add_get("/calls/{call_id}/media", call_media)
    app.router.add_post("/agents/{agent_id}/calls/{call_id}/hold", hold)
