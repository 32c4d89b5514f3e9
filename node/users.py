"""Who the users are: roles, the users file (TOML) and its scrypt password hashes. Pure.

- Users live in a TOML file (NodeConfig.users_file) that a site's nodes share: the users who may
  log in at that site (a partner site's lists only its own users). Passwords are stored as
  scrypt hashes (`callmesh hash-password`), never plain. An agent user may carry a profile
  (tier, skills, capacity): the agent's session login uses it, and names its home site
  (`site`), which bounds what a partner site's tokens may claim (node/tokens.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from node.config import ConfigError
from node.sessions import Profile
from registry.errors import InvalidRecord
from registry.records import (
    MAX_CAPACITY,
    MAX_TIER,
    check_id,
    check_int,
    check_skills,
    skills_from,
)

MAX_PASSWORD = 1024
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


class Role(Enum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"
    CALLER = "caller"  # issued with a call, never from the users file


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
