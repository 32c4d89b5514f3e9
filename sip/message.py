"""SIP messages (RFC 3261): parsing with the checks a trunk-facing server needs, and building the
responses and requests the trunk side sends. Pure: no I/O, no asyncio.

`parse(data)` returns a `Request` or a `Response`, or raises `Malformed`. A `Malformed` error
carries the headers a 400 needs (`reply_to`) when the message got that far, so the caller can
answer it; otherwise it drops the message. Nothing here ever raises anything but `Malformed`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 65_535
"""The largest message taken (a UDP datagram's limit; a TCP peer sending more is cut off)."""
MAX_HEADERS = 100
MAX_BODY_BYTES = 16_384
SIP_VERSION = "SIP/2.0"
COOKIE = "z9hG4bK"  # RFC 3261 branch prefix

_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
}
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_URI = re.compile(r"(sips?|tel):[^\s<>]+", re.IGNORECASE)
_VIA = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*(?P<transport>[A-Za-z]+)\s+(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>(?:\s*;[^;]*)*)\s*",
)
_CSEQ = re.compile(r"(?P<seq>\d{1,10})\s+(?P<method>" + _TOKEN.pattern + r")")
_TAG = re.compile(r";\s*tag=(?P<tag>[^;>\s]+)", re.IGNORECASE)
_NAME_ADDR_URI = re.compile(r"<(?P<uri>[^>]*)>")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_REPLY_HEADERS = ("via", "from", "to", "call-id", "cseq")
_MAX_CSEQ = 2**31 - 1


