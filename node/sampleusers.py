"""The users a local cluster starts with (`callmesh up`, the cluster tests): an admin, a
supervisor and sample agents at each site, with fresh random passwords each run.

`LocalCredentials` writes a users file and a signing key per site with the key ring
(node/sitekeys.py), and mints tokens without a round trip (the tests' Client helper uses an
admin token). An in-house site's users file lists every sample user; a partner site's only its
own: its agents, and an admin and a supervisor of its own (named admin and sue like the in-house
ones and, so that the tools log in everywhere with one password, the same throwaway passwords,
hashed anew), so a partner node holds no in-house agent's password hash and cannot log one in."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from node.auth import Auth
from node.sessions import Profile
from node.sitekeys import KEY_RING, SiteKeys, generate, private_pem
from node.tokens import Audience, Claims, TokenSigner
from node.users import SCRYPT_N, Role, User, hash_password, users_toml
from registry.clock import wall_ms
from registry.records import Trust, skills_from

FAST_SCRYPT_N = 2**12
"""Scrypt cost for the throwaway users of a test cluster (the hash records it)."""
SAMPLE_SITES = {"site-a": "inhouse", "site-b": "inhouse", "partner-c": "partner"}


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
    """A users file per site with SAMPLE_USERS (random passwords; a partner site's: its own),
    a fresh signing key per site (`sites`: name -> inhouse or partner) and the key ring of them
    all."""

    def __init__(
        self, root: Path, *, sites: Mapping[str, str] = SAMPLE_SITES, fast: bool = False
    ) -> None:
        self.root = root
        self.sites = {name: Trust[trust.upper()] for name, trust in sites.items()}
        ring, privates = generate(self.sites)
        self.keys = {site: SiteKeys(site, key, ring) for site, key in privates.items()}
        """Each site's keys: what its nodes sign with (and a test that holds one mints with)."""
        self.passwords = {user.name: secrets.token_urlsafe(9) for user in SAMPLE_USERS}
        self.samples = {user.name: user for user in SAMPLE_USERS}
        n = FAST_SCRYPT_N if fast else SCRYPT_N
        root.mkdir(parents=True, exist_ok=True)
        for site, trust in self.sites.items():
            known = [u for u in SAMPLE_USERS if trust is Trust.INHOUSE or u.site in ("", site)]
            users = {
                u.name: User(
                    u.name, u.role, hash_password(self.passwords[u.name], n=n), u.profile, u.site
                )
                for u in known
            }
            path = self.users_file(site)
            path.write_text(users_toml(users))
            path.chmod(0o600)
        self.ring_file = root / KEY_RING
        self.ring_file.write_text(ring.toml())
        for site, key in privates.items():
            path = self.key_file(site)
            path.write_bytes(private_pem(key))
            path.chmod(0o600)

    def key_file(self, site: str) -> Path:
        return self.root / f"{site}.site.key"

    def users_file(self, site: str) -> Path:
        """The users file of `site`'s nodes."""
        return self.root / f"{site}.users.toml"

    def home(self, user: str) -> str:
        """The site a sample user's tokens are minted at: an agent's own site when the cluster
        has it, else the first in-house site (else the first site)."""
        sample = self.samples.get(user)
        if sample is not None and sample.site in self.sites:
            return sample.site
        inhouse = [site for site, trust in self.sites.items() if trust is Trust.INHOUSE]
        return (inhouse or list(self.sites))[0]

    def mint(
        self,
        user: str,
        role: Role,
        ttl_s: float = 24 * 3600,
        site: str = "",
        audience: Audience | None = None,
    ) -> str:
        """A token signed with a site's key (`site`, else `home(user)`), no HTTP, that counts at
        the sites of `audience`, else at every site of the cluster (a harness token: a login's
        token counts only where `default_audience` says)."""
        signer = TokenSigner(self.keys[site or self.home(user)])
        everywhere = Audience(frozenset(self.sites))
        expires = wall_ms() + int(ttl_s * 1000)
        return signer.issue(Claims(user, role, expires, audience=audience or everywhere))

    def token(self, user: str = "admin", ttl_s: float = 24 * 3600) -> str:
        """A valid token for a sample user (no HTTP)."""
        return self.mint(user, self.samples[user].role, ttl_s)

    def headers(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def toml(self, site: str) -> str:
        """The config lines that turn authentication on at a node of `site`."""
        return (
            f'users_file = "{self.users_file(site)}"\n'
            f'site_key = "{self.key_file(site)}"\n'
            f'site_keys_file = "{self.ring_file}"\n'
        )

    def auth(self, site: str = "") -> Auth:
        """An Auth as a node of `site` (else the admin's home) has it."""
        site = site or self.home("admin")
        return Auth.from_file(self.users_file(site), self.keys[site])


def credential_lines(credentials: LocalCredentials, http_by_site: dict[str, str]) -> list[str]:
    """What `callmesh up` prints: every sample user, its password and where it works."""
    lines = [
        'users (POST /login {"user": NAME, "password": PASSWORD} -> a token, which counts at the '
        "in-house sites, or at the partner site that issued it):"
    ]
    for user in credentials.samples.values():
        password = credentials.passwords[user.name]
        if user.role is not Role.AGENT:
            lines.append(
                f"  {user.role.value:<10} {user.name:<5} password {password}  at every site "
                "(a partner site's are its own accounts)"
            )
        elif user.site in http_by_site:
            skills = ", ".join(f"{name} {level}" for name, level in user.skills)
            lines.append(
                f"  agent      {user.name:<5} password {password}  tier {user.tier} at "
                f"{user.site} ({skills}): log in at http://{http_by_site[user.site]}"
            )
    return lines
