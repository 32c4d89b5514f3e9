"""Signed tokens: what one carries (`Claims`), issuing and verifying them with the sites' Ed25519
keys (node/sitekeys.py), where a token counts (`Audience`) and what a site may grant
(`out_of_scope`, `revocation_out_of_scope`). Pure.

- A token is `v2.<payload>.<signature>`: base64url JSON {user, role, expiry, call, id, issued,
  site, audience} signed with the issuing site's Ed25519 key; every node holds every site's
  public key, so any node verifies any token.
- A token counts only at the sites of its audience (`outside_audience`; 401 elsewhere), so a
  token shown to one site cannot be replayed at another. By default (`default_audience`) an
  in-house site's tokens count at the in-house sites, a partner site's at its own site (its own
  agents' in-house too), a caller token at its call's site; a login may ask for other sites
  (`asked_audience`), e.g. an in-house supervisor's token for one partner site only. A token
  without an audience (issued before tokens had one) counts nowhere: log in again.
- What a site may grant is bounded by its trust (`out_of_scope`): an in-house site anything; a
  partner site's tokens count elsewhere only for its own agents (the users file names each
  agent's site) with role agent, so a partner node cannot mint a supervisor's or an admin's
  token for an in-house node. Revocation pushes are bounded alike (`revocation_out_of_scope`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from node.revocations import Kind, Revocation
from node.sitekeys import BadSignature, SiteKeys
from node.users import Role, User
from registry.errors import InvalidRecord
from registry.records import Trust, check_id

TOKEN_VERSION = "v2"
MAX_TOKEN = 2048
MAX_AUDIENCE = 32
INHOUSE_SITES = "@inhouse"
"""In a token's audience: every in-house site (no site name starts with @)."""


class AuthError(Exception):
    """No token, a malformed one or a bad signature: 401."""

    code = "unauthorized"


class TokenExpired(AuthError):
    code = "token_expired"


class TokenRevoked(AuthError):
    code = "token_revoked"


class WrongAudience(AuthError):
    """A valid token presented at a site its audience does not name: 401."""

    code = "wrong_audience"


class BadAudience(Exception):
    """A login asking for an audience that is no list of known sites: 400."""

    code = "bad_request"


class OutOfScope(AuthError):
    """A token or push signed by a known site that claims more than that site may grant: 403."""

    code = "out_of_scope"


@dataclass(frozen=True, slots=True)
class Audience:
    """Where a token may be used: the sites it names, and every in-house site (by the ring of
    the node that checks it) when `inhouse`. Empty: nowhere (a token from before audiences)."""

    sites: frozenset[str] = frozenset()
    inhouse: bool = False

    def admits(self, site: str, trust: Trust) -> bool:
        return site in self.sites or (self.inhouse and trust is Trust.INHOUSE)

    def wire(self) -> list[str]:
        return ([INHOUSE_SITES] if self.inhouse else []) + sorted(self.sites)

    @classmethod
    def from_wire(cls, value: object) -> Audience:
        """Raises ValueError for anything but a list of site names (and INHOUSE_SITES)."""
        if not isinstance(value, list) or len(value) > MAX_AUDIENCE:
            raise ValueError("audience: a list of sites expected")
        if not all(isinstance(name, str) for name in value):
            raise ValueError("audience: site names (strings) expected")
        names = set(value)
        for name in names - {INHOUSE_SITES}:
            try:
                check_id("audience site", name)
            except InvalidRecord as error:
                raise ValueError(str(error)) from None
        return cls(frozenset(names - {INHOUSE_SITES}), INHOUSE_SITES in names)

    def __str__(self) -> str:
        parts = ["the in-house sites"] if self.inhouse else []
        if self.sites:
            parts.append(", ".join(sorted(self.sites)))
        return " and ".join(parts) or "no site"


def default_audience(role: Role, user: User | None, issuer: str, trust: Trust) -> Audience:
    """Where a token this site issues counts, when the login asks for no audience: a caller
    token at the issuing site only (its call's owner serves the call's routes); an in-house
    site's tokens at every in-house site; a partner site's at its own site, and its own agents'
    at the in-house sites too (what `out_of_scope` lets a partner grant there)."""
    if role is Role.CALLER:
        return Audience(frozenset({issuer}))
    if trust is Trust.INHOUSE:
        return Audience(inhouse=True)
    own_agent = role is Role.AGENT and user is not None and user.site == issuer
    return Audience(frozenset({issuer}), inhouse=own_agent)


def asked_audience(asked: object, known: Collection[str]) -> Audience:
    """The audience a login asks for (`audience: [SITE, ...]`, each a site of the key ring);
    raises BadAudience naming the problem."""
    if (
        not isinstance(asked, list)
        or not 1 <= len(asked) <= MAX_AUDIENCE
        or not all(isinstance(site, str) for site in asked)
    ):
        raise BadAudience(
            f'audience must be a list of 1-{MAX_AUDIENCE} site names, e.g. ["partner-c"]'
        )
    unknown = sorted(site[:70] for site in asked if site not in known)
    if unknown:
        raise BadAudience(
            f"audience: {', '.join(unknown)} not in the key ring "
            f"(sites: {', '.join(sorted(known))})"
        )
    return Audience(frozenset(asked))


