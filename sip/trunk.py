"""The trunk side of SIP: calls in from a carrier or session border controller become calls of
the node's call life (the same as a WebRTC caller's), and the call's end goes back to the trunk.

A call: INVITE with an SDP offer -> 100 Trying -> the call is accepted (`Admit`: recorded and
routed, with the trunk and the dialled number) -> 180 Ringing carrying the SDP answer (early
media: prompts, music on hold and the caller's RFC 4733 digits flow before anyone answers) ->
200 OK with the same answer when an agent answers (or at once with `answer = "arrival"`), resent
until the ACK. A BYE from the trunk is the caller hanging up; the call ending on the node sends
a BYE to the trunk (or a 480 before the answer). CANCEL before the 200 abandons the call.
OPTIONS keep-alives get 200; a re-INVITE (hold, resume) gets 200 with an answer that mirrors it.

Who may call: requests from addresses outside the allow-list get 403; with credentials
configured, an INVITE needs a digest `Authorization` (401 with a challenge otherwise). A message
that cannot be parsed gets 400 when its Via, From, To, Call-ID and CSeq were readable, and is
dropped otherwise; either way the node serves the next one.

The trunk follows the call through `Switchboard.observers`; it keeps nothing the switchboard
keeps (the call's state is the switchboard's), only the SIP dialog beside it.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from node import metrics
from node.callstate import Call, CallEvent, CallState, Outcome
from node.tasks import Tasks
from sip import digest, sdp
from sip.leg import NoPortFree, RtpLeg, RtpPorts
from sip.message import (
    ALLOW,
    Malformed,
    Reply,
    Request,
    Response,
    new_branch,
    new_tag,
    parse,
    render_request,
    render_response,
    uri_of,
    user_of,
)
from sip.phones import Phones
from sip.resend import GIVE_UP_S, Resender
from sip.settings import TrunkSettings
from sip.transport import Peer

log = logging.getLogger(__name__)

TRANSACTION_S = GIVE_UP_S  # how long a transaction's last response is kept
MAX_TRANSACTIONS = 10_000
REFUSALS = {
    "node_draining": (503, "draining"),
    "node_overloaded": (503, "overloaded"),
    "queue_not_found": (404, "unknown_number"),
    "entry_not_found": (404, "unknown_number"),
    "number_not_found": (404, "unknown_number"),
}
"""The SIP status of a call the node does not take and its metrics reason, by the error's code
(else 500, "other")."""


class Admit(Protocol):
    """Accept a call from the trunk into the call life: (caller, dialled number, trunk) -> the
    call, recorded. Raises an exception with a `code` when the node does not take it."""

    def __call__(self, caller: str, dialled: str, trunk: str) -> Awaitable[Call]: ...


class Owner(Protocol):
    """What the trunk needs of the calls' owner (node/switchboard.py's Switchboard)."""

    observers: list[Callable[[Call, CallEvent, Call], None]]

    async def hangup_caller(self, call_id: str) -> Call: ...


class Phase(enum.Enum):
    ARRIVING = "arriving"  # 100 sent; the call is being accepted
    EARLY = "early"  # 180 with the answer sent; the call waits, is offered or in the IVR
    ANSWERED = "answered"  # 200 sent, until the ACK
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass(slots=True)
class Dialog:
    """One SIP dialog with the trunk, beside the node's call `call_id`."""

    sip_call_id: str
    peer: Peer
    invite: Request
    local_tag: str
    leg: RtpLeg
    offer: sdp.Offer
    caller: str
    dialled: str
    call_id: str = ""
    phase: Phase = Phase.ARRIVING
    cancelled: bool = False
    session_id: int = field(default_factory=lambda: secrets.randbits(31))
    version: int = 1
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(10_000) + 1)
    digits: str = ""


