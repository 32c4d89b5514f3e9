"""Each site's signing key: HTTP tokens and revocation pushes name the site that signed them, and
every node checks them against that site's public key (Ed25519).

- A site's private key is a PEM file (PKCS#8, `openssl genpkey -algorithm ed25519` makes the
  same), held by that site's nodes only (NodeConfig.site_key; a Kubernetes Secret per site).
- The key ring lists every site's trust and public key, the same file on every node
  (NodeConfig.site_keys_file; one ConfigMap):

      [sites.site-a]
      trust = "inhouse"
      key = "BASE64 of the 32-byte raw public key"

- `callmesh ca site-key DIR --site SITE --trust TRUST` makes DIR/SITE.site.key and adds SITE to
  DIR/site-keys.toml (`write_site_key`).

What a site's signature may claim (a partner's tokens and pushes are bounded, a token counts
only at the sites of its audience) is node/tokens.py's business; this module only says which
site signed what, under which trust.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from node.config import ConfigError
from registry.errors import InvalidRecord
from registry.records import Trust, check_id

KEY_RING = "site-keys.toml"


class SiteKeyError(ConfigError):
    code = "site_keys_invalid"


class BadSignature(Exception):
    """A signature by an unknown site, or one that does not verify under the site's key."""


@dataclass(frozen=True, slots=True, eq=False)
class SitePublic:
    trust: Trust
    key: Ed25519PublicKey


class KeyRing:
    """Every site's trust and public key (read-only once built)."""

    def __init__(self, sites: Mapping[str, SitePublic]) -> None:
        self._sites = dict(sites)

    def __contains__(self, site: object) -> bool:
        return site in self._sites

    def sites(self) -> list[str]:
        return sorted(self._sites)

    def entries(self) -> dict[str, SitePublic]:
        return dict(self._sites)

    def trust(self, site: str) -> Trust | None:
        known = self._sites.get(site)
        return None if known is None else known.trust

    def check(self, site: str, data: bytes, signature: bytes) -> Trust:
        """The signing site's trust; raises BadSignature."""
        known = self._sites.get(site)
        if known is None:
            raise BadSignature(f"signed by site {site!r:.70}, which has no key in the key ring")
        try:
            known.key.verify(signature, data)
        except InvalidSignature:
            raise BadSignature(f"the signature does not verify under site {site}'s key") from None
        return known.trust

    def toml(self) -> str:
        lines: list[str] = []
        for site in self.sites():
            known = self._sites[site]
            lines += [f"[sites.{site}]", f'trust = "{known.trust.name.lower()}"']
            lines += [f'key = "{public_text(known.key)}"', ""]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, eq=False)
class SiteKeys:
    """What one node signs and verifies with: its site's private key and the key ring."""

    site: str
    private: Ed25519PrivateKey
    ring: KeyRing

    def __post_init__(self) -> None:
        trust = self.ring.trust(self.site)
        if trust is None:
            raise SiteKeyError(f"site_keys_file: this node's site {self.site} is not listed")
        try:
            self.ring.check(self.site, b"probe", self.private.sign(b"probe"))
        except BadSignature:
            raise SiteKeyError(
                f"site_key: the private key is not site {self.site}'s (its public key in "
                "site_keys_file differs)"
            ) from None

    @property
    def trust(self) -> Trust:
        trust = self.ring.trust(self.site)
        assert trust is not None  # checked in __post_init__
        return trust

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def check(self, site: str, data: bytes, signature: bytes) -> Trust:
        return self.ring.check(site, data, signature)


def public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ring_from_toml(text: str) -> KeyRing:
    """Parse a key ring file; raises SiteKeyError naming the problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SiteKeyError(f"site_keys_file is not valid TOML: {error}") from None
    tables = raw.get("sites")
    if set(raw) - {"sites"} or not isinstance(tables, dict) or not tables:
        raise SiteKeyError("site_keys_file: [sites.NAME] tables (trust, key) expected")
    sites: dict[str, SitePublic] = {}
    for site, table in tables.items():
        try:
            check_id("site_keys_file site", site)
        except InvalidRecord as error:
            raise SiteKeyError(str(error)) from None
        if not isinstance(table, dict) or set(table) != {"trust", "key"}:
            raise SiteKeyError(f"site_keys_file: site {site} needs exactly trust and key")
        trust, text_key = table["trust"], table["key"]
        if trust not in ("inhouse", "partner"):
            raise SiteKeyError(f"site_keys_file: site {site} trust must be inhouse or partner")
        sites[site] = SitePublic(Trust[trust.upper()], _public(site, text_key))
    return KeyRing(sites)


def _public(site: str, text: object) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(str(text), validate=True)
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        raise SiteKeyError(
            f"site_keys_file: site {site} key must be the base64 of a 32-byte Ed25519 public key"
        ) from None


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except OSError as error:
        raise SiteKeyError(f"site_key: cannot read {path}: {error.strerror}") from None
    except (ValueError, TypeError) as error:
        raise SiteKeyError(f"site_key: {path} is not an unencrypted PEM key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SiteKeyError(f"site_key: {path} is not an Ed25519 key")
    return key


def load(site: str, key_file: str, ring_file: str) -> SiteKeys:
    """A node's keys from its config fields; raises SiteKeyError naming the field."""
    try:
        text = Path(ring_file).read_text()
    except OSError as error:
        raise SiteKeyError(f"site_keys_file: cannot read {ring_file}: {error.strerror}") from None
    return SiteKeys(site, load_private(Path(key_file)), ring_from_toml(text))


def generate(sites: Mapping[str, Trust]) -> tuple[KeyRing, dict[str, Ed25519PrivateKey]]:
    """Fresh keys for these sites (tests, LocalCluster): the ring and each site's private key."""
    privates = {site: Ed25519PrivateKey.generate() for site in sites}
    ring = KeyRing({s: SitePublic(sites[s], k.public_key()) for s, k in privates.items()})
    return ring, privates


def write_site_key(directory: Path, site: str, trust: Trust) -> tuple[Path, Path]:
    """A new key for `site` (refuses to overwrite one) in DIR/SITE.site.key, and SITE's entry
    in DIR/site-keys.toml (added, or replaced): (key path, ring path)."""
    try:
        check_id("site", site)
    except InvalidRecord as error:
        raise SiteKeyError(str(error)) from None
    directory.mkdir(parents=True, exist_ok=True)
    key_path, ring_path = directory / f"{site}.site.key", directory / KEY_RING
    if key_path.exists():
        raise SiteKeyError(f"{key_path} exists: site {site} has a key there already")
    sites: dict[str, SitePublic] = {}
    if ring_path.exists():
        sites = ring_from_toml(ring_path.read_text()).entries()
    key = Ed25519PrivateKey.generate()
    sites[site] = SitePublic(trust, key.public_key())
    key_path.write_bytes(private_pem(key))
    key_path.chmod(0o600)
    ring_path.write_text(KeyRing(sites).toml())
    return key_path, ring_path
