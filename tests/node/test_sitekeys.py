"""Site signing keys (node/sitekeys.py) and what a site's signature may claim (node/auth.py's
`out_of_scope`): pure, no event loop."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from node.auth import Auth
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
from node.tokens import (
    TOKEN_VERSION,
    Audience,
    AuthError,
    BadAudience,
    Claims,
    OutOfScope,
    TokenSigner,
    WrongAudience,
    default_audience,
    out_of_scope,
)
from node.users import Role, User
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
    return Claims(user, role, 10**15, call_id, site=site, audience=Audience(frozenset(SITES)))


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


HOUSE = Audience(inhouse=True)


@pytest.mark.parametrize(
    ("role", "user", "issuer", "expected"),
    [
        # an in-house site's tokens: every in-house site; a caller's: the call's site only
        (Role.SUPERVISOR, "sue", "site-a", HOUSE),
        (Role.AGENT, "ann", "site-a", HOUSE),
        (Role.AGENT, "pia", "site-b", HOUSE),
        (Role.CALLER, "caller:c-1", "site-a", Audience(frozenset({"site-a"}))),
        # a partner site's: its own site, and for its own agents the in-house sites too
        (Role.AGENT, "pia", "partner-c", Audience(frozenset({"partner-c"}), inhouse=True)),
        (Role.AGENT, "ann", "partner-c", Audience(frozenset({"partner-c"}))),
        (Role.SUPERVISOR, "pat", "partner-c", Audience(frozenset({"partner-c"}))),
        (Role.ADMIN, "root", "partner-c", Audience(frozenset({"partner-c"}))),
        (Role.CALLER, "caller:c-1", "partner-c", Audience(frozenset({"partner-c"}))),
    ],
)
def test_default_audience(role: Role, user: str, issuer: str, expected: Audience) -> None:
    assert default_audience(role, USERS.get(user), issuer, SITES[issuer]) == expected


def test_a_node_takes_the_tokens_of_its_audience_only() -> None:
    ring, privates = generate(SITES)
    at = {site: Auth(USERS, SiteKeys(site, privates[site], ring)) for site in SITES}
    sue = at["site-a"].token_for("sue", Role.SUPERVISOR)
    assert at["site-b"].verify(sue).user == "sue"
    with pytest.raises(WrongAudience, match=r"for the in-house sites only.*site partner-c"):
        at["partner-c"].verify(sue)
    for_c = at["site-a"].token_for(
        "sue", Role.SUPERVISOR, audience=Audience(frozenset({"partner-c"}))
    )
    assert at["partner-c"].verify(for_c).user == "sue"
    for site in ("site-a", "site-b"):
        with pytest.raises(WrongAudience, match="for partner-c only"):
            at[site].verify(for_c)
    caller = at["site-a"].caller_token("site-a-n1-1-1")
    assert at["site-a"].verify(caller).call_id == "site-a-n1-1-1"
    with pytest.raises(WrongAudience):
        at["site-b"].verify(caller)
    pia = at["partner-c"].token_for("pia", Role.AGENT)
    assert {at[site].verify(pia).user for site in SITES} == {"pia"}
    # a token with no audience (issued before tokens had one) counts nowhere
    keys = SiteKeys("site-a", privates["site-a"], ring)
    body = base64.urlsafe_b64encode(b'{"u":"sue","r":"supervisor","e":1e15,"s":"site-a"}')
    payload = body.rstrip(b"=").decode()
    signature = keys.sign(f"{TOKEN_VERSION}.{payload}".encode())
    legacy = f"{TOKEN_VERSION}.{payload}.{base64.urlsafe_b64encode(signature).decode()}"
    with pytest.raises(WrongAudience, match="names no audience"):
        at["site-a"].verify(legacy)
    with pytest.raises(ValueError, match="needs an audience"):
        TokenSigner(keys).issue(Claims("sue", Role.SUPERVISOR, 10**15))


def test_a_login_asks_for_an_audience_of_known_sites() -> None:
    ring, privates = generate(SITES)
    auth = Auth(USERS, SiteKeys("site-a", privates["site-a"], ring))
    asked = auth.audience(["partner-c", "site-b"])
    assert asked == Audience(frozenset({"partner-c", "site-b"}))
    assert auth.audience(None) is None
    for bad, problem in [
        ("partner-c", "a list of 1-32 site names"),
        ([], "a list of 1-32 site names"),
        (["site-z", "site-y"], "site-y, site-z not in the key ring"),
        (["site-a", 3], "a list of 1-32 site names"),
        (["x"] * 33, "a list of 1-32"),
    ]:
        with pytest.raises(BadAudience, match=problem):
            auth.audience(bad)
    assert Audience.from_wire(Audience(frozenset({"site-b"}), True).wire()) == Audience(
        frozenset({"site-b"}), True
    )
    for wire in ("@inhouse", ["bad site"], [{"a": 1}]):
        with pytest.raises(ValueError, match="audience"):
            Audience.from_wire(wire)
    assert issubclass(WrongAudience, AuthError)


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
