from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import MalformedRtp, Outbound, Receiving, build, is_rtcp, parse


def packet(seq: int, ts: int, ssrc: int = 0x1234, pt: int = 111, payload: bytes = b"op") -> bytes:
    return build(payload, payload_type=pt, sequence=seq, timestamp=ts, ssrc=ssrc)


def with_extension_csrc_and_padding(seq: int) -> bytes:
    first = 0x80 | 0x20 | 0x10 | 1  # padding, extension, one CSRC
    header = struct.pack("!BBHII", first, 0x80 | 111, seq, 5000, 77)
    csrc = struct.pack("!I", 99)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\x00\x00"
    return header + csrc + extension + b"PAYLOAD" + b"\x00\x00\x03"


def test_parse_finds_the_payload_after_csrcs_and_extension_and_before_padding() -> None:
    data = with_extension_csrc_and_padding(7)
    header = parse(data)
    assert (header.marker, header.payload_type, header.sequence, header.timestamp) == (
        True,
        111,
        7,
        5000,
    )
    assert header.ssrc == 77
    assert data[header.payload_offset : header.payload_end] == b"PAYLOAD"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80\x6f", "shorter"),
        (b"\x40" + bytes(11), "version"),
        (bytes([0x90]) + bytes(11), "extension"),
        (bytes([0xA0]) + bytes(11) + b"\x00", "padding"),
        (bytes([0x8F]) + bytes(11), "longer"),
    ],
)
def test_parse_refuses_what_is_not_rtp(data: bytes, why: str) -> None:
    with pytest.raises(MalformedRtp, match=why):
        parse(data)


def test_rtcp_is_told_from_rtp() -> None:
    assert is_rtcp(b"\x80\xc8" + bytes(6))  # sender report
    assert not is_rtcp(packet(1, 1))


def test_a_rewritten_packet_carries_the_legs_ssrc_and_type_and_drops_extensions() -> None:
    out = Outbound(0xAAAA, 96, first_sequence=100, first_timestamp=1000)
    data = with_extension_csrc_and_padding(7)
    rewritten = out.rewrite(data, parse(data), now_ms=0)
    header = parse(rewritten)
    assert (header.ssrc, header.payload_type, header.sequence, header.timestamp) == (
        0xAAAA,
        96,
        100,
        1000,
    )
    assert header.marker
    assert rewritten[header.payload_offset :] == b"PAYLOAD"
    assert len(rewritten) == 12 + len(b"PAYLOAD")


def test_numbers_follow_the_source_and_stay_continuous_when_the_source_changes() -> None:
    out = Outbound(1, 111, first_sequence=65534, first_timestamp=2**32 - 960)
    first = [
        out.rewrite(p, parse(p), now_ms=20 * i)
        for i, p in enumerate(packet(500 + i, 90_000 + 960 * i, ssrc=5) for i in range(3))
    ]
    assert [parse(p).sequence for p in first] == [65534, 65535, 0]
    assert [parse(p).timestamp for p in first] == [2**32 - 960, 0, 960]
    # another source 1 s later: the sequence goes on, the timestamp jumps by the wall time
    p = packet(7, 123, ssrc=6)
    later = parse(out.rewrite(p, parse(p), now_ms=40 + 1000))
    assert later.sequence == 1
    assert later.timestamp == 960 + 48_000
    made = parse(out.next_packet(b"moh", now_ms=1060))
    assert made.sequence == 2
    assert made.timestamp == later.timestamp + 960


def test_a_late_packet_keeps_its_place() -> None:
    out = Outbound(1, 111)
    sent = {}
    for seq in (10, 12, 11, 13):
        p = packet(seq, seq * 960)
        sent[seq] = parse(out.rewrite(p, parse(p), now_ms=seq * 20)).sequence
    assert [sent[s] for s in (10, 11, 12, 13)] == [0, 1, 2, 3]


@given(st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=50), st.integers(0, 2**16 - 1))
def test_within_one_source_the_sequence_distance_is_kept(offsets: list[int], start: int) -> None:
    out = Outbound(1, 111, first_sequence=start)
    base = 40_000
    first = None
    for i, off in enumerate(offsets):
        seq = (base + off % 300) % 2**16
        p = packet(seq, 1)
        got = parse(out.rewrite(p, parse(p), now_ms=i)).sequence
        if first is None:
            first = (got - seq) % 2**16
        assert (got - seq) % 2**16 == first


def test_receive_statistics_count_loss_across_a_wrap_and_measure_jitter() -> None:
    stats = Receiving()
    for i, seq in enumerate(s % 2**16 for s in range(65530, 65545)):
        if seq in (65533, 2):
            continue  # two lost
        arrival = 20.0 * i + (5 if i % 2 else 0)  # 5 ms of jitter every other packet
        stats.update(parse(packet(seq, 960 * i)), 100, arrival)
    snap = stats.snapshot()
    assert (snap.packets, snap.lost, snap.bytes) == (13, 2, 1300)
    assert 0.001 < snap.jitter_s < 0.006
    assert Receiving().snapshot().lost == 0
