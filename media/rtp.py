"""RTP headers (RFC 3550) for forwarding between legs: parse, rewrite, receive statistics. Pure.

A forwarded packet keeps its payload; its header is rebuilt for the leg it leaves on (that
leg's SSRC and payload type, a sequence number and timestamp continuous on that leg even when
the source behind it changes), without CSRCs or header extensions: their ids are negotiated per
leg, so they would mean something else on the other side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!BBHII")
MIN_HEADER = HEADER.size  # 12 bytes
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


class MalformedRtp(ValueError):
    code = "malformed_rtp"


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The fields of one RTP header the forwarder needs; `payload_offset` is where the payload
    starts (after CSRCs and the extension), `payload_end` where padding begins."""

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload_offset: int
    payload_end: int


def is_rtcp(packet: bytes) -> bool:
    """RTCP packet types 192-223 share the port with RTP (RFC 5761)."""
    return len(packet) >= 2 and 192 <= packet[1] <= 223


def parse(packet: bytes) -> RtpHeader:
    """The header of an RTP packet; MalformedRtp when it is not one."""
    if len(packet) < MIN_HEADER:
        raise MalformedRtp(f"{len(packet)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(packet)
    if first >> 6 != 2:
        raise MalformedRtp(f"RTP version {first >> 6}, not 2")
    offset = MIN_HEADER + 4 * (first & 0x0F)
    if first & 0x10:
        if len(packet) < offset + 4:
            raise MalformedRtp("header extension cut short")
        words = int.from_bytes(packet[offset + 2 : offset + 4], "big")
        offset += 4 + 4 * words
    end = len(packet)
    if first & 0x20:
        if end == 0 or packet[-1] == 0:
            raise MalformedRtp("padding length of zero")
        end -= packet[-1]
    if offset > end:
        raise MalformedRtp("header longer than the packet")
    return RtpHeader(bool(second & 0x80), second & 0x7F, sequence, timestamp, ssrc, offset, end)


def build(
    payload: bytes | memoryview,
    *,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    marker: bool = False,
) -> bytes:
    """A plain RTP packet: a 12-byte header and the payload."""
    return (
        HEADER.pack(
            0x80,
            (0x80 if marker else 0) | (payload_type & 0x7F),
            sequence % SEQ_MOD,
            timestamp % TS_MOD,
            ssrc,
        )
        + payload
    )


class Outbound:
    """One leg's outgoing stream: its SSRC and payload type, and the sequence numbers and
    timestamps it has sent. Packets from any source are renumbered onto it; when the source
    changes (another leg, music on hold), the numbers go on from where the last source left
    them, with a timestamp jump of the wall time between (at least one frame)."""

    __slots__ = (
        "_last_ms",
        "_last_ts",
        "_seq",
        "_seq_off",
        "_source",
        "_ts_off",
        "clock_rate",
        "frame",
        "payload_type",
        "ssrc",
    )

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        *,
        first_sequence: int = 0,
        first_timestamp: int = 0,
        clock_rate: int = 48_000,
        frame: int = 960,
    ) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.frame = frame
        self._source: int | None = None
        self._seq_off = 0
        self._ts_off = 0
        self._seq = (first_sequence - 1) % SEQ_MOD  # the last sequence number sent
        self._last_ts = (first_timestamp - frame) % TS_MOD
        self._last_ms = 0

    def rewrite(self, packet: bytes, header: RtpHeader, now_ms: int, source: int = -1) -> bytes:
        """`packet` (whose parsed header is `header`) as this stream's next packet; `source`
        tells senders apart when they share an SSRC (by default the SSRC does)."""
        key = header.ssrc if source == -1 else source
        if key != self._source:
            self._switch(key, header, now_ms)
        sequence = (header.sequence + self._seq_off) % SEQ_MOD
        timestamp = (header.timestamp + self._ts_off) % TS_MOD
        if (sequence - self._seq) % SEQ_MOD < SEQ_MOD // 2:  # newer: not a late one
            self._seq, self._last_ts, self._last_ms = sequence, timestamp, now_ms
        return (
            HEADER.pack(
                0x80,
                (0x80 if header.marker else 0) | self.payload_type,
                sequence,
                timestamp,
                self.ssrc,
            )
            + packet[header.payload_offset : header.payload_end]
        )

    def next_packet(self, payload: bytes, now_ms: int, samples: int = 0, source: int = -2) -> bytes:
        """A packet this node makes (music on hold, a prompt): the stream's next numbers."""
        samples = samples or self.frame
        if source != self._source:
            self._source = source
            gap = max(samples, (now_ms - self._last_ms) * self.clock_rate // 1000)
            self._last_ts = (self._last_ts + gap - samples) % TS_MOD
        self._seq = (self._seq + 1) % SEQ_MOD
        self._last_ts = (self._last_ts + samples) % TS_MOD
        self._last_ms = now_ms
        return build(
            payload,
            payload_type=self.payload_type,
            sequence=self._seq,
            timestamp=self._last_ts,
            ssrc=self.ssrc,
        )

    def _switch(self, key: int, header: RtpHeader, now_ms: int) -> None:
        elapsed = (now_ms - self._last_ms) * self.clock_rate // 1000
        gap = max(self.frame, elapsed) if self._source is not None else self.frame
        self._source = key
        self._seq_off = (self._seq + 1 - header.sequence) % SEQ_MOD
        self._ts_off = (self._last_ts + gap - header.timestamp) % TS_MOD


@dataclass(frozen=True, slots=True)
class StreamStats:
    """What one leg has received: RFC 3550's counts and interarrival jitter (in seconds)."""

    packets: int
    bytes: int
    lost: int
    jitter_s: float


class Receiving:
    """Receive statistics of one incoming stream (RFC 3550 A.1 and A.8), updated per packet."""

    __slots__ = ("_base", "_cycles", "_max", "_transit", "bytes", "clock_rate", "jitter", "packets")

    def __init__(self, clock_rate: int = 48_000) -> None:
        self.clock_rate = clock_rate
        self.packets = 0
        self.bytes = 0
        self.jitter = 0.0  # in timestamp units
        self._base = -1
        self._max = 0
        self._cycles = 0
        self._transit: int | None = None

    def update(self, header: RtpHeader, size: int, arrival_ms: float) -> None:
        seq = header.sequence
        if self._base < 0:
            self._base, self._max = seq, seq
        else:
            delta = (seq - self._max) % SEQ_MOD
            if 0 < delta < SEQ_MOD // 2:
                if seq < self._max:
                    self._cycles += SEQ_MOD
                self._max = seq
        self.packets += 1
        self.bytes += size
        transit = int(arrival_ms * self.clock_rate / 1000) - header.timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < TS_MOD // 2:
                self.jitter += (d - self.jitter) / 16
        self._transit = transit

    @property
    def expected(self) -> int:
        return 0 if self._base < 0 else self._cycles + self._max - self._base + 1

    def snapshot(self) -> StreamStats:
        return StreamStats(
            self.packets,
            self.bytes,
            max(0, self.expected - self.packets),
            self.jitter / self.clock_rate,
        )