def outside_audience(claims: Claims, here: str, trust: Trust) -> str | None:
    """Why this token does not count at a node of site `here` (of that trust), or None."""
    if claims.audience.admits(here, trust):
        return None
    if not claims.audience.sites and not claims.audience.inhouse:
        return "the token names no audience (issued before tokens did): log in again (POST /login)"
    kind = "an in-house" if trust is Trust.INHOUSE else "a partner"
    return (
        f"the token is for {claims.audience} only, and this node is of site {here} ({kind} "
        f"site): log in here (POST /login), or at site {claims.site} with "
        f'"audience": ["{here}"]'
    )


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    role: Role
    expires_ms: int
    call_id: str = ""
    """Caller tokens: the one call whose routes they open."""
    token_id: str = ""
    """`SITE~RANDOM`, unique: what POST /logout revokes (empty in tokens without an id)."""
    issued_ms: int = 0
    site: str = ""
    """The site that issued (signed) the token."""
    audience: Audience = Audience()
    """Where the token counts (a token is refused elsewhere: `outside_audience`)."""


class TokenSigner:
    """Issues tokens signed with this site's key; verifies any site's tokens with the key ring."""

    def __init__(self, keys: SiteKeys) -> None:
        self.keys = keys

    @property
    def site(self) -> str:
        return self.keys.site

    def issue(self, claims: Claims) -> str:
        """A token for these claims, issued by this site (whatever `claims.site` says); raises
        ValueError for claims with an empty audience (the token would count nowhere)."""
        if not claims.audience.sites and not claims.audience.inhouse:
            raise ValueError("a token needs an audience (default_audience)")
        body: dict[str, object] = {"u": claims.user, "r": claims.role.value, "e": claims.expires_ms}
        if claims.call_id:
            body["c"] = claims.call_id
        if claims.token_id:
            body["i"], body["t"] = claims.token_id, claims.issued_ms
        body["s"] = self.keys.site
        body["a"] = claims.audience.wire()
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        signature = self.keys.sign(f"{TOKEN_VERSION}.{payload}".encode())
        return f"{TOKEN_VERSION}.{payload}.{_b64(signature)}"

    def verify(self, token: str, now_ms: int) -> tuple[Claims, Trust]:
        """The claims and the issuing site's trust; raises AuthError or TokenExpired. The
        claims are not bounded here (see `out_of_scope`)."""
        if len(token) > MAX_TOKEN:
            raise AuthError("token too long")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_VERSION:
            raise AuthError(f"not a callmesh token ({TOKEN_VERSION}.payload.signature)")
        try:
            body = json.loads(_unb64(parts[1]))
            site, signature = body["s"], _unb64(parts[2])
            if not isinstance(site, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise AuthError("token payload is malformed") from None
        try:
            trust = self.keys.check(site, f"{TOKEN_VERSION}.{parts[1]}".encode(), signature)
        except BadSignature as error:
            raise AuthError(f"token refused: {error}") from None
        try:
            claims = Claims(
                str(body["u"]),
                Role(body["r"]),
                int(body["e"]),
                str(body.get("c", "")),
                str(body.get("i", "")),
                int(body.get("t", 0)),
                site,
                Audience.from_wire(body.get("a", [])),
            )
        except (ValueError, KeyError, TypeError, OverflowError):
            raise AuthError("token payload is malformed") from None
        if claims.expires_ms <= now_ms:
            raise TokenExpired("token expired: log in again (POST /login)")
        return claims, trust

    def sign(self, payload: str) -> str:
        """This site's signature of other data (revocation pushes; domain-separated)."""
        return _b64(self.keys.sign(f"data:{payload}".encode()))

    def check(self, site: str, payload: str, signature: str) -> Trust:
        """The signing site's trust; raises AuthError."""
        try:
            raw = _unb64(signature)
        except (ValueError, binascii.Error):
            raise AuthError("the signature is not base64url") from None
        try:
            return self.keys.check(site, f"data:{payload}".encode(), raw)
        except BadSignature as error:
            raise AuthError(str(error)) from None


def out_of_scope(claims: Claims, issuer: Trust, here: str, users: Mapping[str, User]) -> str | None:
    """Why a token claims more than its issuing site may grant at a node of site `here`, or
    None. An in-house site grants anything. A site's own nodes take its tokens (they hold its key
    anyway). Elsewhere a partner site's token counts only for one of its own agents (the users
    file names the agent's site) with role agent; its caller tokens open calls at its own nodes
    only (a call is served by the node that owns it)."""
    if issuer is Trust.INHOUSE or claims.site == here:
        return None
    user = users.get(claims.user)
    if claims.role is Role.AGENT:
        if user is not None and user.role is Role.AGENT and user.site == claims.site:
            return None
        return (
            f"partner site {claims.site} may issue tokens only for its own agents, and "
            f"{claims.user} is not one: log in at {claims.user}'s own site"
        )
    return (
        f"partner site {claims.site} may not issue {claims.role.value} tokens valid at site "
        f"{here}: log in at an in-house site"
    )


def revocation_out_of_scope(
    entry: Revocation, site: str, issuer: Trust, users: Mapping[str, User]
) -> str | None:
    """Why `site` may not spread this revocation, or None: an in-house site may revoke anything,
    a partner site only its own tokens (ids `SITE~...`) and its own agents' tokens."""
    if issuer is Trust.INHOUSE:
        return None
    if entry.kind is Kind.TOKEN and entry.subject.startswith(f"{site}~"):
        return None
    user = users.get(entry.subject)
    if entry.kind is Kind.USER and user is not None and user.site == site:
        return None
    return (
        f"partner site {site} may revoke only its own users' tokens, not "
        f"{entry.kind.value} {entry.subject}"
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
