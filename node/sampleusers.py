"""The users a local cluster starts with (`callmesh up`, the cluster tests): an admin, a
supervisor and sample agents at each site, with fresh random passwords each run.

`LocalCredentials` writes the users file and the cluster secret, and mints tokens without a
round trip (the tests' Client helper uses an admin token)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from node.auth import (
    SCRYPT_N,
    Auth,
    Claims,
    Role,
    TokenSigner,
    User,
    hash_password,
    users_toml,
)
from node.sessions import Profile
from registry.clock import wall_ms
from registry.records import skills_from

FAST_SCRYPT_N = 2**12
"""Scrypt cost for the throwaway users of a test cluster (the hash records it)."""


@dataclass(frozen=True, slots=True)
class SampleUser:
    name: str
    role: Role
    site: str = ""
    """Where a sample agent works (logs in); empty for supervisors and admins."""
    tier: int = 1
    skills: tuple[tuple[str, int], ...] = ()

    @property
    def profile(self) -> Profile | None:
        if self.role is not Role.AGENT:
            return None
        return Profile(self.tier, skills_from(dict(self.skills)), 1)


SAMPLE_USERS = (
    SampleUser("admin", Role.ADMIN),
    SampleUser("sue", Role.SUPERVISOR),
    SampleUser("ann", Role.AGENT, "site-a", 1, (("sales", 3), ("support", 5))),
    SampleUser("sam", Role.AGENT, "site-a", 2, (("billing", 4), ("sales", 5), ("support", 6))),
    SampleUser("ben", Role.AGENT, "site-b", 2, (("billing", 5), ("sales", 5), ("support", 7))),
    SampleUser("bo", Role.AGENT, "site-b", 1, (("sales", 2), ("support", 4))),
    SampleUser("pia", Role.AGENT, "partner-c", 1, (("sales", 4), ("support", 3))),
)


class LocalCredentials:
    """A users file with SAMPLE_USERS (random passwords) and a random cluster secret."""

    def __init__(self, root: Path, *, fast: bool = False) -> None:
        self.users_file = root / "users.toml"
        self.secret = secrets.token_urlsafe(32)
        self.passwords = {user.name: secrets.token_urlsafe(9) for user in SAMPLE_USERS}
        self.samples = {user.name: user for user in SAMPLE_USERS}
        n = FAST_SCRYPT_N if fast else SCRYPT_N
        users = {
            u.name: User(u.name, u.role, hash_password(self.passwords[u.name], n=n), u.profile)
            for u in SAMPLE_USERS
        }
        root.mkdir(parents=True, exist_ok=True)
        self.users_file.write_text(users_toml(users))
        self.users_file.chmod(0o600)
        self._signer = TokenSigner(self.secret.encode())

    def token(self, user: str = "admin", ttl_s: float = 24 * 3600) -> str:
        """A valid token for a sample user, minted with the cluster secret (no HTTP)."""
        role = self.samples[user].role
        return self._signer.issue(Claims(user, role, wall_ms() + int(ttl_s * 1000)))

    def headers(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def toml(self) -> str:
        """The config lines that turn authentication on."""
        return f'users_file = "{self.users_file}"\nauth_secret = "{self.secret}"\n'

    def auth(self) -> Auth:
        return Auth.from_file(self.users_file, self.secret.encode())


def credential_lines(credentials: LocalCredentials, http_by_site: dict[str, str]) -> list[str]:
    """What `callmesh up` prints: every sample user, its password and where it works."""
    lines = ['users (POST /login {"user": NAME, "password": PASSWORD} -> a token):']
    for user in credentials.samples.values():
        password = credentials.passwords[user.name]
        if user.role is not Role.AGENT:
            lines.append(f"  {user.role.value:<10} {user.name:<5} password {password}")
        elif user.site in http_by_site:
            skills = ", ".join(f"{name} {level}" for name, level in user.skills)
            lines.append(
                f"  agent      {user.name:<5} password {password}  tier {user.tier} at "
                f"{user.site} ({skills}): log in at http://{http_by_site[user.site]}"
            )
    return lines
