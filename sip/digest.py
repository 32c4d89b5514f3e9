"""Digest authentication of a trunk (RFC 3261 22.4, RFC 2617 MD5 with qop=auth). Pure.

Nonces are stateless: `hex(time) + HMAC(secret, hex(time))`, so any later request can be checked
without remembering what was sent, and a nonce older than `NONCE_TTL_S` is refused as stale.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

NONCE_TTL_S = 300
_PARAM = re.compile(
    r'\s*(?P<name>[A-Za-z\-]+)\s*=\s*(?:"(?P<quoted>[^"]*)"|(?P<plain>[^\s,]+))\s*,?'
)


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str
    realm: str = "callmesh"

    def __post_init__(self) -> None:
        if not self.user or not self.password:
            raise ValueError("digest credentials need a user and a password")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def make_nonce(secret: bytes, now_s: float) -> str:
    stamp = f"{int(now_s):x}"
    return stamp + hmac.new(secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]


def nonce_age_s(secret: bytes, nonce: str, now_s: float) -> float | None:
    """How old a nonce this node made is; None when it did not make it."""
    stamp, mac = nonce[:-32], nonce[-32:]
    if not re.fullmatch(r"[0-9a-f]{1,16}", stamp):
        return None
    good = hmac.new(secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
    return now_s - int(stamp, 16) if hmac.compare_digest(good, mac) else None


def challenge(credentials: Credentials, secret: bytes, now_s: float, *, stale: bool) -> str:
    """The WWW-Authenticate value of a 401."""
    nonce = make_nonce(secret, now_s)
    extra = ", stale=true" if stale else ""
    return f'Digest realm="{credentials.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"{extra}'


def parse_authorization(value: str) -> dict[str, str] | None:
    """The parameters of a `Digest ...` Authorization value; None when it is not one."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            return None
        params[match["name"].lower()] = (
            match["quoted"] if match["quoted"] is not None else match["plain"]
        )
        position = match.end()
    return params


def response_for(
    credentials: Credentials, method: str, uri: str, nonce: str, nc: str = "", cnonce: str = ""
) -> str:
    """The digest a client computes (qop=auth when `cnonce` is given, else RFC 2069 style)."""
    ha1 = _md5(f"{credentials.user}:{credentials.realm}:{credentials.password}")
    ha2 = _md5(f"{method}:{uri}")
    if cnonce:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def verify(
    credentials: Credentials, secret: bytes, method: str, value: str | None, now_s: float
) -> str:
    """ "ok", "missing" (no usable Authorization: challenge), "stale" (an old nonce of ours:
    challenge with stale=true) or "wrong" (bad user or digest: challenge again)."""
    params = parse_authorization(value) if value else None
    if params is None:
        return "missing"
    needed = ("username", "realm", "nonce", "uri", "response")
    if any(name not in params for name in needed):
        return "missing"
    if params["username"] != credentials.user or params["realm"] != credentials.realm:
        return "wrong"
    nonce = params["nonce"]
    qop = params.get("qop", "")
    if qop not in ("", "auth"):
        return "wrong"
    expected = response_for(
        credentials,
        method,
        params["uri"],
        nonce,
        params.get("nc", "") if qop else "",
        params.get("cnonce", "") if qop else "",
    )
    if not hmac.compare_digest(expected, params["response"].lower()):
        return "wrong"
    age = nonce_age_s(secret, nonce, now_s)
    if age is None:
        return "wrong"
    return "ok" if 0 <= age <= NONCE_TTL_S else "stale"
