"""Who may call the HTTP API: users and their password hashes, signed tokens, the route table.

Pure (hashlib, tomllib, node/sitekeys.py's Ed25519): the aiohttp middleware in node/http_api.py
reads the token and the client address, calls `Auth.authorize`, and maps the errors below to
statuses.

- Users live in a TOML file (NodeConfig.users_file); passwords are stored as scrypt hashes
  (`callmesh hash-password`), never plain. An agent user may carry a profile (tier, skills,
  capacity): the agent's session login uses it.
- A token is `v2.<payload>.<signature>`: base64url JSON {user, role, expiry, call, id, issued,
  site} signed with the issuing site's Ed25519 key (node/sitekeys.py); every node holds every
  site's public key, so any node verifies any token. What a site may grant is bounded by its
  trust (`out_of_scope`): an in-house site anything; a partner site's tokens count elsewhere only
  for its own agents (the users file names each agent's site) with role agent, so a partner
  node cannot mint a supervisor's or an admin's token for an in-house node. A token is refused
  once revoked (node/revocations.py: its id after POST /logout, or
  every token of a user issued before an admin's POST /users/NAME/revoke); node/revoker.py
  spreads revocations to every node of every site.
- Roles: agent (user == agent id; only /agents/{own id}/...), supervisor (reads), admin
  (everything). A caller gets a caller token for the routes of its own call when it starts one.
- Access is a table of route patterns (ACCESS) read top to bottom; the first match decides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from node.config import ConfigError
from node.revocations import Kind, Revocation, Revocations
from node.sessions import Profile
from node.sitekeys import BadSignature, SiteKeys
from node.sitekeys import load as load_site_keys
from registry.clock import wall_ms
from registry.errors import InvalidRecord
from registry.records import (
    MAX_CAPACITY,
    MAX_TIER,
    Trust,
    check_id,
    check_int,
    check_skills,
    skills_from,
)

TOKEN_VERSION = "v2"
MAX_TOKEN = 2048
MAX_PASSWORD = 1024
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


class Role(Enum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"
    CALLER = "caller"  # issued with a call, never from the users file


class AuthError(Exception):
    """No token, a malformed one or a bad signature: 401."""

    code = "unauthorized"


class TokenExpired(AuthError):
    code = "token_expired"


class TokenRevoked(AuthError):
    code = "token_revoked"


class LoginFailed(AuthError):
    code = "login_failed"


class OutOfScope(AuthError):
    """A token or push signed by a known site that claims more than that site may grant: 403."""

    code = "out_of_scope"


class Forbidden(Exception):
    """A valid token whose role may not call this route: 403."""

    code = "forbidden"


class RateLimited(Exception):
    code = "rate_limited"


class UsersFileError(ConfigError):
    code = "users_invalid"


# -- passwords ------------------------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """`scrypt$n$r$p$salt$hash` (base64url parts): what a users file stores."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash (constant-time compare)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or len(password) > MAX_PASSWORD:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024,
            dklen=len(expected),
        )  # fmt: skip
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


# -- users ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str
    profile: Profile | None = None
    """For agents: what their session login brings when the request has no body."""
    site: str = ""
    """The agent's home site (where it works): a partner site may issue tokens for its own
    agents only. Empty: no site's own (in-house sites issue every token)."""

    def __post_init__(self) -> None:
        if self.site:
            try:
                check_id(f"user {self.name}: site", self.site)
            except InvalidRecord as error:
                raise UsersFileError(str(error)) from None
        if self.role is Role.CALLER:
            raise UsersFileError(f"user {self.name}: role caller is issued with calls only")
        if not self.password_hash.startswith("scrypt$"):
            raise UsersFileError(
                f"user {self.name}: password must be a scrypt hash (callmesh hash-password), "
                "never the plain password"
            )


