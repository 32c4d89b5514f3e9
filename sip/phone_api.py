"""HTTP: an agent registers (or removes) the external phone its calls go to."""

from __future__ import annotations

from aiohttp import web

from node.agentdesk import AgentDesk
from node.http_api import BadRequest, _body, agent_id_from
from sip.phonebook import PhoneBook
from sip.phones import Phones


def add_phone_routes(
    app: web.Application, phones: Phones | None, desk: AgentDesk, book: PhoneBook | None = None
) -> None:
    async def phone(request: web.Request) -> web.Response:
        agent = agent_id_from(request)
        desk.offer_list(agent)  # refuses an agent whose session is not held here
        if phones is None:
            raise BadRequest("this node places no calls to phones: set sip_outbound")
        number = (await _body(request)).get("number")
        if not isinstance(number, str):
            raise BadRequest('number must be a string, e.g. {"number": "+4930123456"}')
        phones.register(agent, number)  # checks the number
        if book is not None:
            await book.save(agent, number)  # kept across restarts
        return web.json_response({"agent_id": agent, "number": number})

    app.router.add_post("/agents/{agent_id}/phone", phone)
