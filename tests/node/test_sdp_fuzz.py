"""Hostile SDP wherever SDP comes from outside: WebRTC offers (POST /calls, an agent page's POST
/agents/A/media: media/offer.py, media/peer.py `PeerLeg.answering`) and the SIP trunk's offers
(sip/sdp.py `parse_offer`). Every input is answered or refused with the module's own error and a
message; nothing else escapes. Over a real node: a sample of bad offers gets 400 bad_sdp naming
the problem, no call is created for them, and the node goes on serving calls."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.offer import MAX_LINE, BadSdp, check_offer
from media.peer import PeerLeg, ToneClient
from node.localcluster import LocalCluster, SitePlan
from sip.message import Malformed
from sip.sdp import NotAcceptable, answer, parse_offer
from tests.node.test_cluster import Client, eventually

HOST = "127.0.0.1"
FINGERPRINT = re.compile(r"a=fingerprint:[^\r\n]*")


async def _offer() -> str:
    client = ToneClient(440.0, HOST)
    try:
        return await client.offer()
    finally:
        await client.close()


@pytest.fixture(scope="module")
def offer() -> str:
    """A valid WebRTC offer, as aiortc (the tests' stand-in for a browser) makes it."""
    return asyncio.run(_offer())


def lines_of(sdp: str) -> list[str]:
    return sdp.split("\r\n")


# -- the ways an offer goes wrong ---------------------------------------------------------------


def bad_offers(valid: str) -> dict[str, tuple[str, str]]:
    """Named broken offers and the words the refusal must carry."""
    lines = lines_of(valid)
    return {
        "empty": ("", "v=0"),
        "garbage": ("\x00\xff not sdp at all", "TYPE=VALUE"),
        "truncated": (valid[: len(valid) // 3], "no"),
        "no m= line": ("\r\n".join(x for x in lines if not x.startswith("m=")), "m=audio"),
        "video only": (valid.replace("m=audio", "m=video"), "m=audio"),
        "huge line": (valid + "a=x-" + "y" * (MAX_LINE + 10) + "\r\n", "characters"),
        "huge offer": (valid + ("a=x-" + "y" * 1000 + "\r\n") * 25, "characters"),
        "no fingerprint": (FINGERPRINT.sub("", valid), "fingerprint"),
        "bad fingerprint": (FINGERPRINT.sub("a=fingerprint:sha-256 ZZ:00", valid), "fingerprint"),
        "unknown digest": (FINGERPRINT.sub("a=fingerprint:md7 00:11", valid), "fingerprint"),
        "unknown codec": (re.sub(r"opus/48000/2", "x-codec/8000", valid), "Opus"),
        "no ice": (re.sub(r"a=ice-(ufrag|pwd):[^\r]*\r\n", "", valid), "ice-ufrag"),
        "bad port": (re.sub(r"m=audio \d+", "m=audio 99999", valid), "port"),
        "bad setup": (valid.replace("a=setup:actpass", "a=setup:sideways"), "setup"),
        "too many candidates": (
            valid.replace(
                "a=end-of-candidates", "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n" * 40
            ),
            "candidates",
        ),
    }


def test_every_named_bad_offer_is_refused_with_a_message(offer: str) -> None:
    check_offer(offer)  # the valid one passes
    for name, (sdp, words) in bad_offers(offer).items():
        with pytest.raises(BadSdp) as refused:
            check_offer(sdp)
        assert words in str(refused.value), (name, str(refused.value))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_any_text_is_an_offer_or_a_bad_sdp(text: str) -> None:
    message = "accepted"
    try:
        check_offer(text)
    except BadSdp as error:
        message = str(error)
    assert message


def mutations(valid: str) -> st.SearchStrategy[str]:
    """Truncations, line deletions, duplications and replacements, huge lines, random bytes."""
    lines = lines_of(valid)
    index = st.integers(0, len(lines) - 1)
    junk = st.text(max_size=60) | st.sampled_from(
        ["m=audio 0 RTP/AVP", "a=rtpmap:96 opus", "a=fingerprint:sha-256", "m=", "a=", "c=IN"]
    )

    def delete(i: int) -> str:
        return "\r\n".join(lines[:i] + lines[i + 1 :])

    def replace(i: int, text: str) -> str:
        return "\r\n".join([*lines[:i], text, *lines[i + 1 :]])

    def duplicate(i: int, times: int) -> str:
        return "\r\n".join(lines[:i] + [lines[i]] * times + lines[i:])

    def long_line(i: int, size: int) -> str:
        return replace(i, lines[i] + "x" * size)

    return st.one_of(
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        index.map(delete),
        st.builds(replace, index, junk),
        st.builds(duplicate, index, st.integers(2, 50)),
        st.builds(long_line, index, st.integers(100, 25_000)),
        st.lists(index, max_size=6).map(
            lambda drop: "\r\n".join(x for i, x in enumerate(lines) if i not in drop)
        ),
    )


def test_mutated_offers_are_answered_or_refused_by_a_real_leg(offer: str) -> None:
    """PeerLeg.answering (aiortc behind the check) on mutated offers: a leg with an answer, or
    BadSdp; never another exception, never a hang."""
    outcomes = {"answered": 0, "refused": 0, "silent": 0}

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(mutations(offer))
    def run(sdp: str) -> None:
        async def answer_it() -> None:
            try:
                leg = await asyncio.wait_for(PeerLeg.answering(sdp, HOST), 10)
            except BadSdp as error:
                outcomes["refused"] += 1
                outcomes["silent"] += not str(error)
                return
            assert "m=audio" in leg.local_sdp
            outcomes["answered"] += 1
            await leg.close()

        asyncio.run(answer_it())

    run()
    assert outcomes["refused"] > 0
    assert outcomes["answered"] > 0, "no mutation reached aiortc"
    assert outcomes["silent"] == 0, "a refusal without a message"


# -- SIP offers (sip/sdp.py; read-only here) ------------------------------------------------------

SIP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
)


SIP_JUNK = [
    b"m=audio 99999 RTP/AVP 0",
    b"m=audio 1 RTP/AVP 300",
    b"c=IN IP4 nowhere",
    b"a=rtpmap:0 PCMU",
    b"m=video 1 RTP/AVP 0",
    b"a=recvonly",
    b"c=IN IP6 ::1",
    b"m=audio 4000 RTP/AVP 96",
    b"m=audio 4000/2 RTP/AVP 0",
]


def sip_mutations() -> st.SearchStrategy[bytes]:
    lines = SIP_OFFER.split(b"\r\n")
    index = st.integers(0, len(lines) - 1)
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(SIP_OFFER)).map(lambda n: SIP_OFFER[:n]),
        st.builds(
            lambda i, junk: b"\r\n".join([*lines[:i], junk, *lines[i + 1 :]]),
            index,
            st.binary(max_size=80)
            | st.sampled_from(
                [
                    b"m=audio 99999 RTP/AVP 0",
                    b"m=audio 1 RTP/AVP 300",
                    b"c=IN IP4 nowhere",
                    b"a=rtpmap:0 PCMU",
                    b"m=video 1 RTP/AVP 0",
                    b"a=recvonly",
                    b"c=IN IP6 ::1",
                    b"m=audio 4000 RTP/AVP 96",
                    b"m=audio 4000/2 RTP/AVP 0",
                ]
            ),
        ),
        st.integers(8_000, 10_000).map(lambda n: SIP_OFFER + b"a=" + b"x" * n + b"\r\n"),
    )


