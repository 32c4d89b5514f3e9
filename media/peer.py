"""The one module that imports aiortc, aioice, pylibsrtp and av: WebRTC legs with a lean RTP path.

aiortc does the signalling (SDP offer/answer), ICE and DTLS. Once DTLS has keyed SRTP, RTP takes
a shorter way than aiortc's: a datagram that arrives on the leg's ICE pair is unprotected with
the DTLS transport's SRTP session and handed to `PeerLeg.on_rtp` at once, in the datagram
callback (no queue, no jitter buffer, no decoder); `PeerLeg.send` protects a packet with the
transport's outgoing SRTP session and writes it to the nominated pair's socket. RTCP and DTLS go
on through aiortc (round-trip time, sender reports). The leg's own aiortc sender carries a track
that never yields, so it only announces the SSRC the forwarded packets are sent with.

Loopback: aioice leaves 127.0.0.1 out of its host candidates. Given a `host`, a leg gathers its
host candidate on that address only (127.0.0.1 included), and uses no STUN server.

Also here: `OpusCodec` (decode and encode where samples are needed: recording, transcoding,
music on hold) and `ToneClient`, a stock aiortc peer that sends a tone and keeps what it hears
(the tests' and the benchmark's caller and agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice.ice
import av
import pylibsrtp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    clock,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

from media.offer import BadSdp as BadSdp  # re-exported: callers catch the offer's errors here
from media.offer import check_offer
from media.tone import RATE, sine

log = logging.getLogger(__name__)

FRAME = 960  # 20 ms at 48 kHz
_TIME_BASE = fractions.Fraction(1, RATE)
_CLOSED = ("failed", "closed")


@dataclass(frozen=True, slots=True)
class SendStats:
    packets_sent: int
    round_trip_s: float | None


def host_addresses() -> list[str]:
    """The machine's IPv4 addresses aioice would offer (loopback left out)."""
    return list(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False))


def _opus_only(pc: RTCPeerConnection) -> None:
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            transceiver.setCodecPreferences(opus)


def _only_host(pc: RTCPeerConnection, host: str) -> None:
    """Gather the one host candidate on `host` (aioice would skip 127.0.0.1)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport.iceGatherer._connection
        connection.get_component_candidates = _on_host(  # type: ignore[method-assign]
            connection.get_component_candidates, host
        )


def _on_host(gather: Any, host: str) -> Any:
    async def on_host(component: int, addresses: list[str], **options: Any) -> Any:
        return await gather(component=component, addresses=[host], **options)

    return on_host


class _Switch(MediaStreamTrack):
    """The leg's own sender track. On the lean path it yields nothing: the leg sends what the
    node forwards instead. The stock baseline attaches another leg's decoded track to it; the
    sender behind it never sees a track end, so it keeps running from call to call."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._source: Any = None
        self._attached = asyncio.Event()

    def attach(self, source: Any) -> None:
        self._source = source
        self._attached.set()

    def detach(self) -> None:
        self._source = None
        self._attached.clear()

    async def recv(self) -> Any:
        while True:
            source = self._source
            if source is None:
                await self._attached.wait()
                continue
            try:
                return await source.recv()
            except MediaStreamError:
                if self._source is source:
                    self.detach()


