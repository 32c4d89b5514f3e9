"""Site signing keys (node/sitekeys.py) and what a site's signature may claim (node/auth.py's
`out_of_scope`): pure, no event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.auth import Auth, Claims, OutOfScope, Role, TokenSigner, User, out_of_scope
from node.cli import main
from node.sitekeys import (
    KEY_RING,
    BadSignature,
    SiteKeyError,
    SiteKeys,
    generate,
    load,
    load_private,
    ring_from_toml,
)
from registry.records import Trust

HASH = "scrypt$16$8$1$AAAA$AAAA"
USERS = {
    "ann": User("ann", Role.AGENT, HASH, site="site-a"),
    "pia": User("pia", Role.AGENT, HASH, site="partner-c"),
    "pat": User("pat", Role.SUPERVISOR, HASH, site="partner-c"),
    "sue": User("sue", Role.SUPERVISOR, HASH),
    "root": User("root", Role.ADMIN, HASH),
}
SITES = {"site-a": Trust.INHOUSE, "site-b": Trust.INHOUSE, "partner-c": Trust.PARTNER}


def claims(user: str, role: Role, site: str, call_id: str = "") -> Claims:
    return Claims(user, role, 10**15, call_id, site=site)


@pytest.mark.parametrize(
    ("token", "here", "accepted"),
    [
        # an in-house site grants anything anywhere
        (claims("sue", Role.SUPERVISOR, "site-a"), "site-b", True),
        (claims("root", Role.ADMIN, "site-a"), "partner-c", True),
        (claims("pia", Role.AGENT, "site-b"), "site-a", True),
        # a partner site: its own agents with role agent, anywhere
        (claims("pia", Role.AGENT, "partner-c"), "site-a", True),
        (claims("ann", Role.AGENT, "partner-c"), "site-a", False),  # an in-house agent
        (claims("nobody", Role.AGENT, "partner-c"), "site-a", False),  # not in the users file
        (claims("pat", Role.AGENT, "partner-c"), "site-a", False),  # its user, not an agent
        (claims("pat", Role.SUPERVISOR, "partner-c"), "site-a", False),
        (claims("sue", Role.SUPERVISOR, "partner-c"), "site-a", False),
        (claims("root", Role.ADMIN, "partner-c"), "site-a", False),
        (claims("caller:c-1", Role.CALLER, "partner-c", "site-a-n1-1-1"), "site-a", False),
        # ... and anything at its own nodes, which hold its key anyway
        (claims("root", Role.ADMIN, "partner-c"), "partner-c", True),
        (claims("caller:c-1", Role.CALLER, "partner-c", "partner-c-n1-1-1"), "partner-c", True),
    ],
)
def test_what_a_site_may_grant(token: Claims, here: str, accepted: bool) -> None:
    refusal = out_of_scope(token, SITES[token.site], here, USERS)
    assert (refusal is None) is accepted, refusal
    if refusal is not None:
        assert f"partner site {token.site}" in refusal


def test_a_node_refuses_partner_tokens_beyond_its_scope_and_takes_the_rest() -> None:
    ring, privates = generate(SITES)
    keys = {site: SiteKeys(site, privates[site], ring) for site in SITES}
    at_site_a = Auth(USERS, keys["site-a"])
    partner = TokenSigner(keys["partner-c"])
    assert at_site_a.verify(partner.issue(claims("pia", Role.AGENT, ""))).site == "partner-c"
    with pytest.raises(OutOfScope, match="may not issue supervisor tokens valid at site site-a"):
        at_site_a.verify(partner.issue(claims("sue", Role.SUPERVISOR, "")))
    with pytest.raises(OutOfScope, match="ann is not one"):
        at_site_a.verify(partner.issue(claims("ann", Role.AGENT, "")))
    # the site named in the claims is not what counts: the signing key is
    with pytest.raises(OutOfScope):
        at_site_a.verify(partner.issue(claims("root", Role.ADMIN, "site-a")))
    at_partner = Auth(USERS, keys["partner-c"])
    assert at_partner.verify(partner.issue(claims("sue", Role.SUPERVISOR, ""))).user == "sue"
    assert at_partner.caller_token("partner-c-n1-1-1").startswith("v2.")


def test_key_ring_file_round_trips_and_names_its_errors() -> None:
    ring, privates = generate(SITES)
    again = ring_from_toml(ring.toml())
    assert again.sites() == sorted(SITES)
    assert again.trust("partner-c") is Trust.PARTNER
    signature = privates["site-b"].sign(b"data")
    assert again.check("site-b", b"data", signature) is Trust.INHOUSE
    with pytest.raises(BadSignature, match="site site-a's key"):
        again.check("site-a", b"data", signature)
    with pytest.raises(BadSignature, match="site site-a's key"):
        again.check("site-a", b"data", b"short")
    good = 'key = "' + ring.toml().split('key = "')[1].split('"')[0] + '"'
    for text, problem in [
        ("not toml [", "not valid TOML"),
        ("", r"\[sites.NAME\] tables"),
        ('[sites."a b"]\ntrust = "inhouse"\n' + good, "site_keys_file site must be"),
        ('[sites.x]\ntrust = "inhouse"\n', "needs exactly trust and key"),
        ('[sites.x]\ntrust = "boss"\n' + good, "trust must be inhouse or partner"),
        ('[sites.x]\ntrust = "inhouse"\nkey = "AAAA"\n', "32-byte Ed25519 public key"),
        ('[sites.x]\ntrust = "inhouse"\nkey = "!!"\n', "32-byte Ed25519 public key"),
    ]:
        with pytest.raises(SiteKeyError, match=problem):
            ring_from_toml(text)


def test_site_keys_load_from_files_with_errors_naming_the_field(tmp_path: Path) -> None:
    ring, _ = generate(SITES)
    ring_file = tmp_path / KEY_RING
    ring_file.write_text(ring.toml())
    with pytest.raises(SiteKeyError, match=r"^site_key: cannot read"):
        load("site-a", str(tmp_path / "none.key"), str(ring_file))
    with pytest.raises(SiteKeyError, match=r"^site_keys_file: cannot read"):
        load("site-a", str(tmp_path / "none.key"), str(tmp_path / "none.toml"))
    (tmp_path / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(SiteKeyError, match=r"^site_key: .* is not an unencrypted PEM key"):
        load_private(tmp_path / "bad.key")


def test_the_cli_makes_a_key_per_site_and_one_ring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for site, trust in (("site-a", "inhouse"), ("partner-c", "partner")):
        with pytest.raises(SystemExit) as done:
            main(["ca", "site-key", str(tmp_path), "--site", site, "--trust", trust])
        assert done.value.code == 0
    assert (tmp_path / "site-a.site.key").stat().st_mode & 0o077 == 0, "a private key is private"
    keys = load("partner-c", str(tmp_path / "partner-c.site.key"), str(tmp_path / KEY_RING))
    assert keys.trust is Trust.PARTNER
    assert keys.ring.sites() == ["partner-c", "site-a"]
    with pytest.raises(SiteKeyError, match="not site site-a's"):
        load("site-a", str(tmp_path / "partner-c.site.key"), str(tmp_path / KEY_RING))
    with pytest.raises(SystemExit) as done:
        main(["ca", "site-key", str(tmp_path), "--site", "site-a", "--trust", "inhouse"])
    assert done.value.code == 2
    assert "has a key there already" in capsys.readouterr().err
