"""The SDP a trunk's audio needs (RFC 4566, offer/answer RFC 3264): read an offer's audio line,
choose G.711 and telephone-event, write the answer. Pure.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field

from sip.message import Malformed

MAX_SDP_BYTES = 8_192


class Codec(enum.Enum):
    """The audio codecs the trunk side speaks, by their static RTP payload type."""

    PCMU = 0
    PCMA = 8

    @property
    def payload_type(self) -> int:
        return self.value


_RTPMAP = re.compile(r"(?P<pt>\d{1,3}) (?P<name>[A-Za-z0-9\-]+)/(?P<rate>\d+)(?:/\d+)?")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


class NotAcceptable(ValueError):
    """An offer with no audio this node can take (answer 488)."""

    code = "sip_not_acceptable"


@dataclass(frozen=True, slots=True)
class Offer:
    """The audio of an SDP offer: where to send RTP, which payload types, and the direction."""

    host: str
    port: int
    payload_types: tuple[int, ...]
    telephone_event: int | None  # the payload type of RFC 4733 events, when offered
    direction: str = "sendrecv"

    @property
    def on_hold(self) -> bool:
        """The far end holds the call (RFC 3264 8.4; c=0.0.0.0 from RFC 2543 too)."""
        return self.direction in ("sendonly", "inactive") or self.host == "0.0.0.0"

    def codec(self) -> Codec:
        """The first G.711 codec in the offer's order of preference."""
        for payload_type in self.payload_types:
            for codec in Codec:
                if codec.payload_type == payload_type:
                    return codec
        raise NotAcceptable("the offer has no PCMU or PCMA audio")


@dataclass(slots=True)
class _Audio:
    """The first audio stream, filled in while its lines are read."""

    port: int
    payload_types: tuple[int, ...]
    host: str = ""
    direction: str = ""
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    done: bool = False


def parse_offer(body: bytes) -> Offer:
    """The first audio stream of an SDP offer. Raises Malformed (400) or NotAcceptable (488)."""
    if len(body) > MAX_SDP_BYTES:
        raise Malformed(f"SDP of {len(body)} bytes is over {MAX_SDP_BYTES}")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise Malformed("SDP is not ASCII") from None
    session_host, session_direction = "", "sendrecv"
    audio: _Audio | None = None
    seen_media = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise Malformed(f"SDP line {line[:40]!r} is not TYPE=VALUE")
        kind, value = line[0], line[2:]
        if kind == "m":
            seen_media = True
            if audio is not None:
                audio.done = True
            else:
                audio = _media(value)
            continue
        current = audio if audio is not None and not audio.done else None
        if kind == "c":
            host = _connection_host(value)
            if current is not None:
                current.host = host
            elif not seen_media:
                session_host = host
        elif kind == "a" and value in _DIRECTIONS:
            if current is not None:
                current.direction = value
            elif not seen_media:
                session_direction = value
        elif kind == "a" and value.startswith("rtpmap:") and current is not None:
            match = _RTPMAP.fullmatch(value[len("rtpmap:") :].strip())
            if match is None:
                raise Malformed(f"SDP rtpmap {value[:60]!r} is not PT NAME/RATE")
            current.rtpmap[int(match["pt"])] = (match["name"].lower(), int(match["rate"]))
    if audio is None:
        raise NotAcceptable("the offer has no RTP/AVP audio stream")
    host = audio.host or session_host
    if not host:
        raise Malformed("SDP names no connection address for the audio")
    events = [pt for pt in audio.payload_types if audio.rtpmap.get(pt) == ("telephone-event", 8000)]
    return Offer(
        host,
        audio.port,
        audio.payload_types,
        events[0] if events else None,
        audio.direction or session_direction,
    )


def _media(value: str) -> _Audio | None:
    """An m= line: the audio stream to use, or None for another kind of stream."""
    parts = value.split()
    if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
        raise Malformed(f"SDP media line {value[:60]!r} is not MEDIA PORT PROTO FMT...")
    if parts[0] != "audio" or parts[2] != "RTP/AVP":
        return None
    if not all(p.isdigit() and int(p) < 128 for p in parts[3:]):
        raise Malformed(f"SDP audio formats {value[:60]!r} are not payload types")
    port = int(parts[1].split("/")[0])
    if port > 65535:
        raise Malformed(f"SDP audio port {port} is out of range")
    return _Audio(port, tuple(int(p) for p in parts[3:]))


def _connection_host(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise Malformed(f"SDP connection {value[:60]!r} is not IN IP4|IP6 ADDRESS")
    address = parts[2].split("/")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise Malformed(f"SDP connection address {address[:40]!r} is not an IP address") from None
    return address


def answer(offer: Offer, host: str, port: int, session_id: int, version: int = 1) -> bytes:
    """The node's answer: the chosen codec, telephone-event when offered, 20 ms frames, and the
    direction that mirrors the offer's (a hold offer gets recvonly or inactive)."""
    codec = offer.codec()
    formats = [str(codec.payload_type)]
    attributes = [f"a=rtpmap:{codec.payload_type} {codec.name}/8000"]
    if offer.telephone_event is not None:
        formats.append(str(offer.telephone_event))
        attributes += [
            f"a=rtpmap:{offer.telephone_event} telephone-event/8000",
            f"a=fmtp:{offer.telephone_event} 0-16",
        ]
    family = "IP6" if ":" in host else "IP4"
    direction = "inactive" if offer.host == "0.0.0.0" else _ANSWER_DIRECTION[offer.direction]
    lines = [
        "v=0",
        f"o=callmesh {session_id} {version} IN {family} {host}",
        "s=callmesh",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(formats)}",
        *attributes,
        "a=ptime:20",
        f"a={direction}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def offer(host: str, port: int, session_id: int, telephone_event: int = 101) -> bytes:
    """The node's offer for a call it places (an agent's external phone): PCMU, PCMA, events."""
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=callmesh {session_id} 1 IN {family} {host}",
        "s=callmesh",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8 {telephone_event}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        f"a=rtpmap:{telephone_event} telephone-event/8000",
        f"a=fmtp:{telephone_event} 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()