class PeerLeg:
    """One WebRTC audio leg: `answering(offer)` on the node, `offering()` for a client."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self._pc = pc
        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_closed: Callable[[], None] | None = None
        self.local_sdp = ""
        self.packets_sent = 0
        self.dropped = 0
        self._out: tuple[Any, Any, tuple[str, int]] | None = None
        self._dtls: Any = None
        self._sender: Any = None
        self._connection: Any = None
        self._transceiver: Any = None
        self.remote_track: Any = None  # aiortc's decoded track (the stock baseline only)
        self._closed = False
        self.switch = _Switch()
        pc.on("connectionstatechange", self._state_changed)

    # -- making one ----------------------------------------------------------------------------

    @classmethod
    async def answering(cls, offer: str, host: str = "", *, lean: bool = True) -> PeerLeg:
        """The node's side: answer a caller's or an agent's offer (audio, Opus). `lean=False`
        leaves received RTP to aiortc (decoded into `remote_track`: the stock baseline)."""
        check_offer(offer)  # names what is wrong (media/offer.py) before aiortc sees it
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        leg = cls(pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            if not any(t.kind == "audio" for t in pc.getTransceivers()):
                raise BadSdp("the offer has no audio")
            pc.addTrack(leg.switch)
            _opus_only(pc)
            if host:
                _only_host(pc, host)
            leg._hook(lean)
            await pc.setLocalDescription(await pc.createAnswer())
        except BadSdp:
            await pc.close()
            raise
        except Exception as error:  # aiortc raises ValueError, KeyError, ... on bad SDP
            await pc.close()
            raise BadSdp(f"cannot answer the offer: {str(error) or type(error).__name__}") from None
        leg.local_sdp = pc.localDescription.sdp
        return leg

    @classmethod
    async def offering(cls, host: str = "") -> PeerLeg:
        """A client's side (benchmarks): an audio offer; then `accept(answer)`."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        leg = cls(pc)
        pc.addTrack(leg.switch)
        _opus_only(pc)
        if host:
            _only_host(pc, host)
        leg._hook()
        await pc.setLocalDescription(await pc.createOffer())
        leg.local_sdp = pc.localDescription.sdp
        return leg

    async def accept(self, answer: str) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    def _hook(self, lean: bool = True) -> None:
        transceiver = next(t for t in self._pc.getTransceivers() if t.kind == "audio")
        self._sender = transceiver.sender
        self._dtls = transceiver.sender.transport
        self._transceiver = transceiver
        self.remote_track = transceiver.receiver.track
        connection = self._dtls.transport.iceGatherer._connection
        self._connection = connection
        if not lean:
            return
        original = connection.data_received
        dtls = self._dtls

        def received(data: bytes, component: int) -> None:
            srtp = dtls._rx_srtp
            if srtp is not None and 127 < data[0] < 192 and not 191 < data[1] < 224:
                try:
                    packet = srtp.unprotect(data)
                except pylibsrtp.Error:
                    return
                sink = self.on_rtp
                if sink is not None:
                    sink(packet)
                return
            original(data, component)  # DTLS, RTCP: aiortc's way

        connection.data_received = received

    # -- what a bridge needs -----------------------------------------------------------------------

    @property
    def ssrc(self) -> int:
        return int(self._sender._ssrc)

    @property
    def payload_type(self) -> int:
        codecs = self._transceiver._codecs
        payload_type = codecs[0].payloadType if codecs else None
        return 111 if payload_type is None else int(payload_type)

    @property
    def connected(self) -> bool:
        return bool(self._pc.connectionState == "connected")

    def send(self, packet: bytes) -> None:
        """Protect and send one RTP packet; dropped (and counted) until the leg is connected."""
        out = self._out
        if out is None:
            pair = self._connection._nominated.get(1)
            srtp = self._dtls._tx_srtp
            if pair is None or srtp is None or self._closed:
                self.dropped += 1
                return
            out = self._out = (srtp, pair.protocol.transport, pair.remote_addr)
        srtp, transport, address = out
        try:
            transport.sendto(srtp.protect(packet), address)
        except (pylibsrtp.Error, OSError, AttributeError):
            self.dropped += 1
            return
        self.packets_sent += 1
        if self.packets_sent % 25 == 1:
            self._sender_report_basis(packet)

    def _sender_report_basis(self, packet: bytes) -> None:
        """Let aiortc's RTCP sender reports describe the forwarded stream (for the RTT)."""
        sender = self._sender
        sender._RTCRtpSender__ntp_timestamp = clock.current_ntp_time()
        sender._RTCRtpSender__rtp_timestamp = int.from_bytes(packet[4:8], "big")
        sender._RTCRtpSender__packet_count = self.packets_sent
        sender._RTCRtpSender__octet_count = self.packets_sent * 80

    async def send_stats(self) -> SendStats:
        rtt = None
        with contextlib.suppress(Exception):
            for stat in (await self._sender.getStats()).values():
                if getattr(stat, "type", "") == "remote-inbound-rtp":
                    rtt = stat.roundTripTime
        return SendStats(self.packets_sent, rtt)

    # -- the end ---------------------------------------------------------------------------------

    def _state_changed(self) -> None:
        if self._pc.connectionState in _CLOSED:
            self._out = None
            callback, self.on_closed = self.on_closed, None
            if callback is not None:
                callback()

    async def close(self) -> None:
        self._closed = True
        self._out = None
        self.on_rtp = None
        self.on_closed = None
        await self._pc.close()