def users_from_toml(text: str) -> dict[str, User]:
    """Parse a users file: `[users.NAME]` tables with role, password (a hash) and, for agents,
    site (the home site) and optional tier, capacity and skills = {name = level}."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsersFileError(f"users file is not valid TOML: {error}") from None
    unknown = sorted(set(raw) - {"users"})
    if unknown:
        raise UsersFileError(f"users file: unknown top-level keys {', '.join(unknown)}")
    tables = raw.get("users", {})
    if not isinstance(tables, dict):
        raise UsersFileError("users file: [users.NAME] tables expected")
    return {name: _user(name, table) for name, table in tables.items()}


def _user(name: str, table: object) -> User:
    try:
        check_id("user name", name)
    except InvalidRecord as error:
        raise UsersFileError(str(error)) from None
    if not isinstance(table, dict):
        raise UsersFileError(f"user {name}: a table expected")
    allowed = {"role", "password", "site", "tier", "capacity", "skills"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsersFileError(f"user {name}: unknown keys {', '.join(unknown)}")
    try:
        role = Role(table.get("role"))
    except ValueError:
        raise UsersFileError(
            f"user {name}: role must be agent, supervisor or admin, got {table.get('role')!r:.40}"
        ) from None
    password = table.get("password")
    if not isinstance(password, str):
        raise UsersFileError(f"user {name}: password (a scrypt hash) is missing")
    site = table.get("site", "")
    if not isinstance(site, str):
        raise UsersFileError(f"user {name}: site must be a site name")
    profile = None
    if role is Role.AGENT and {"tier", "capacity", "skills"} & set(table):
        skills = table.get("skills", {})
        tier, capacity = table.get("tier", 1), table.get("capacity", 1)
        if (
            not isinstance(skills, dict)
            or not isinstance(tier, int)
            or not isinstance(capacity, int)
        ):
            raise UsersFileError(f"user {name}: tier and capacity integers, skills a table")
        try:
            levels = skills_from({str(k): v for k, v in skills.items()})
            check_skills("skills", levels)
            check_int("tier", tier, 1, MAX_TIER)
            check_int("capacity", capacity, 1, MAX_CAPACITY)
        except (TypeError, ValueError, InvalidRecord) as error:
            raise UsersFileError(f"user {name}: {error}") from None
        profile = Profile(tier, levels, capacity)
    return User(name, role, password, profile, site)


def users_toml(users: Mapping[str, User]) -> str:
    """The users file for these users (what LocalCluster writes)."""
    lines: list[str] = []
    for user in users.values():
        lines += [f"[users.{_key(user.name)}]", f'role = "{user.role.value}"']
        lines.append(f'password = "{user.password_hash}"')
        if user.site:
            lines.append(f'site = "{user.site}"')
        if user.profile is not None:
            lines.append(f"tier = {user.profile.tier}")
            lines.append(f"capacity = {user.profile.capacity}")
            skills = ", ".join(f"{_key(k)} = {v}" for k, v in user.profile.skills)
            lines.append(f"skills = {{ {skills} }}")
        lines.append("")
    return "\n".join(lines)


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else json.dumps(name)


# -- tokens ---------------------------------------------------------------------------------------


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


class TokenSigner:
    """Issues tokens signed with this site's key; verifies any site's tokens with the key ring."""

    def __init__(self, keys: SiteKeys) -> None:
        self.keys = keys

    @property
    def site(self) -> str:
        return self.keys.site

    def issue(self, claims: Claims) -> str:
        """A token for these claims, issued by this site (whatever `claims.site` says)."""
        body: dict[str, object] = {"u": claims.user, "r": claims.role.value, "e": claims.expires_ms}
        if claims.call_id:
            body["c"] = claims.call_id
        if claims.token_id:
            body["i"], body["t"] = claims.token_id, claims.issued_ms
        body["s"] = self.keys.site
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
    ("POST", "/revocations", Access.OPEN),  # the body is signed with the cluster secret
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

    def login(self, user: str, password: str) -> Login:
        """Check the password (slow on purpose and thread-safe: run it off the event loop)."""
        known = self.users.get(user)
        stored = known.password_hash if known is not None else self._dummy_hash
        if not verify_password(password, stored) or known is None:
            raise LoginFailed("unknown user or wrong password")
        claims = self._claims(known.name, known.role)
        return Login(self.signer.issue(claims), claims)

    def _claims(self, user: str, role: Role, call_id: str = "") -> Claims:
        now = self._clock()
        expires = now + int(self.token_ttl_s * 1000)
        token_id = f"{self.site}~{secrets.token_urlsafe(16)}"
        return Claims(user, role, expires, call_id, token_id, now, self.site)

    def token_for(self, user: str, role: Role, call_id: str = "") -> str:
        """A token without a password (the caller token of a new call; tests' admin token)."""
        return self.signer.issue(self._claims(user, role, call_id))

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
        """The token's claims; raises AuthError, TokenExpired, OutOfScope or TokenRevoked."""
        claims, issuer = self.signer.verify(token, self._clock())
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
        return revocation_out_of_scope(entry, self.site, self.signer.keys.trust, self.users) is None

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
