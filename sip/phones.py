"""Agents on external phones: an agent registers a number; each offer to that agent makes its
home node call the number out through the trunk (`sip_outbound`), and the call's audio is on the
phone while the agent controls the call from the web page.

The phone line follows the agent's events as the agent's page does (`EventHub.subscribe`):
an "offer" dials (INVITE with the node's SDP offer, resent until a provisional), a "released"
hangs up (CANCEL while it rings, BYE once answered). The phone answering does not answer the
offer: the agent answers, holds, transfers and hangs up through the API. The phone declining
(a final error) rejects the offer; the phone hanging up (BYE) is the agent hanging up (or
rejecting, before the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from node import metrics
from node.exchange import AgentAction
from node.tasks import Tasks
from sip import sdp
from sip.leg import NoPortFree, RtpLeg, RtpPorts
from sip.message import (
    Malformed,
    Reply,
    Request,
    Response,
    new_branch,
    new_tag,
    render_request,
    render_response,
    tag_of,
    uri_of,
)
from sip.resend import Resender
from sip.transport import Peer

log = logging.getLogger(__name__)

NUMBER_CHARS = frozenset("+0123456789*#")
MAX_NUMBER = 32


class BadNumber(ValueError):
    code = "bad_request"


class Events(Protocol):
    """node/events.py's EventHub: the agent's events, as the agent's page gets them."""

    def subscribe(self, agent_id: str) -> AbstractContextManager[asyncio.Queue[dict[str, Any]]]: ...


class Desk(Protocol):
    """node/agentdesk.py's AgentDesk: the agent's side of a call."""

    async def act(self, agent_id: str, call_id: str, action: AgentAction) -> object: ...


def check_number(number: str) -> str:
    """A dialable number: digits, + * #, at most 32 ("" removes the phone)."""
    if not isinstance(number, str) or len(number) > MAX_NUMBER or set(number) - NUMBER_CHARS:
        raise BadNumber(f"number must be up to {MAX_NUMBER} of + 0-9 * #, got {number!r:.40}")
    return number


@dataclass(slots=True)
class PhoneCall:
    """One call out to an agent's phone, for one offer."""

    agent_id: str
    call_id: str
    number: str
    sip_call_id: str
    uri: str
    leg: RtpLeg
    local_tag: str = field(default_factory=new_tag)
    branch: str = field(default_factory=new_branch)
    cseq: int = 1
    invite: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    remote_tag: str = ""
    target: str = ""  # the phone's Contact
    phase: str = "calling"  # calling, ringing, up, ended
    released: bool = False