class StockBridge:
    """aiortc's own way, for comparison: each leg's decoded track relayed to the other leg's
    sender, which encodes it again (DESIGN.md §7: about 2 calls per core)."""

    def __init__(self, caller: Any, agent: Any, relay: MediaRelay) -> None:
        self.caller, self.agent = caller, agent
        self.held = False
        self._relay = relay  # one per node: a source read by two relays would lose frames
        self._proxies: list[Any] = []
        self._wire()

    def _wire(self) -> None:
        caller, agent = self.caller.leg, self.agent.leg
        self._proxies = [
            self._relay.subscribe(agent.remote_track),
            self._relay.subscribe(caller.remote_track),
        ]
        caller.switch.attach(self._proxies[0])
        agent.switch.attach(self._proxies[1])

    def _unwire(self) -> None:
        for port in (self.caller, self.agent):
            port.leg.switch.detach()
        for proxy in self._proxies:
            proxy.stop()
            proxy._frame = None  # wake a recv() still waiting: it ends the proxy
            proxy._new_frame_event.set()
        self._proxies = []

    def swap(self, old: Any, new: Any) -> None:
        self._unwire()
        self.caller = new if self.caller is old else self.caller
        self.agent = new if self.agent is old else self.agent
        self._wire()

    def hold(self, on: bool, music: Any = ()) -> None:
        """Mute both ways (no music on hold in this mode)."""
        self.held = on
        self._unwire()
        if not on:
            self._wire()

    def close(self) -> None:
        self._unwire()


def stock_relay() -> MediaRelay:
    """The one MediaRelay a node's stock bridges share."""
    return MediaRelay()


class OpusCodec:
    """Opus at 48 kHz mono, 20 ms frames: where the node needs samples (recording,
    transcoding) or makes audio (music on hold)."""

    def __init__(self, bit_rate: int = 32_000) -> None:
        self._decoder: Any = av.CodecContext.create("libopus", "r")
        self._decoder.format = "s16"
        self._decoder.layout = "mono"
        self._decoder.sample_rate = RATE
        self._encoder: Any = av.CodecContext.create("libopus", "w")
        self._encoder.bit_rate = bit_rate
        self._encoder.format = "s16"
        self._encoder.layout = "mono"
        self._encoder.sample_rate = RATE
        self._encoder.time_base = _TIME_BASE
        self._encoder.options = {"application": "voip"}
        self._pts = 0

    def decode(self, payload: bytes) -> bytes:
        """One packet's payload as signed 16-bit mono samples (empty when undecodable)."""
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return b""
        return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames)

    def encode(self, pcm: bytes) -> list[bytes]:
        """20 ms of signed 16-bit mono samples as Opus payloads."""
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = RATE
        frame.time_base = _TIME_BASE
        frame.pts = self._pts
        self._pts += len(pcm) // 2
        return [bytes(p) for p in self._encoder.encode(frame)]


