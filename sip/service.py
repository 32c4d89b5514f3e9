"""The SIP service of a node: the sockets, the RTP port range and the trunk, owned together.
The composition root (node/app.py) enters it when the config names a SIP port."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from sip.leg import RtpLeg, RtpPorts
from sip.phones import Desk, Events, Phones
from sip.settings import TrunkSettings
from sip.transport import Peer, SipSockets
from sip.trunk import Admit, Owner, Trunk

log = logging.getLogger(__name__)


class SipService:
    """`async with SipService(...)`: SIP on UDP and TCP at `host:port`, RTP in `rtp_ports`."""

    def __init__(
        self,
        host: str,
        port: int,
        settings: TrunkSettings,
        rtp_ports: tuple[int, int],
        admit: Admit,
        owner: Owner,
        *,
        on_digits: Callable[[str, str], object] | None = None,
        outbound: Peer | None = None,
        events: Events | None = None,
        desk: Desk | None = None,
    ) -> None:
        self._ports = RtpPorts(settings.host, *rtp_ports)
        self._sockets = SipSockets(host, port, self._handle)
        self._settings = settings
        self._admit = admit
        self._owner = owner
        self._on_digits = on_digits
        self._outbound, self._events, self._desk = outbound, events, desk
        self.trunk: Trunk | None = None
        self.phones: Phones | None = None  # agents' external phones, when `outbound` is set

    def _handle(self, data: bytes, peer: Peer) -> None:
        if self.trunk is not None:
            self.trunk.handle(data, peer)

    @property
    def address(self) -> str:
        return self._sockets.address

    def leg(self, call_id: str) -> RtpLeg | None:
        """The RTP leg of a call that came in from the trunk (for the media plane)."""
        return self.trunk.leg(call_id) if self.trunk is not None else None

    async def __aenter__(self) -> SipService:
        await self._sockets.__aenter__()
        settings = replace(self._settings, port=self._sockets.port)
        self.trunk = Trunk(
            settings,
            self._admit,
            self._owner,
            self._ports,
            self._sockets.send,
            on_digits=self._on_digits,
        )
        if self._outbound is not None and self._events is not None and self._desk is not None:
            self.phones = Phones(
                settings.host,
                self._sockets.port,
                self._outbound,
                self._ports,
                self._sockets.send,
                self._events,
                self._desk,
            )
            self.trunk.phones = self.phones
        log.info("sip serving on %s (udp and tcp)", self.address)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.phones is not None:
            await self.phones.close()
            self.phones = None
        if self.trunk is not None:
            await self.trunk.close()
            self.trunk = None
        await self._sockets.__aexit__(exc_type, exc, tb)