class Malformed(ValueError):
    """A message this node will not act on. `reply_to` holds the request's Via, From, To,
    Call-ID and CSeq when they were readable (answer 400), else None (drop it)."""

    code = "sip_malformed"

    def __init__(self, problem: str, reply_to: Headers | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.reply_to = reply_to


Headers = tuple[tuple[str, str], ...]
"""(lower-case name, value) pairs in message order; compact names expanded."""


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int
    branch: str


@dataclass(frozen=True, slots=True)
class Message:
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case, compact forms too), or None."""
        key = _COMPACT.get(name.lower(), name.lower())
        return next((v for n, v in self.headers if n == key), None)

    def all(self, name: str) -> list[str]:
        key = _COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if n == key]

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        match = _CSEQ.fullmatch(self.header("cseq") or "")
        return (int(match["seq"]), match["method"]) if match else (0, "")

    @property
    def from_tag(self) -> str:
        return tag_of(self.header("from") or "")

    @property
    def to_tag(self) -> str:
        return tag_of(self.header("to") or "")

    @property
    def via(self) -> Via:
        """The topmost Via (checked by `parse` for requests)."""
        return parse_via(self.all("via")[0].split(",")[0])


@dataclass(frozen=True, slots=True)
class Request(Message):
    method: str = ""
    uri: str = ""

    @property
    def branch(self) -> str:
        return self.via.branch

    def reply_headers(self) -> Headers:
        return tuple((n, v) for n, v in self.headers if n in _REPLY_HEADERS)


@dataclass(frozen=True, slots=True)
class Response(Message):
    status: int = 0
    reason: str = ""


def tag_of(name_addr: str) -> str:
    """The tag parameter of a From/To value ("" when none)."""
    rest = name_addr.rsplit(">", 1)[-1] if ">" in name_addr else name_addr
    match = _TAG.search(rest)
    return match["tag"] if match else ""


def uri_of(name_addr: str) -> str:
    """The URI of a From/To/Contact value: inside <...>, or the value up to its parameters."""
    match = _NAME_ADDR_URI.search(name_addr)
    if match:
        return match["uri"].strip()
    return name_addr.split(";", 1)[0].strip()


def user_of(uri: str) -> str:
    """The user part of a sip: URI (the dialled number in a Request-URI or To), "" if none."""
    rest = uri.split(":", 1)[-1]
    return rest.split("@", 1)[0].split(";", 1)[0] if "@" in rest else ""


def parse_via(value: str) -> Via:
    match = _VIA.fullmatch(value.strip())
    if match is None:
        raise Malformed(f"Via {value[:60]!r} is not SIP/2.0/TRANSPORT host[:port];params")
    port = int(match["port"]) if match["port"] else 5060
    if not 1 <= port <= 65535:
        raise Malformed(f"Via port {port} is out of range")
    branch = ""
    for param in match["params"].split(";"):
        name, _, value_ = param.strip().partition("=")
        if name.lower() == "branch":
            branch = value_.strip()
    return Via(match["transport"].upper(), match["host"], port, branch)


def parse(data: bytes) -> Request | Response:
    """One SIP message (a UDP datagram, or one framed off a TCP stream)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise Malformed(f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("the start line and headers are not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():  # RFC 3261 7.5: leading CRLFs are ignored
        lines.pop(0)
    if not lines:
        raise Malformed("empty message")
    start, header_lines = lines[0], lines[1:]
    headers = _headers(header_lines)
    reply = tuple((n, v) for n, v in headers if n in _REPLY_HEADERS)
    can_reply = all(any(n == r for n, _ in reply) for r in _REQUIRED)
    body = _body(headers, body, reply if can_reply else None)
    if start.startswith(SIP_VERSION + " "):
        return _response(start, headers, body)
    parts = start.split(" ")
    if len(parts) != 3 or parts[2] != SIP_VERSION:
        raise Malformed(f"request line {start[:80]!r} is not METHOD URI SIP/2.0")
    method, uri, _ = parts
    fault = _request_fault(method, uri, headers)
    if fault:
        raise Malformed(fault, reply if can_reply and not fault.startswith("Via") else None)
    return Request(headers, body, method, uri)


def _headers(lines: Sequence[str]) -> Headers:
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        elif line:
            unfolded.append(line)
    if len(unfolded) > MAX_HEADERS:
        raise Malformed(f"{len(unfolded)} headers is over {MAX_HEADERS}")
    headers: list[tuple[str, str]] = []
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.fullmatch(name):
            raise Malformed(f"header line {line[:60]!r} is not NAME: VALUE")
        key = name.lower()
        headers.append((_COMPACT.get(key, key), value.strip()))
    return tuple(headers)


def _body(headers: Headers, body: bytes, reply: Headers | None) -> bytes:
    declared = next((v for n, v in headers if n == "content-length"), None)
    if declared is None:
        return body  # a UDP datagram's body ends with the datagram
    if not declared.isdigit():
        raise Malformed(f"Content-Length {declared[:20]!r} is not a number", reply)
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise Malformed(f"body of {length} bytes is over {MAX_BODY_BYTES}", reply)
    if len(body) < length:
        raise Malformed(f"body is {len(body)} bytes, Content-Length says {length}", reply)
    return body[:length]


def _response(start: str, headers: Headers, body: bytes) -> Response:
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or not 100 <= int(parts[1]) <= 699:
        raise Malformed(f"status line {start[:80]!r} has no status code 100-699")
    for name in _REQUIRED:
        if not any(n == name for n, _ in headers):
            raise Malformed(f"response without {name}")
    return Response(headers, body, int(parts[1]), parts[2] if len(parts) > 2 else "")


def _request_fault(method: str, uri: str, headers: Headers) -> str:
    """What is wrong with a request, "" if nothing."""
    vias = [v for n, v in headers if n == "via"]
    if not vias:
        return "Via: missing"
    try:
        parse_via(vias[0].split(",")[0])
    except Malformed as error:
        return f"Via: {error.problem}"
    if not _TOKEN.fullmatch(method):
        return f"method {method[:20]!r} is not a token"
    if not _URI.fullmatch(uri):
        return f"Request-URI {uri[:60]!r} is not a sip:, sips: or tel: URI"
    for name in _REQUIRED:
        if not any(n == name for n, _ in headers):
            return f"{name} header missing"
    cseq = next(v for n, v in headers if n == "cseq")
    match = _CSEQ.fullmatch(cseq)
    if match is None or int(match["seq"]) > _MAX_CSEQ:
        return f"CSeq {cseq[:30]!r} is not NUMBER METHOD"
    if match["method"] != method:
        return f"CSeq method {match['method']} does not match {method}"
    forwards = next((v for n, v in headers if n == "max-forwards"), "70")
    if not forwards.isdigit() or int(forwards) > 255:
        return f"Max-Forwards {forwards[:10]!r} is not 0-255"
    return ""


# -- building -------------------------------------------------------------------------------------

REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
}
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"

_PRETTY = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "content-type": "Content-Type",
    "content-length": "Content-Length",
}


def _pretty(name: str) -> str:
    return _PRETTY.get(name, "-".join(p.capitalize() for p in name.split("-")))


def _safe(value: str) -> str:
    """Header values built from input never carry a line break (no header injection)."""
    return value.replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to build: status, the local tag to add to To, extra headers, a body."""

    status: int
    to_tag: str = ""
    headers: Headers = ()
    body: bytes = b""
    content_type: str = "application/sdp"
    reason: str = field(default="")


def render_response(reply_to: Headers, reply: Reply) -> bytes:
    """A response to the request whose Via/From/To/Call-ID/CSeq are `reply_to`."""
    lines = [f"{SIP_VERSION} {reply.status} {reply.reason or REASONS.get(reply.status, 'Unknown')}"]
    for name, value in reply_to:
        if name == "to" and reply.to_tag and not tag_of(value):
            value = f"{value};tag={reply.to_tag}"
        lines.append(f"{_pretty(name)}: {_safe(value)}")
    return _finish(lines, reply.headers, reply.body, reply.content_type)


def render_request(
    method: str, uri: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    return _finish([f"{method} {uri} {SIP_VERSION}"], tuple(headers), body, "application/sdp")


def _finish(lines: list[str], extra: Headers, body: bytes, content_type: str) -> bytes:
    for name, value in extra:
        lines.append(f"{_pretty(name)}: {_safe(value)}")
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return COOKIE + secrets.token_hex(8)