@settings(max_examples=500, deadline=None)
@given(sip_mutations())
def test_sip_offers_parse_or_fail_with_malformed_or_not_acceptable(body: bytes) -> None:
    try:
        parsed = parse_offer(body)
    except (Malformed, NotAcceptable) as error:
        message = str(error)
        assert message
        return
    assert 0 <= parsed.port <= 65535
    try:
        reply = answer(parsed, "192.0.2.9", 5000, 1)
    except NotAcceptable:
        return  # no G.711 in it: the trunk answers 488
    assert b"m=audio 5000 RTP/AVP" in reply


# -- over a real node -------------------------------------------------------------------------


async def test_a_node_refuses_bad_offers_with_400_and_keeps_serving_calls(tmp_path: Path) -> None:
    valid = await _offer()
    sample = bad_offers(valid)
    async with (
        LocalCluster([SitePlan("site-a", "inhouse", 1)], tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        [node] = client.nodes()
        await client.login(node, "ann")
        _, before = await client.get(node, "/records")
        for name, (sdp, words) in sample.items():
            for path, body in (
                ("/calls", {"queue": "sales", "sdp": sdp}),
                ("/agents/ann/media", {"sdp": sdp}),
            ):
                status, reply = await client.post(node, path, body)
                assert status == 400, (name, path, reply)
                assert reply["error"] == "bad_sdp", (name, reply)
                assert words in reply["message"], (name, reply["message"])
        status, reply = await client.post(node, "/calls", {"queue": "sales", "sdp": 17})
        assert status == 400
        assert "sdp must be a string" in reply["message"]
        _, after = await client.get(node, "/records")
        assert len(after) == len(before), "a refused offer left a call behind"
        assert await client.ready(node)
        # the node still answers a good offer, and that call ends with one outcome
        caller = ToneClient(440.0, HOST)
        try:
            status, call = await client.post(
                node, "/calls", {"queue": "sales", "sdp": await caller.offer()}
            )
            assert status == 201, call
            await caller.accept(call["sdp"])
            status, _ = await client.post(node, f"/calls/{call['call_id']}/hangup")
            assert status == 200

            async def ended() -> bool:
                status, shown = await client.get(node, f"/calls/{call['call_id']}")
                return status == 200 and shown.get("outcome") not in (None, "")

            await eventually(ended, 10, "the good call's outcome")
        finally:
            await caller.close()
