"""Checks on a WebRTC offer from outside (a caller's or an agent page's), before aiortc sees it.

Pure. aiortc accepts some broken offers without a word (no DTLS fingerprint: the connection
then fails later, in a background task) and refuses others with messages that name nothing
(an empty ValueError for a bad port). `check_offer` names what is wrong instead, so the HTTP
edge can answer 400 with a message a client can act on. What it demands is what the node needs:
a complete offer (no trickled candidates) with an Opus audio stream, ICE credentials and a DTLS
fingerprint.
"""

from __future__ import annotations

import re

MAX_SDP = 20_000
"""The longest offer taken, in characters."""
MAX_LINE = 2_048
"""The longest line taken (a browser's longest lines, fingerprints, are ~200 characters)."""
MAX_CANDIDATES = 32
"""ICE candidates per offer (aioice resolves each mDNS name, up to a second each)."""

_DIGESTS = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
_ACCEPTED_DIGESTS = ("sha-256", "sha-384", "sha-512")  # what aiortc's DTLS can verify
_SETUP = ("actpass", "active", "passive")
_LINE = re.compile(r"[a-z]=[^\x00-\x08\x0a-\x1f\x7f]*")
_MEDIA = re.compile(
    r"(?P<kind>[a-z]+) (?P<port>\d{1,5})(?:/\d{1,3})? (?P<proto>\S+)(?P<fmts>( \S+)+)"
)
_RTPMAP = re.compile(r"rtpmap:(?P<pt>\d{1,3}) (?P<name>[A-Za-z0-9_.\-]+)/\d+(?:/\d+)?")
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")


class BadSdp(ValueError):
    """An offer the node cannot answer; the message says why (HTTP 400)."""

    code = "bad_sdp"


def check_offer(sdp: object) -> None:
    """Raise BadSdp naming the first problem of this offer; return when it is answerable."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadSdp("sdp must be a WebRTC offer (text starting with v=0)")
    if len(sdp) > MAX_SDP:
        raise BadSdp(f"sdp is {len(sdp)} characters, over the {MAX_SDP} taken")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE:
            raise BadSdp(f"sdp line {number} is {len(line)} characters, over the {MAX_LINE} taken")
        if not _LINE.fullmatch(line):
            raise BadSdp(f"sdp line {number} {line[:40]!r} is not TYPE=VALUE")
    if lines[0] != "v=0":
        raise BadSdp(f"sdp must start with v=0, not {lines[0][:40]!r}")
    session, sections = _sections(lines)
    audio = [s for s in sections if s[0].startswith("m=audio ")]
    if not audio:
        raise BadSdp("the offer has no audio stream (no m=audio line)")
    candidates = sum(line.startswith("a=candidate:") for line in lines)
    if candidates > MAX_CANDIDATES:
        raise BadSdp(f"the offer has {candidates} ICE candidates, over the {MAX_CANDIDATES} taken")
    for section in sections:
        _check_media_line(section[0])
    _check_audio(audio[0])
    for attribute in ("ice-ufrag", "ice-pwd"):
        if _attribute(session, audio[0], attribute) is None:
            raise BadSdp(f"the offer has no a={attribute} (ICE credentials)")
    _check_dtls(session, audio[0])


def _sections(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """The session-level lines and each media section (its m= line first)."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _check_media_line(line: str) -> None:
    match = _MEDIA.fullmatch(line[2:])
    if match is None:
        raise BadSdp(f"media line {line[:60]!r} is not m=KIND PORT PROTO FORMATS")
    if int(match["port"]) > 65535:
        raise BadSdp(f"media line {line[:60]!r}: port {match['port']} is over 65535")
    if "RTP" in match["proto"] and not all(
        f.isdigit() and int(f) < 128 for f in match["fmts"].split()
    ):
        raise BadSdp(f"media line {line[:60]!r}: formats must be RTP payload types 0-127")


def _check_audio(section: list[str]) -> None:
    names: dict[int, str] = {}
    for line in section[1:]:
        if line.startswith("a=rtpmap:"):
            match = _RTPMAP.fullmatch(line[2:])
            if match is None:
                raise BadSdp(f"{line[:60]!r} is not a=rtpmap:PT NAME/RATE")
            names[int(match["pt"])] = match["name"].lower()
    formats = [int(f) for f in section[0].split()[3:]]
    if not any(names.get(pt) == "opus" for pt in formats):
        offered = ", ".join(names.get(pt, str(pt)) for pt in formats)
        raise BadSdp(f"the audio stream offers no Opus (the node speaks Opus): offered {offered}")


def _attribute(session: list[str], section: list[str], name: str) -> str | None:
    """An attribute's value at the media level, else the session level."""
    for lines in (section, session):
        for line in lines:
            if line.startswith(f"a={name}:"):
                return line[len(name) + 3 :]
    return None


def _check_dtls(session: list[str], section: list[str]) -> None:
    prints = [
        line[len("a=fingerprint:") :]
        for line in (*section, *session)
        if line.startswith("a=fingerprint:")
    ]
    if not prints:
        raise BadSdp("the offer has no a=fingerprint (the DTLS certificate's digest)")
    for value in prints:
        algorithm, _, digest = value.strip().partition(" ")
        size = _DIGESTS.get(algorithm.lower())
        if size is None:
            raise BadSdp(f"fingerprint algorithm {algorithm[:20]!r} is unknown")
        pairs = digest.strip().split(":")
        if len(pairs) != size or not all(_HEX_PAIR.fullmatch(p) for p in pairs):
            raise BadSdp(f"a=fingerprint:{algorithm} must be {size} hex bytes separated by colons")
    if not any(v.split(" ")[0].lower() in _ACCEPTED_DIGESTS for v in prints):
        raise BadSdp("the offer needs a sha-256, sha-384 or sha-512 fingerprint")
    setup = _attribute(session, section, "setup")
    if setup is not None and setup.strip() not in _SETUP:
        raise BadSdp(f"a=setup must be one of {', '.join(_SETUP)}, not {setup[:20]!r}")
