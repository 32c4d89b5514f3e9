"""SDP offers and answers, digest authentication, G.711 and RFC 4733: the pure parts."""

from __future__ import annotations

import numpy as np
import pytest

from media.tone import dominant
from sip import digest, g711, sdp
from sip.dtmf import DigitDetector, event_payload, parse_event
from sip.message import Malformed

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
    b"m=video 5000 RTP/AVP 96\r\n"
)
AUDIO = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 18 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n"
)


def test_an_offer_is_read_and_answered_with_its_first_g711_codec_and_events() -> None:
    offer = sdp.parse_offer(AUDIO)
    assert (offer.host, offer.port, offer.telephone_event) == ("10.0.0.9", 4000, 101)
    assert offer.codec() is sdp.Codec.PCMA
    assert offer.on_hold
    answer = sdp.answer(offer, "127.0.0.1", 20000, 7).decode()
    assert "m=audio 20000 RTP/AVP 8 101" in answer
    assert "a=recvonly" in answer  # a hold (sendonly) is answered recvonly


def test_offers_without_g711_are_not_acceptable_and_broken_ones_malformed() -> None:
    with pytest.raises(sdp.NotAcceptable):
        sdp.parse_offer(OFFER)
    with pytest.raises(sdp.NotAcceptable):
        sdp.parse_offer(AUDIO.replace(b"18 8 0 101", b"18 101")).codec()
    for broken in (b"garbage", AUDIO.replace(b"4000", b"x"), AUDIO.replace(b"IN IP4 10", b"IN X")):
        with pytest.raises(Malformed):
            sdp.parse_offer(broken)


def test_digest_accepts_the_right_response_and_tells_missing_wrong_and_stale_apart() -> None:
    creds = digest.Credentials("trunk1", "s3cret")
    secret, now = b"k" * 32, 1_000_000.0
    nonce = digest.make_nonce(secret, now)
    good = digest.response_for(creds, "INVITE", "sip:1@h", nonce, "00000001", "c0ffee")

    def header(response: str, nonce: str = nonce) -> str:
        return (
            f'Digest username="trunk1", realm="callmesh", nonce="{nonce}", uri="sip:1@h", '
            f'response="{response}", qop=auth, nc=00000001, cnonce="c0ffee", algorithm=MD5'
        )

    assert digest.verify(creds, secret, "INVITE", header(good), now + 1) == "ok"
    assert digest.verify(creds, secret, "INVITE", None, now) == "missing"
    assert digest.verify(creds, secret, "INVITE", header("0" * 32), now) == "wrong"
    assert digest.verify(creds, secret, "INVITE", header(good), now + 301) == "stale"
    forged = "1" + nonce[1:]
    forged_good = digest.response_for(creds, "INVITE", "sip:1@h", forged, "00000001", "c0ffee")
    assert digest.verify(creds, secret, "INVITE", header(forged_good, forged), now) == "wrong"


def test_g711_round_trips_a_tone_that_is_still_found_by_frequency() -> None:
    t = np.arange(1600) / 8000
    pcm = (np.sin(2 * np.pi * 1000 * t) * 12000).astype(np.int16)
    for encode, decode in (
        (g711.ulaw_encode, g711.ulaw_decode),
        (g711.alaw_encode, g711.alaw_decode),
    ):
        coded = encode(pcm)
        assert len(coded) == 1600
        back = decode(coded)
        assert np.max(np.abs(back.astype(np.int32) - pcm)) < 400  # 8-bit companding
        assert dominant(back.tolist(), [400.0, 1000.0, 2000.0], 8000) == 1000.0
    assert g711.ulaw_encode(np.array([0], dtype=np.int16)) == b"\xff"  # G.711 reference values
    assert g711.alaw_encode(np.array([0], dtype=np.int16)) == b"\xd5"


def test_a_digit_is_reported_once_per_event_however_often_it_is_repeated() -> None:
    detector = DigitDetector()
    start = event_payload("5", end=False, duration=160)
    end = event_payload("5", end=True, duration=800)
    seen = [detector.feed(1000, p) for p in (start, start, end, end, end)]
    seen += [
        detector.feed(2000, event_payload("#", end=True, duration=160)),
        detector.feed(3, b"x"),
    ]
    assert "".join(seen) == "5#"
    assert parse_event(end).end
    assert parse_event(end).duration == 800
