"""The SIP parser: what it takes, what it refuses (and whether a 400 can be sent), and that no
input makes it raise anything but Malformed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.message import Malformed, Reply, Request, Response, parse, render_response, tag_of

INVITE = (
    b"INVITE sip:+4930100@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1;rport\r\n"
    b"f: <sip:+4930555@127.0.0.1>;tag=abc\r\n"
    b"To: <sip:+4930100@127.0.0.1>\r\n"
    b"Call-ID: c1@x\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 4\r\n\r\nv=0\r\nEXTRA"
)


def test_a_request_is_read_with_compact_headers_and_its_body_cut_to_content_length() -> None:
    request = parse(INVITE)
    assert isinstance(request, Request)
    assert (request.method, request.uri, request.call_id) == (
        "INVITE",
        "sip:+4930100@127.0.0.1:5060",
        "c1@x",
    )
    assert request.cseq == (1, "INVITE")
    assert request.from_tag == "abc"
    assert request.to_tag == ""
    assert request.branch == "z9hG4bK1"
    assert request.body == b"v=0\r"


def test_a_response_is_read() -> None:
    data = render_response(parse(INVITE).reply_headers(), Reply(180, "xyz"))  # type: ignore[union-attr]
    response = parse(data)
    assert isinstance(response, Response)
    assert response.status == 180
    assert tag_of(response.header("to") or "") == "xyz"


@pytest.mark.parametrize(
    ("change", "answerable"),
    [
        ((b"CSeq: 1 INVITE", b"CSeq: one INVITE"), True),
        ((b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), True),
        ((b"Content-Length: 4", b"Content-Length: 400"), True),
        ((b"Content-Length: 4", b"Content-Length: -5"), True),
        ((b"Max-Forwards: 70", b"Max-Forwards: lots"), True),
        ((b"sip:+4930100@127.0.0.1:5060 SIP/2.0", b"sip:x HTTP/1.1"), False),
        ((b"INVITE sip:", b"IN<VITE sip:"), True),
        ((b"sip:+4930100@127.0.0.1:5060 SIP", b"http://x SIP"), True),
        ((b"Call-ID: c1@x\r\n", b""), False),
        ((b"127.0.0.1:5999", b"127.0.0.1:99999999"), False),  # aiosipua's UDP socket died
        ((b"Via: SIP/2.0/UDP", b"Via: junk"), False),
        ((b"Max-Forwards: 70\r\n", b"No colon here\r\n"), False),
    ],
)
def test_malformed_requests_are_refused_with_400_when_they_can_be_answered(
    change: tuple[bytes, bytes], answerable: bool
) -> None:
    with pytest.raises(Malformed) as caught:
        parse(INVITE.replace(*change))
    assert (caught.value.reply_to is not None) is answerable


def test_garbage_and_oversized_messages_are_dropped() -> None:
    for data in (b"", b"\x00\xff\xfe", b"\r\n\r\n", b"x" * 70_000, b"SIP/2.0 abc OK\r\n\r\n"):
        with pytest.raises(Malformed) as caught:
            parse(data)
        assert caught.value.reply_to is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, len(INVITE)))
def test_no_input_raises_anything_but_malformed(noise: bytes, at: int) -> None:
    for data in (noise, INVITE[:at] + noise + INVITE[at:], INVITE[:at]):
        try:
            message = parse(data)
        except Malformed:
            continue
        if isinstance(message, Request):  # whatever parses can be answered
            render_response(message.reply_headers(), Reply(400))
            assert message.branch is not None


def test_header_values_cannot_inject_lines_into_a_response() -> None:
    request = parse(INVITE)
    assert isinstance(request, Request)
    data = render_response(request.reply_headers(), Reply(400, headers=(("warning", "a\r\nX: y"),)))
    assert b"\r\nX: y" not in data
