"""Who may call the HTTP API: logins, the route table, the rate limits, and `Auth`, the service
the middleware calls. Pure (hashlib through node/users.py, node/tokens.py's signed tokens): the
aiohttp middleware in node/http_api.py reads the token and the client address, calls
`Auth.authorize`, and maps the errors (here and in node/tokens.py) to statuses.

- Users and their password hashes: node/users.py. Tokens, their signatures, where they count
  and what each site may grant: node/tokens.py. `Auth.verify` checks a token's signature and
  expiry, then its audience (this site), its issuer's scope, and revocation. A token is refused
  once revoked (node/revocations.py: its id after
  POST /logout, or every token of a user issued before an admin's POST /users/NAME/revoke);
  node/revoker.py spreads revocations to every node of every site.
- Roles: agent (user == agent id; only /agents/{own id}/...), supervisor (reads), admin
  (everything). A caller gets a caller token for the routes of its own call when it starts one.
- Access is a table of route patterns (ACCESS) read top to bottom; the first match decides.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from node.revocations import Kind, Revocation, Revocations
from node.sessions import Profile
from node.sitekeys import SiteKeys
from node.sitekeys import load as load_site_keys
from node.tokens import (
    Audience,
    AuthError,
    Claims,
    OutOfScope,
    TokenRevoked,
    TokenSigner,
    WrongAudience,
    asked_audience,
    default_audience,
    out_of_scope,
    outside_audience,
    revocation_out_of_scope,
)
from node.users import (
    SCRYPT_N,
    Role,
    User,
    UsersFileError,
    hash_password,
    users_from_toml,
    verify_password,
)
from registry.clock import wall_ms
from registry.records import Trust


class LoginFailed(AuthError):
    code = "login_failed"


class Forbidden(Exception):
    """A valid token whose role may not call this route: 403."""

    code = "forbidden"


class RateLimited(Exception):
    code = "rate_limited"


# -- rate limits ----------------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(slots=True)
class RateLimit:
    """A token bucket per client address; the least recently seen addresses are forgotten past
    `max_clients` (a forgotten address starts again with a full bucket)."""

    rate_per_s: float
    burst: int
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)

    def allow(self, client: str) -> bool:
        if self.rate_per_s <= 0:
            return True  # no limit configured
        now = self.clock()
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = TokenBucket(self.rate_per_s, self.burst, self.burst, now)
        self._buckets[client] = bucket
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return bucket.take(now)


# -- the route table ------------------------------------------------------------------------------


class Access(Enum):
    OPEN = "open"
    """Anyone, no token."""
    CALLER_START = "caller-start"
    """Anyone (rate-limited per client address unless staff); the reply carries a caller token."""
    CALL_PARTY = "call-party"
    """The caller token of {call_id}; supervisors read; admin."""
    OWN_AGENT = "own-agent"
    """The agent {agent_id} itself; supervisors read; admin."""
    ANY_TOKEN = "any-token"
    """Anyone with a valid token (POST /logout)."""
    STAFF_READ = "staff-read"
    """Supervisors read (GET); admin."""
    ADMIN = "admin"


ACCESS: tuple[tuple[str, str, Access], ...] = (
    # (methods or "*", route pattern; a trailing * matches any rest, access)
    ("*", "/healthz", Access.OPEN),
    ("*", "/readyz", Access.OPEN),
    ("*", "/metrics", Access.OPEN),
    ("*", "/openapi.json", Access.OPEN),
    ("POST", "/login", Access.OPEN),
    ("POST", "/logout", Access.ANY_TOKEN),
    ("GET", "/", Access.OPEN),
    ("GET", "/ui", Access.OPEN),
    ("GET", "/ui/*", Access.OPEN),
    ("POST", "/calls", Access.CALLER_START),
    ("*", "/calls/{call_id}", Access.CALL_PARTY),
    ("*", "/calls/{call_id}/*", Access.CALL_PARTY),
    ("*", "/agents/{agent_id}/*", Access.OWN_AGENT),
    ("*", "/debug/*", Access.ADMIN),
    ("GET", "*", Access.STAFF_READ),  # /registry, /supervisor, /records..., /calls
    ("*", "*", Access.ADMIN),
)
READS = frozenset({"GET", "HEAD"})


def access_for(method: str, route: str) -> Access:
    """The first row of ACCESS matching the method and the route pattern (aiohttp's canonical
    form, e.g. /agents/{agent_id}/state)."""
    for methods, pattern, access in ACCESS:
        head_of_get = method == "HEAD" and "GET" in methods
        if methods != "*" and method not in methods.split(",") and not head_of_get:
            continue
        if pattern == route or pattern == "*":
            return access
        if pattern.endswith("/*") and route.startswith(pattern[:-1]):
            return access
    return Access.ADMIN


def decide(access: Access, method: str, claims: Claims | None, params: Mapping[str, str]) -> None:
    """Raise AuthError (no valid token where one is needed) or Forbidden (wrong role)."""
    if access in (Access.OPEN, Access.CALLER_START):
        return
    if claims is None:
        raise AuthError("this route needs a token: POST /login, then Authorization: Bearer TOKEN")
    if claims.role is Role.ADMIN or access is Access.ANY_TOKEN:
        return
    if claims.role is Role.SUPERVISOR and method in READS and access is not Access.ADMIN:
        return
    if access is Access.OWN_AGENT and claims.role is Role.AGENT:
        if claims.user == params.get("agent_id"):
            return
        raise Forbidden(f"agent {claims.user} may act only on /agents/{claims.user}/...")
    if access is Access.CALL_PARTY and claims.role is Role.CALLER:
        if claims.call_id == params.get("call_id"):
            return
        raise Forbidden("a caller token opens only its own call's routes")
    raise Forbidden(f"role {claims.role.value} may not {method} this route")


# -- the service ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    token: str
    claims: Claims


class Auth:
    """Users, the token signer (this site's key, every site's public key) and the rate limits of
    one node."""

    def __init__(
        self,
        users: Mapping[str, User],
        keys: SiteKeys,
        *,
        token_ttl_s: float = 8 * 3600,
        caller_limit: RateLimit | None = None,
        login_limit: RateLimit | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.users = dict(users)
        self.signer = TokenSigner(keys)
        self.site = keys.site
        self.trust = keys.trust
        self.token_ttl_s = token_ttl_s
        self.caller_limit = caller_limit or RateLimit(2.0, 20)
        self.login_limit = login_limit or RateLimit(2.0, 10)
        self._clock = clock
        self.revocations = Revocations()
        self._dummy_hash = hash_password(secrets.token_hex(8), n=SCRYPT_N)

    @classmethod
    def from_file(cls, path: Path, keys: SiteKeys, **options: Any) -> Auth:
        try:
            text = path.read_text()
        except OSError as error:
            raise UsersFileError(f"cannot read users file {path}: {error.strerror}") from None
        return cls(users_from_toml(text), keys, **options)

    def admit_login(self, client: str) -> None:
        """Raise RateLimited past the login attempts allowed per client address (call it on the
        event loop, before `login`)."""
        if not self.login_limit.allow(client):
            raise RateLimited("too many login attempts from this address; wait a few seconds")

    def audience(self, asked: object) -> Audience | None:
        """The audience a login body asks for (None: the default); raises BadAudience."""
        return None if asked is None else asked_audience(asked, self.signer.keys.ring.sites())

    def login(self, user: str, password: str, audience: Audience | None = None) -> Login:
        """Check the password (slow on purpose and thread-safe: run it off the event loop); the
        token counts where `audience` says, else at `default_audience`."""
        known = self.users.get(user)
        stored = known.password_hash if known is not None else self._dummy_hash
        if not verify_password(password, stored) or known is None:
            raise LoginFailed("unknown user or wrong password")
        claims = self._claims(known.name, known.role, audience=audience)
        return Login(self.signer.issue(claims), claims)

    def _claims(
        self, user: str, role: Role, call_id: str = "", audience: Audience | None = None
    ) -> Claims:
        now = self._clock()
        expires = now + int(self.token_ttl_s * 1000)
        token_id = f"{self.site}~{secrets.token_urlsafe(16)}"
        if audience is None:
            audience = default_audience(role, self.users.get(user), self.site, self.trust)
        return Claims(user, role, expires, call_id, token_id, now, self.site, audience)

    def token_for(
        self, user: str, role: Role, call_id: str = "", audience: Audience | None = None
    ) -> str:
        """A token without a password (the caller token of a new call; tests' admin token)."""
        return self.signer.issue(self._claims(user, role, call_id, audience))

    def caller_token(self, call_id: str) -> str:
        return self.token_for(f"caller:{call_id}", Role.CALLER, call_id)

    def authorize(
        self,
        method: str,
        route: str,
        params: Mapping[str, str],
        token: str | None,
        client: str,
    ) -> Claims | None:
        """The request's claims (None when it carries no token and needs none); raises AuthError,
        Forbidden or RateLimited."""
        access = access_for(method, route)
        if access is Access.OPEN:
            return None  # a stale token must not keep anyone from health checks or pages
        claims = None
        if token is not None:
            claims = self.verify(token)
        elif access not in (Access.OPEN, Access.CALLER_START):
            raise AuthError(
                "this route needs a token: POST /login, then Authorization: Bearer TOKEN"
            )
        decide(access, method, claims, params)
        staff = claims is not None and claims.role in (Role.ADMIN, Role.SUPERVISOR)
        if access is Access.CALLER_START and not staff and not self.caller_limit.allow(client):
            raise RateLimited(
                "too many calls from this address; wait a few seconds before calling again"
            )
        return claims

    def verify(self, token: str) -> Claims:
        """The token's claims; raises AuthError, TokenExpired, WrongAudience, OutOfScope or
        TokenRevoked."""
        claims, issuer = self.signer.verify(token, self._clock())
        elsewhere = outside_audience(claims, self.site, self.trust)
        if elsewhere is not None:
            raise WrongAudience(f"token refused: {elsewhere}")
        beyond = out_of_scope(claims, issuer, self.site, self.users)
        if beyond is not None:
            raise OutOfScope(f"token refused: {beyond}")
        refused = self.revocations.refusal(claims.user, claims.token_id, claims.issued_ms)
        if refused is not None:
            raise TokenRevoked(refused)
        return claims

    def sign(self, payload: str) -> str:
        """This site's signature of `payload` (a revocation push)."""
        return self.signer.sign(payload)

    def check_revocations(self, site: str, payload: str, signature: str) -> Trust:
        """The trust of `site`, whose signature of `payload` this is; raises AuthError."""
        return self.signer.check(site, payload, signature)

    def check_revocation_scope(self, site: str, trust: Trust, entry: Revocation) -> None:
        """Raise OutOfScope unless `site` (of that trust) may spread this revocation."""
        beyond = revocation_out_of_scope(entry, site, trust, self.users)
        if beyond is not None:
            raise OutOfScope(beyond)

    def may_spread(self, entry: Revocation) -> bool:
        """Whether this site may push the entry to other sites (a partner: its own users')."""
        return revocation_out_of_scope(entry, self.site, self.trust, self.users) is None

    def revoke_token(self, claims: Claims) -> Revocation:
        """Revoke this one token (POST /logout); the entry to spread."""
        if not claims.token_id:
            raise AuthError("this token has no id and cannot be revoked alone: log in again")
        entry = Revocation(Kind.TOKEN, claims.token_id, self._clock(), claims.expires_ms)
        self.revocations.add(entry)
        return entry

    def revoke_user(self, user: str) -> Revocation:
        """Revoke every token of `user` issued until now; the entry to spread. It is kept for
        one token lifetime (plus a minute for clocks), past which those tokens expired anyway."""
        now = self._clock()
        entry = Revocation(Kind.USER, user, now, now + int(self.token_ttl_s * 1000) + 60_000)
        self.revocations.add(entry)
        return entry

    def profile(self, agent_id: str) -> Profile | None:
        user = self.users.get(agent_id)
        return user.profile if user is not None and user.role is Role.AGENT else None


def auth_from(
    users_file: str,
    keys: tuple[str, str, str],
    token_ttl_s: float,
    caller_rate_per_s: float,
    caller_burst: int,
) -> Auth | None:
    """The node's Auth from its config fields (`keys`: site, site_key, site_keys_file); None
    when no users file is configured."""
    if not users_file:
        return None
    return Auth.from_file(
        Path(users_file),
        load_site_keys(*keys),
        token_ttl_s=token_ttl_s,
        caller_limit=RateLimit(caller_rate_per_s, caller_burst),
    )
