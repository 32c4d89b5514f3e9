"""SIP for callmesh: the trunk side (calls in from a carrier or SBC) with plain RTP G.711 legs.

Public API:
- `SipService` (sip/service.py): sockets + RTP ports + trunk, an async context manager.
- `Trunk` (sip/trunk.py): the dialogs beside the node's calls.
- `TrunkSettings`, `parse_allowed` (sip/settings.py): who may call, digest, when to answer.
- `RtpLeg`, `RtpPorts` (sip/leg.py): a call's RTP leg, shaped like media/peer.py's PeerLeg.
- `parse`, `Request`, `Response`, `Malformed` (sip/message.py): the pure SIP parser.
- `sdp`, `digest`, `dtmf`, `g711`: pure modules for SDP, digest auth, RFC 4733 and G.711.
"""

from sip.leg import RtpLeg, RtpPorts
from sip.message import Malformed, Request, Response, parse
from sip.service import SipService
from sip.settings import TrunkSettings, parse_allowed
from sip.trunk import Trunk

__all__ = [
    "Malformed",
    "Request",
    "Response",
    "RtpLeg",
    "RtpPorts",
    "SipService",
    "Trunk",
    "TrunkSettings",
    "parse",
    "parse_allowed",
]
