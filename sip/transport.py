"""SIP over UDP and TCP on one host and port: the only sockets of the trunk side.

Every message goes to `on_message(data, peer)` as raw bytes (sip/message.py parses); replies go
back where the request came from (the source address and port, as RFC 3581's rport does, and the
same connection for TCP), never to an address a message names. A TCP stream is framed by
Content-Length with the same limits as a datagram; a peer breaking them, or idle for
`TCP_IDLE_S`, is disconnected. Nothing a peer sends can stop the sockets: callback errors are
logged and the next message is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from node.tasks import Tasks
from sip.message import MAX_BODY_BYTES, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

TCP_IDLE_S = 300.0
MAX_TCP_CONNECTIONS = 256
_LENGTH = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int
    tcp: bool = False

    def __str__(self) -> str:
        return f"{'tcp' if self.tcp else 'udp'}:{self.host}:{self.port}"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipSockets) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner.deliver(data, Peer(str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp: %s", exc)


class SipSockets:
    """`async with SipSockets(host, port, on_message)`: UDP and TCP bound on entry (port 0: a
    free port, the same for both), closed on exit."""

    def __init__(self, host: str, port: int, on_message: Callable[[bytes, Peer], None]) -> None:
        self.host = host
        self.port = port
        self._on_message = on_message
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._streams: dict[Peer, asyncio.StreamWriter] = {}
        self._tasks = Tasks("sip tcp")

    async def __aenter__(self) -> SipSockets:
        loop = asyncio.get_running_loop()
        wanted = self.port
        for attempt in range(1 if wanted else 20):  # port 0: UDP's free port may be taken on TCP
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, wanted)
            )
            self.port = int(transport.get_extra_info("sockname")[1])
            try:
                self._server = await asyncio.start_server(self._serve, self.host, self.port)
            except OSError:
                transport.close()
                if wanted or attempt == 19:
                    raise
                continue
            self._udp = transport
            break
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._streams.values()):
            writer.close()
        await self._tasks.close()
        if self._udp is not None:
            self._udp.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def deliver(self, data: bytes, peer: Peer) -> None:
        try:
            self._on_message(data, peer)
        except Exception:  # one bad message never stops the node serving the next
            log.exception("sip: failed handling a message from %s", peer)

    def send(self, data: bytes, peer: Peer) -> None:
        if peer.tcp:
            writer = self._streams.get(peer)
            if writer is None or writer.is_closing():
                log.info("sip: no connection to %s any more; message dropped", peer)
                return
            writer.write(data)
        elif self._udp is not None:
            self._udp.sendto(data, (peer.host, peer.port))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = Peer(str(host), int(port), tcp=True)
        if len(self._streams) >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._streams[peer] = writer
        try:
            while True:
                data = await asyncio.wait_for(_read_message(reader), TCP_IDLE_S)
                if data is None:
                    break
                self.deliver(data, peer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, _Oversized):
            pass
        finally:
            self._streams.pop(peer, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


class _Oversized(Exception):
    pass


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One message off a stream: headers to the blank line, then Content-Length bytes (none
    when absent). None at the end of the stream."""
    head = b""
    while not head.strip():  # keep-alive CRLFs between messages (RFC 5626)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Oversized from None
        except asyncio.IncompleteReadError as error:
            if not error.partial.strip():
                return None
            raise
        if len(head) > MAX_MESSAGE_BYTES:
            raise _Oversized
    match = _LENGTH.search(head)
    length = int(match[1]) if match else 0
    if length > MAX_BODY_BYTES:
        raise _Oversized
    body = await reader.readexactly(length) if length else b""
    return head.lstrip(b"\r\n") + body