class G711Codec:
    """G.711 (PCMU, payload type 0, or PCMA, 8) at 8 kHz, as 48 kHz PCM for the bridge: SIP
    trunk legs bridged to WebRTC legs."""

    def __init__(self, payload_type: int = 0) -> None:
        name = {0: "pcm_mulaw", 8: "pcm_alaw"}.get(payload_type)
        if name is None:
            raise ValueError(f"payload type {payload_type} is not G.711 (0 or 8)")
        self._decoder: Any = av.CodecContext.create(name, "r")
        self._encoder: Any = av.CodecContext.create(name, "w")
        contexts: tuple[Any, ...] = (self._decoder, self._encoder)
        for context in contexts:
            context.format = "s16"
            context.layout = "mono"
            context.sample_rate = 8_000
        self._encoder.time_base = fractions.Fraction(1, 8_000)
        self._up = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self._down = av.AudioResampler(format="s16", layout="mono", rate=8_000)
        self._pts = 0

    def decode(self, payload: bytes) -> bytes:
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return b""
        return b"".join(
            bytes(r.planes[0])[: r.samples * 2] for f in frames for r in self._up.resample(f)
        )

    def encode(self, pcm: bytes) -> list[bytes]:
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = RATE
        frame.time_base = _TIME_BASE
        frame.pts = self._pts
        self._pts += len(pcm) // 2
        return [bytes(p) for low in self._down.resample(frame) for p in self._encoder.encode(low)]


def codec_for(payload_type: int) -> OpusCodec | G711Codec:
    """The codec of a leg by its payload type: G.711's static types, else Opus (WebRTC legs
    negotiate only Opus; node-to-node legs carry Opus)."""
    return G711Codec(payload_type) if payload_type in (0, 8) else OpusCodec()


def encode_tone(
    frequency: float, seconds: float = 1.0, amplitude: float = 0.2, payload_type: int = 111
) -> list[bytes]:
    """A tone as payloads of 20 ms each in the codec of `payload_type` (Opus by default):
    music on hold, benchmark callers."""
    codec = codec_for(payload_type)
    samples = sine(frequency, int(RATE * seconds), amplitude=amplitude)
    payloads: list[bytes] = []
    for start in range(0, len(samples) - FRAME + 1, FRAME):
        payloads += codec.encode(samples[start : start + FRAME].tobytes())
    return payloads


class ToneTrack(MediaStreamTrack):
    """A stock aiortc audio track: a sine at `frequency`, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self._second = sine(frequency, RATE).tobytes()  # whole cycles for 1 Hz multiples
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._pts / RATE - time.monotonic()))
        offset = (self._pts % RATE) * 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(self._second[offset : offset + FRAME * 2])
        frame.sample_rate = RATE
        frame.time_base = _TIME_BASE
        frame.pts = self._pts
        self._pts += FRAME
        return frame


class ToneClient:
    """A stock aiortc peer (as a browser would be): offers audio, sends a tone, keeps the last
    `keep_s` seconds of what it hears as 48 kHz mono samples."""

    def __init__(self, frequency: float, host: str = "", keep_s: float = 2.0) -> None:
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._host = host
        self._keep = int(RATE * keep_s)
        self.heard = array("h")
        self.frames = 0
        self.closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._pc.addTrack(ToneTrack(frequency))
        self._pc.on("track", self._track)
        self._pc.on("connectionstatechange", self._state)

    async def offer(self) -> str:
        _opus_only(self._pc)
        if self._host:
            _only_host(self._pc, self._host)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return str(self._pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    @property
    def state(self) -> str:
        return str(self._pc.connectionState)

    def recent(self, seconds: float) -> array[int]:
        return self.heard[-int(RATE * seconds) :]

    def _state(self) -> None:
        if self._pc.connectionState in _CLOSED:
            self.closed.set()

    def _track(self, track: Any) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                self.frames += 1
                data = bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]
                samples = array("h", data)
                if len(frame.layout.channels) > 1:
                    samples = samples[:: len(frame.layout.channels)]
                self.heard.extend(samples)
                if len(self.heard) > 2 * self._keep:
                    del self.heard[: len(self.heard) - self._keep]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pc.close()
