"""Who may call the HTTP API: users and their password hashes, signed tokens, the route table.

Pure (hashlib, hmac, tomllib): the aiohttp middleware in node/http_api.py reads the token and the
client address, calls `Auth.authorize`, and maps the errors below to statuses.

- Users live in a TOML file (NodeConfig.users_file); passwords are stored as scrypt hashes
  (`callmesh hash-password`), never plain. An agent user may carry a profile (tier, skills,
  capacity): the agent's session login uses it.
- A token is `v1.<payload>.<signature>`: base64url JSON {user, role, expiry, call} signed with
  HMAC-SHA256 under the cluster secret, which every node holds, so any node verifies any token.
- Roles: agent (user == agent id; only /agents/{own id}/...), supervisor (reads), admin
  (everything). A caller gets a caller token for the routes of its own call when it starts one.
- Access is a table of route patterns (ACCESS) read top to bottom; the first match decides.
"""

from __future__ import annotations

import base64
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
from node.sessions import Profile
from registry.clock import wall_ms
from registry.errors import InvalidRecord
from registry.records import (
    MAX_CAPACITY,
    MAX_TIER,
    check_id,
    check_int,
    check_skills,
    skills_from,
)

TOKEN_VERSION = "v1"
MAX_TOKEN = 2048
MAX_PASSWORD = 1024
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_SECRET = 16
"""A cluster secret shorter than this many bytes is refused."""


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


class LoginFailed(AuthError):
    code = "login_failed"


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

    def __post_init__(self) -> None:
        if self.role is Role.CALLER:
            raise UsersFileError(f"user {self.name}: role caller is issued with calls only")
        if not self.password_hash.startswith("scrypt$"):
            raise UsersFileError(
                f"user {self.name}: password must be a scrypt hash (callmesh hash-password), "
                "never the plain password"
            )


def users_from_toml(text: str) -> dict[str, User]:
    """Parse a users file: `[users.NAME]` tables with role, password (a hash) and, for agents,
    optional tier, capacity and skills = {name = level}."""
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
    allowed = {"role", "password", "tier", "capacity", "skills"}
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
    return User(name, role, password, profile)


def users_toml(users: Mapping[str, User]) -> str:
    """The users file for these users (what LocalCluster writes)."""
    lines: list[str] = []
    for user in users.values():
        lines += [f"[users.{_key(user.name)}]", f'role = "{user.role.value}"']
        lines.append(f'password = "{user.password_hash}"')
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


class TokenSigner:
    """Issues and verifies tokens under the cluster secret (HMAC-SHA256)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the cluster secret must be at least {MIN_SECRET} bytes")
        self._secret = secret

    def issue(self, claims: Claims) -> str:
        body = {"u": claims.user, "r": claims.role.value, "e": claims.expires_ms}
        if claims.call_id:
            body["c"] = claims.call_id
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{TOKEN_VERSION}.{payload}.{self._sign(payload)}"

    def verify(self, token: str, now_ms: int) -> Claims:
        if len(token) > MAX_TOKEN:
            raise AuthError("token too long")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_VERSION:
            raise AuthError("not a callmesh token (v1.payload.signature)")
        given = parts[2].encode("utf-8", "replace")  # compare_digest refuses non-ASCII str
        if not hmac.compare_digest(self._sign(parts[1]).encode(), given):
            raise AuthError("token signature does not verify (wrong cluster secret or altered)")
        try:
            body = json.loads(_unb64(parts[1]))
            claims = Claims(str(body["u"]), Role(body["r"]), int(body["e"]), str(body.get("c", "")))
        except (ValueError, KeyError, TypeError, OverflowError):
            raise AuthError("token payload is malformed") from None
        if claims.expires_ms <= now_ms:
            raise TokenExpired("token expired: log in again (POST /login)")
        return claims

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


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
    if claims.role is Role.ADMIN:
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
    """Users, the token signer and the rate limits of one node."""

    def __init__(
        self,
        users: Mapping[str, User],
        secret: bytes,
        *,
        token_ttl_s: float = 8 * 3600,
        caller_limit: RateLimit | None = None,
        login_limit: RateLimit | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.users = dict(users)
        self.signer = TokenSigner(secret)
        self.token_ttl_s = token_ttl_s
        self.caller_limit = caller_limit or RateLimit(2.0, 20)
        self.login_limit = login_limit or RateLimit(2.0, 10)
        self._clock = clock
        self._dummy_hash = hash_password(secrets.token_hex(8), n=SCRYPT_N)

    @classmethod
    def from_file(cls, path: Path, secret: bytes, **options: Any) -> Auth:
        try:
            text = path.read_text()
        except OSError as error:
            raise UsersFileError(f"cannot read users file {path}: {error.strerror}") from None
        return cls(users_from_toml(text), secret, **options)

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
        claims = Claims(known.name, known.role, self._clock() + int(self.token_ttl_s * 1000))
        return Login(self.signer.issue(claims), claims)

    def token_for(self, user: str, role: Role, call_id: str = "") -> str:
        """A token without a password (the caller token of a new call; tests' admin token)."""
        claims = Claims(user, role, self._clock() + int(self.token_ttl_s * 1000), call_id)
        return self.signer.issue(claims)

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
            claims = self.signer.verify(token, self._clock())
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

    def profile(self, agent_id: str) -> Profile | None:
        user = self.users.get(agent_id)
        return user.profile if user is not None and user.role is Role.AGENT else None


def auth_from(
    users_file: str, secret: str, token_ttl_s: float, caller_rate_per_s: float, caller_burst: int
) -> Auth | None:
    """The node's Auth from its config fields; None when no users file is configured."""
    if not users_file:
        return None
    return Auth.from_file(
        Path(users_file),
        secret.encode(),
        token_ttl_s=token_ttl_s,
        caller_limit=RateLimit(caller_rate_per_s, caller_burst),
    )