class Trunk:
    """The SIP trunk service: `handle(data, peer)` for every message, `send` to reply."""

    def __init__(
        self,
        settings: TrunkSettings,
        admit: Admit,
        owner: Owner,
        ports: RtpPorts,
        send: Callable[[bytes, Peer], None],
        *,
        on_digits: Callable[[str, str], object] | None = None,
    ) -> None:
        self.settings = settings
        self._admit = admit
        self._owner = owner
        self._ports = ports
        self._send = send
        self._on_digits = on_digits
        self._secret = secrets.token_bytes(32)
        self.dialogs: dict[str, Dialog] = {}  # by SIP Call-ID
        self._by_call: dict[str, Dialog] = {}  # by the node's call id
        # (branch, method) -> (last response, peer, when): a retransmitted request gets it again
        self._answered: OrderedDict[tuple[str, str], tuple[bytes, Peer, float]] = OrderedDict()
        # INVITE final responses and our BYEs, resent until ACKed / answered
        self._resend = Resender()
        self._tasks = Tasks("sip trunk")
        self.phones: Phones | None = None  # calls out to agents' phones, when configured
        self.malformed = 0
        owner.observers.append(self._observe)

    # -- the node's side ---------------------------------------------------------------------------

    def leg(self, call_id: str) -> RtpLeg | None:
        """The RTP leg of the node's call `call_id`, when it came from the trunk."""
        dialog = self._by_call.get(call_id)
        return dialog.leg if dialog is not None else None

    async def close(self) -> None:
        if self._observe in self._owner.observers:
            self._owner.observers.remove(self._observe)
        self._resend.close()
        await self._tasks.close()
        self._ports.close_all()
        self.dialogs.clear()
        self._by_call.clear()
        self._count_active()

    # -- messages in ------------------------------------------------------------------------------

    def handle(self, data: bytes, peer: Peer) -> None:
        allowed = self.settings.allows(peer.host)
        try:
            message = parse(data)
        except Malformed as error:
            self.malformed += 1
            metrics.SIP_MALFORMED.inc()
            log.info("sip message from %s refused: %s", peer, error.problem)
            if allowed and error.reply_to is not None and not data.startswith(b"ACK "):
                reply = Reply(400, new_tag(), _reason(error.problem), content_type="")
                self._send(render_response(error.reply_to, reply), peer)
            return
        if not allowed:  # strangers get 403 to a request, nothing else, and change nothing
            log.warning("sip message from %s refused: not an allowed trunk", peer)
            if isinstance(message, Request) and message.method != "ACK":
                reply = Reply(403, new_tag())
                self._send(render_response(message.reply_headers(), reply), peer)
                metrics.sip_request(message.method, 403)
                if message.method == "INVITE":
                    metrics.sip_refused("not_allowed")
            return
        phones = self.phones
        if isinstance(message, Response):
            if phones is not None and phones.owns(message.call_id):
                phones.handle(message, peer)
            else:
                self._response(message)
            return
        if phones is not None and phones.owns(message.call_id):
            phones.handle(message, peer)
            return
        if message.method != "ACK":
            kept = self._answered.get((message.branch, message.method))
            if kept is not None:  # a retransmission: the same answer again
                self._send(kept[0], peer)
                return
        handler = {
            "INVITE": self._invite,
            "ACK": self._ack,
            "BYE": self._bye,
            "CANCEL": self._cancel,
            "OPTIONS": self._options,
        }.get(message.method)
        if handler is None:
            self._reply(message, peer, Reply(405, new_tag(), (("allow", ALLOW),)))
            return
        handler(message, peer)

    def _reply(self, request: Request, peer: Peer, reply: Reply) -> bytes:
        data = render_response(request.reply_headers(), reply)
        self._send(data, peer)
        if reply.status >= 200:
            metrics.sip_request(request.method, reply.status)
        self._remember(request, data, peer)
        return data

    def _remember(self, request: Request, data: bytes, peer: Peer) -> None:
        now = time.monotonic()
        key = (request.branch, request.method)
        self._answered[key] = (data, peer, now)
        self._answered.move_to_end(key)
        while self._answered and (
            len(self._answered) > MAX_TRANSACTIONS
            or next(iter(self._answered.values()))[2] < now - TRANSACTION_S
        ):
            self._answered.popitem(last=False)

    # -- INVITE -----------------------------------------------------------------------------------

    def _invite(self, request: Request, peer: Peer) -> None:
        dialog = self.dialogs.get(request.call_id)
        if request.to_tag:
            if dialog is None or request.to_tag != dialog.local_tag:
                self._reply(request, peer, Reply(481))
            else:
                self._reinvite(dialog, request, peer)
            return
        if dialog is not None:
            self._reply(request, peer, Reply(482, new_tag()))
            return
        credentials = self.settings.credentials
        if credentials is not None:
            verdict = digest.verify(
                credentials,
                self._secret,
                "INVITE",
                request.header("authorization"),
                time.time(),
            )
            if verdict != "ok":
                challenge = digest.challenge(
                    credentials, self._secret, time.time(), stale=verdict == "stale"
                )
                log.info("sip INVITE %s from %s: %s credentials", request.call_id, peer, verdict)
                metrics.sip_refused("unauthorized")
                self._reply_final(
                    request, peer, Reply(401, new_tag(), (("www-authenticate", challenge),))
                )
                return
        try:
            offer = sdp.parse_offer(request.body)
            offer.codec()
        except Malformed as error:
            metrics.sip_refused("bad_offer")
            self._reply_final(request, peer, Reply(400, new_tag(), _reason(error.problem)))
            return
        except sdp.NotAcceptable as error:
            metrics.sip_refused("bad_offer")
            self._reply_final(request, peer, Reply(488, new_tag(), _reason(str(error))))
            return
        caller = user_of(uri_of(request.header("from") or "")) or "anonymous"
        dialled = user_of(request.uri) or user_of(uri_of(request.header("to") or ""))
        self._reply(request, peer, Reply(100))
        self._tasks.spawn(self._arrive(request, peer, offer, caller, dialled), "sip arrive")

    async def _arrive(
        self, request: Request, peer: Peer, offer: sdp.Offer, caller: str, dialled: str
    ) -> None:
        try:
            leg = await self._ports.open(request.call_id)
        except NoPortFree as error:
            log.warning("sip INVITE %s: %s", request.call_id, error)
            metrics.sip_refused("no_rtp_port")
            self._reply_final(request, peer, Reply(503, new_tag(), _reason(str(error))))
            return
        leg.configure(offer.codec(), offer.telephone_event, (offer.host, offer.port), offer.on_hold)
        dialog = Dialog(request.call_id, peer, request, new_tag(), leg, offer, caller, dialled)
        self.dialogs[request.call_id] = dialog
        self._count_active()
        try:
            call = await self._admit(caller, dialled, f"sip:{peer.host}:{peer.port}")
        except Exception as error:
            code = getattr(error, "code", "")
            status, reason = REFUSALS.get(code, (500, "other"))
            if status == 500:
                log.exception("sip INVITE %s: the call was not accepted", request.call_id)
            else:
                log.info("sip INVITE %s refused (%d): %s", request.call_id, status, error)
            metrics.sip_refused(reason)
            self._forget(dialog)
            self._reply_final(request, peer, Reply(status, dialog.local_tag, _reason(str(error))))
            return
        dialog.call_id = call.call_id
        self._by_call[call.call_id] = dialog
        leg.call_ref = call.call_id
        leg.on_digit = lambda digit: self._digit(dialog, digit)
        log.info(
            "call %s from trunk %s: %s dialled %s (%s, rtp %d)",
            call.call_id,
            peer,
            caller,
            dialled,
            leg.codec.name,
            leg.local_port,
        )
        if dialog.cancelled:
            await self._hangup(dialog)
            return
        if dialog.phase is not Phase.ARRIVING:
            return  # the call already ended (observed) before we got here
        dialog.phase = Phase.EARLY
        self._reply(
            request, peer, Reply(180, dialog.local_tag, self._contact(), self._answer(dialog))
        )
        if self.settings.answer == "arrival":
            self._answer_call(dialog)

    def _answer(self, dialog: Dialog) -> bytes:
        return sdp.answer(
            dialog.offer,
            self.settings.host,
            dialog.leg.local_port,
            dialog.session_id,
            dialog.version,
        )

    def _contact(self) -> tuple[tuple[str, str], ...]:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return (("contact", f"<sip:{host}:{self.settings.port}>"), ("allow", ALLOW))

    def _answer_call(self, dialog: Dialog) -> None:
        """200 OK with the answer, resent until the ACK."""
        dialog.phase = Phase.ANSWERED
        reply = Reply(200, dialog.local_tag, self._contact(), self._answer(dialog))
        self._reply_final(dialog.invite, dialog.peer, reply)
        log.info("call %s answered towards the trunk", dialog.call_id)

    def _reply_final(self, request: Request, peer: Peer, reply: Reply) -> None:
        """A final response to an INVITE: resent (T1 doubling to T2) until the ACK comes, for at
        most 64*T1; a 2xx never ACKed ends the call."""
        data = self._reply(request, peer, reply)
        if peer.tcp:
            return
        give_up = (lambda: self._no_ack(request.call_id)) if reply.status == 200 else None
        self._resend.start(
            (request.call_id, request.cseq[0], "INVITE"),
            lambda: self._send(data, peer),
            on_give_up=give_up,
        )

    def _stop_resend(self, key: tuple[str, int, str]) -> None:
        self._resend.stop(key)

    def _no_ack(self, sip_call_id: str) -> None:
        dialog = self.dialogs.get(sip_call_id)
        if dialog is not None and dialog.phase is Phase.ANSWERED:
            log.warning("call %s: the trunk never ACKed the 200; ending it", dialog.call_id)
            self._send_bye(dialog)
            self._tasks.spawn(self._hangup(dialog), "sip hangup")

    def _reinvite(self, dialog: Dialog, request: Request, peer: Peer) -> None:
        if request.body:
            try:
                offer = sdp.parse_offer(request.body)
                codec = offer.codec()
            except Malformed as error:
                self._reply_final(
                    request, peer, Reply(400, dialog.local_tag, _reason(error.problem))
                )
                return
            except sdp.NotAcceptable as error:
                self._reply_final(request, peer, Reply(488, dialog.local_tag, _reason(str(error))))
                return
            dialog.offer = offer
            dialog.version += 1
            dialog.leg.configure(
                codec, offer.telephone_event, (offer.host, offer.port), offer.on_hold
            )
            log.info(
                "call %s %s by the trunk",
                dialog.call_id,
                "held" if offer.on_hold else "resumed",
            )
        reply = Reply(200, dialog.local_tag, self._contact(), self._answer(dialog))
        self._reply_final(request, peer, reply)

    # -- ACK, BYE, CANCEL, OPTIONS ----------------------------------------------------------------

    def _ack(self, request: Request, peer: Peer) -> None:
        metrics.sip_request("ACK", None)
        self._stop_resend((request.call_id, request.cseq[0], "INVITE"))
        dialog = self.dialogs.get(request.call_id)
        if dialog is not None and dialog.phase is Phase.ANSWERED:
            dialog.phase = Phase.CONFIRMED

    def _bye(self, request: Request, peer: Peer) -> None:
        dialog = self.dialogs.get(request.call_id)
        if dialog is None or request.to_tag != dialog.local_tag:
            self._reply(request, peer, Reply(481, new_tag()))
            return
        self._reply(request, peer, Reply(200))
        self._stop_resend((request.call_id, dialog.invite.cseq[0], "INVITE"))
        log.info("call %s: the trunk hung up", dialog.call_id or request.call_id)
        self._tasks.spawn(self._hangup(dialog), "sip hangup")

    def _cancel(self, request: Request, peer: Peer) -> None:
        dialog = self.dialogs.get(request.call_id)
        if dialog is None or dialog.invite.branch != request.branch:
            self._reply(request, peer, Reply(481, new_tag()))
            return
        self._reply(request, peer, Reply(200, dialog.local_tag))
        if dialog.phase not in (Phase.ARRIVING, Phase.EARLY):
            return  # answered already: the CANCEL changes nothing (RFC 3261 9.2)
        self._reply_final(dialog.invite, dialog.peer, Reply(487, dialog.local_tag))
        log.info("call %s: the trunk cancelled it", dialog.call_id or request.call_id)
        if dialog.call_id:
            self._tasks.spawn(self._hangup(dialog), "sip cancel")
        else:
            dialog.cancelled = True  # _arrive hangs up once the call is recorded

    def _options(self, request: Request, peer: Peer) -> None:
        headers = (("allow", ALLOW), ("accept", "application/sdp"))
        self._reply(request, peer, Reply(200, new_tag(), headers))

    async def _hangup(self, dialog: Dialog) -> None:
        """The trunk's side is gone: end the node's call (the caller hung up)."""
        self._forget(dialog)
        if not dialog.call_id:
            return
        try:
            await self._owner.hangup_caller(dialog.call_id)
        except Exception as error:  # ended on the node meanwhile
            log.info("call %s: hang-up from the trunk: %s", dialog.call_id, error)

    def _forget(self, dialog: Dialog) -> None:
        dialog.phase = Phase.ENDED
        self.dialogs.pop(dialog.sip_call_id, None)
        self._by_call.pop(dialog.call_id, None)
        self._ports.close(dialog.sip_call_id)
        self._count_active()

    def _count_active(self) -> None:
        metrics.SIP_CALLS_ACTIVE.labels("in").set(len(self.dialogs))

    # -- the call's life on the node ---------------------------------------------------------------

    def _observe(self, before: Call, event: CallEvent, after: Call) -> None:
        dialog = self._by_call.get(after.call_id)
        if dialog is None or dialog.phase is Phase.ENDED:
            return
        if event is CallEvent.ANSWER and dialog.phase is Phase.EARLY:
            self._answer_call(dialog)
        elif after.state is CallState.ENDED:
            self._ended_on_node(dialog, after.outcome)

    def _ended_on_node(self, dialog: Dialog, outcome: Outcome | None) -> None:
        why = outcome.value if outcome is not None else "ended"
        log.info("call %s ended on the node (%s): releasing the trunk", dialog.call_id, why)
        if dialog.phase in (Phase.ANSWERED, Phase.CONFIRMED):
            self._send_bye(dialog)
        else:
            self._reply_final(
                dialog.invite, dialog.peer, Reply(480, dialog.local_tag, _reason(why))
            )
        self._forget(dialog)

    def _send_bye(self, dialog: Dialog) -> None:
        invite = dialog.invite
        dialog.local_cseq += 1
        contact = invite.header("contact")
        target = uri_of(contact) if contact else uri_of(invite.header("from") or "")
        host = self.settings.host
        transport = "TCP" if dialog.peer.tcp else "UDP"
        to_value = invite.header("to") or ""
        headers = [
            ("via", f"SIP/2.0/{transport} {host}:{self.settings.port};branch={new_branch()};rport"),
            ("max-forwards", "70"),
            ("from", f"{to_value};tag={dialog.local_tag}"),
            ("to", invite.header("from") or ""),
            ("call-id", invite.call_id),
            ("cseq", f"{dialog.local_cseq} BYE"),
        ]
        data = render_request(
            "BYE", target or f"sip:{dialog.peer.host}:{dialog.peer.port}", headers
        )
        self._send(data, dialog.peer)
        if dialog.peer.tcp:
            return
        key = (invite.call_id, dialog.local_cseq, "BYE")
        self._resend.start(key, lambda: self._send(data, dialog.peer))

    def _response(self, response: Response) -> None:
        """A response to a request of ours (a BYE): stop resending it."""
        sequence, method = response.cseq
        if response.status >= 200:
            self._stop_resend((response.call_id, sequence, method))

    def _digit(self, dialog: Dialog, digit: str) -> None:
        dialog.digits += digit
        log.info("call %s: digit %s from the trunk", dialog.call_id, digit)
        if self._on_digits is not None:
            try:
                self._on_digits(dialog.call_id, digit)
            except Exception as error:  # the IVR refusing a digit never stops the call
                log.info("call %s: digit %s not taken: %s", dialog.call_id, digit, error)


def _reason(text: str) -> tuple[tuple[str, str], ...]:
    return (("warning", f'399 callmesh "{text[:120].replace(chr(34), chr(39))}"'),)