class Phones:
    """The phone lines of the agents homed on this node."""

    def __init__(
        self,
        host: str,
        port: int,
        outbound: Peer,
        ports: RtpPorts,
        send: Callable[[bytes, Peer], None],
        events: Events,
        desk: Desk,
    ) -> None:
        self._host = host
        self._port = port
        self._outbound = outbound
        self._ports = ports
        self._send = send
        self._events = events
        self._desk = desk
        self.numbers: dict[str, str] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._calls: dict[str, PhoneCall] = {}  # by SIP Call-ID
        self._by_offer: dict[tuple[str, str], PhoneCall] = {}
        self._resend = Resender()
        self._tasks = Tasks("phones")

    def register(self, agent_id: str, number: str) -> None:
        """The agent's external phone ("" to go back to the web page only)."""
        number = check_number(number)
        watcher = self._watchers.pop(agent_id, None)
        if watcher is not None:
            watcher.cancel()
        self.numbers.pop(agent_id, None)
        if number:
            self.numbers[agent_id] = number
            self._watchers[agent_id] = asyncio.create_task(
                self._watch(agent_id), name=f"phone {agent_id}"
            )
        log.info("agent %s phone %s", agent_id, number or "removed")

    def owns(self, sip_call_id: str) -> bool:
        return sip_call_id in self._calls

    def leg(self, call_id: str, agent_id: str) -> RtpLeg | None:
        phone = self._by_offer.get((agent_id, call_id))
        return phone.leg if phone is not None else None

    async def close(self) -> None:
        for watcher in self._watchers.values():
            watcher.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        self._watchers.clear()
        self._resend.close()
        await self._tasks.close()

    # -- the agent's events ------------------------------------------------------------------------

    async def _watch(self, agent_id: str) -> None:
        with self._events.subscribe(agent_id) as events:
            while True:
                event = await events.get()
                try:
                    if event.get("type") == "offer" and not event["offer"].get("answered"):
                        offer = event["offer"]
                        await self._dial(agent_id, offer["call_id"], str(offer.get("caller", "")))
                    elif event.get("type") == "released":
                        self._hang_up(agent_id, str(event["call_id"]))
                except Exception:  # one call's trouble never stops the agent's line
                    log.exception("agent %s phone: event %s failed", agent_id, event.get("type"))

    async def _dial(self, agent_id: str, call_id: str, caller: str) -> None:
        number = self.numbers.get(agent_id)
        if not number or (agent_id, call_id) in self._by_offer:
            return
        sip_call_id = f"{secrets.token_hex(8)}@{self._host}"
        try:
            leg = await self._ports.open(sip_call_id)
        except NoPortFree as error:
            log.warning("agent %s phone: %s; rejecting call %s", agent_id, error, call_id)
            await self._desk.act(agent_id, call_id, AgentAction.REJECT)
            return
        where = f"{self._outbound.host}:{self._outbound.port}"
        phone = PhoneCall(agent_id, call_id, number, sip_call_id, f"sip:{number}@{where}", leg)
        caller_user = "".join(c for c in caller if c in NUMBER_CHARS) or "callmesh"
        phone.headers = (
            ("from", f"<sip:{caller_user}@{self._host}>;tag={phone.local_tag}"),
            ("to", f"<{phone.uri}>"),
            ("call-id", sip_call_id),
        )
        body = sdp.offer(self._host, leg.local_port, secrets.randbits(31))
        phone.invite = render_request(
            "INVITE",
            phone.uri,
            [
                self._via(phone.branch),
                ("max-forwards", "70"),
                *phone.headers,
                ("cseq", "1 INVITE"),
                ("contact", f"<sip:callmesh@{self._host}:{self._port}>"),
            ],
            body,
        )
        self._calls[sip_call_id] = phone
        self._by_offer[(agent_id, call_id)] = phone
        metrics.SIP_CALLS_ACTIVE.labels("out").set(len(self._by_offer))
        self._send(phone.invite, self._outbound)
        self._resend.start(
            (sip_call_id, "INVITE"), lambda: self._send(phone.invite, self._outbound)
        )
        log.info("agent %s phone: calling %s for call %s", agent_id, number, call_id)

    def _via(self, branch: str) -> tuple[str, str]:
        transport = "TCP" if self._outbound.tcp else "UDP"
        return ("via", f"SIP/2.0/{transport} {self._host}:{self._port};branch={branch};rport")

    def _hang_up(self, agent_id: str, call_id: str) -> None:
        phone = self._by_offer.get((agent_id, call_id))
        if phone is None or phone.released:
            return
        phone.released = True
        if phone.phase in ("calling", "ringing"):
            self._resend.stop((phone.sip_call_id, "INVITE"))
            cancel = render_request(
                "CANCEL",
                phone.uri,
                [
                    self._via(phone.branch),
                    ("max-forwards", "70"),
                    *phone.headers,
                    ("cseq", "1 CANCEL"),
                ],
            )
            self._send(cancel, self._outbound)
            log.info("agent %s phone: cancelled for call %s", agent_id, call_id)
        elif phone.phase == "up":
            self._bye(phone)

    def _bye(self, phone: PhoneCall) -> None:
        phone.cseq += 1
        bye = render_request(
            "BYE",
            phone.target or phone.uri,
            [
                self._via(new_branch()),
                ("max-forwards", "70"),
                phone.headers[0],
                ("to", f"<{phone.uri}>;tag={phone.remote_tag}"),
                phone.headers[2],
                ("cseq", f"{phone.cseq} BYE"),
            ],
        )
        self._send(bye, self._outbound)
        self._resend.start((phone.sip_call_id, "BYE"), lambda: self._send(bye, self._outbound))
        log.info("agent %s phone: hung up for call %s", phone.agent_id, phone.call_id)
        self._end(phone)

    def _end(self, phone: PhoneCall) -> None:
        phone.phase = "ended"
        self._by_offer.pop((phone.agent_id, phone.call_id), None)
        metrics.SIP_CALLS_ACTIVE.labels("out").set(len(self._by_offer))
        self._ports.close(phone.sip_call_id)
        # the Call-ID stays known a while so late responses and retransmissions are absorbed
        asyncio.get_running_loop().call_later(32, self._calls.pop, phone.sip_call_id, None)

    # -- SIP from the phone's side -----------------------------------------------------------------

    def handle(self, message: Request | Response, peer: Peer) -> None:
        phone = self._calls.get(message.call_id)
        if phone is None:
            return
        if isinstance(message, Response):
            self._response(phone, message)
        elif message.method == "BYE":
            self._send(render_response(message.reply_headers(), Reply(200)), peer)
            metrics.sip_request("BYE", 200)
            if phone.phase == "up":
                log.info("agent %s phone: the phone hung up call %s", phone.agent_id, phone.call_id)
                self._end(phone)
                self._tasks.spawn(self._phone_gone(phone), "phone hung up")
        elif message.method != "ACK":
            status = 200 if message.method == "OPTIONS" else 405
            self._send(render_response(message.reply_headers(), Reply(status, new_tag())), peer)
            metrics.sip_request(message.method, status)
        else:
            metrics.sip_request("ACK", None)

    def _response(self, phone: PhoneCall, response: Response) -> None:
        _, method = response.cseq
        if method == "BYE":
            self._resend.stop((phone.sip_call_id, "BYE"))
            return
        if method != "INVITE":
            return
        self._resend.stop((phone.sip_call_id, "INVITE"))
        tag = tag_of(response.header("to") or "")
        if response.status < 200:
            if phone.phase == "calling":
                phone.phase = "ringing"
            return
        if response.status < 300:
            phone.remote_tag = tag
            contact = response.header("contact")
            phone.target = uri_of(contact) if contact else phone.uri
            self._ack(phone, new_branch(), tag)
            if phone.phase == "up":
                return  # a retransmitted 200: ACKed again
            try:
                answer = sdp.parse_offer(response.body)
                phone.leg.configure(
                    answer.codec(), answer.telephone_event, (answer.host, answer.port), False
                )
            except (Malformed, sdp.NotAcceptable) as error:
                log.warning("agent %s phone: unusable answer (%s)", phone.agent_id, error)
            phone.phase = "up"
            log.info("agent %s phone: answered for call %s", phone.agent_id, phone.call_id)
            if phone.released:
                self._bye(phone)  # the offer went while the phone was picked up
            return
        self._ack(phone, phone.branch, tag)  # a final error is ACKed in its transaction
        if phone.phase == "ended":
            return
        self._end(phone)
        if not phone.released:
            log.info(
                "agent %s phone: %d %s; rejecting call %s",
                phone.agent_id,
                response.status,
                response.reason,
                phone.call_id,
            )
            self._tasks.spawn(self._report(phone, AgentAction.REJECT), "phone declined")

    def _ack(self, phone: PhoneCall, branch: str, tag: str) -> None:
        ack = render_request(
            "ACK",
            phone.target or phone.uri,
            [
                self._via(branch),
                ("max-forwards", "70"),
                phone.headers[0],
                ("to", f"<{phone.uri}>;tag={tag}" if tag else f"<{phone.uri}>"),
                phone.headers[2],
                ("cseq", "1 ACK"),
            ],
        )
        self._send(ack, self._outbound)

    async def _report(self, phone: PhoneCall, action: AgentAction) -> None:
        with contextlib.suppress(Exception):  # the offer may be gone already
            await self._desk.act(phone.agent_id, phone.call_id, action)

    async def _phone_gone(self, phone: PhoneCall) -> None:
        """The phone hung up: the agent hangs up the call, or rejects it if not answered yet."""
        try:
            await self._desk.act(phone.agent_id, phone.call_id, AgentAction.HANGUP)
        except Exception:
            await self._report(phone, AgentAction.REJECT)
