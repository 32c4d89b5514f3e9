"""Token revocation (node/revocations.py, node/auth.py, node/revoker.py): a token carries an id;
POST /logout revokes it, an admin's POST /users/NAME/revoke every token of a user; revocations
reach every node of every site (the site's etcd; pushes between sites over the nodes' mutual-TLS
gRPC, node/revocation_rpc.py, whose checks tests/node/test_revocation_rpc.py covers)."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.auth import Auth
from node.localcluster import LocalCluster, SitePlan
from node.revocations import Kind, Revocation, Revocations
from node.revoker import sealed, unsealed
from node.sitekeys import SiteKeys, generate
from node.tokens import (
    Audience,
    AuthError,
    Claims,
    OutOfScope,
    TokenRevoked,
    revocation_out_of_scope,
)
from node.users import Role, User, hash_password
from registry.errors import InvalidRecord
from registry.records import Trust
from tests.node.test_cluster import Client, eventually

RING, PRIVATE = generate({"site-a": Trust.INHOUSE, "partner-c": Trust.PARTNER})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


USERS = {
    "ann": User("ann", Role.AGENT, hash_password("pw", n=2**4), site="site-a"),
    "pia": User("pia", Role.AGENT, hash_password("pw", n=2**4), site="partner-c"),
}


HOUSE = Audience(inhouse=True)


def make_auth(clock: Clock, site: str = "site-a") -> Auth:
    return Auth(USERS, SiteKeys(site, PRIVATE[site], RING), token_ttl_s=3600, clock=clock)


def test_a_logged_out_token_is_refused_and_others_are_not() -> None:
    clock = Clock()
    auth = make_auth(clock)
    first, second = auth.login("ann", "pw"), auth.login("ann", "pw")
    assert first.claims.token_id != second.claims.token_id
    auth.revoke_token(auth.verify(first.token))
    with pytest.raises(TokenRevoked, match="logged out"):
        auth.verify(first.token)
    assert auth.verify(second.token).user == "ann"


def test_revoking_a_user_refuses_its_older_tokens_only() -> None:
    clock = Clock()
    auth = make_auth(clock)
    old = auth.login("ann", "pw").token
    other = auth.token_for("sue", Role.SUPERVISOR)
    clock.now += 10
    auth.revoke_user("ann")
    with pytest.raises(TokenRevoked, match="tokens of ann were revoked"):
        auth.verify(old)
    assert auth.verify(other).user == "sue"
    clock.now += 1
    assert auth.verify(auth.login("ann", "pw").token).user == "ann", "a new login works"
    # a token from before tokens had ids is still covered by the user's revocation
    legacy = auth.signer.issue(Claims("ann", Role.AGENT, clock.now + 1000, audience=HOUSE))
    with pytest.raises(TokenRevoked):
        auth.verify(legacy)
    with pytest.raises(AuthError, match="no id"):
        auth.revoke_token(Claims("ann", Role.AGENT, clock.now + 1000))


def test_entries_expire_with_the_tokens_they_refuse() -> None:
    known = Revocations()
    known.add(Revocation(Kind.TOKEN, "t1", 10, 100))
    known.add(Revocation(Kind.USER, "ann", 10, 200))
    assert [e.subject for e in known.prune(150)] == ["t1"]
    assert known.refusal("ann", "", 5) is not None
    assert known.refusal("ann", "", 11) is None


entries = st.builds(
    lambda kind, subject, at, extra: Revocation(kind, subject, at, at + extra),
    st.sampled_from(Kind),
    st.sampled_from(["ann", "bo", "t-1"]),
    st.integers(0, 1000),
    st.integers(0, 1000),
)


@given(st.lists(entries, max_size=12), st.randoms())
def test_any_order_and_repetition_of_entries_gives_the_same_set(
    batch: list[Revocation], shuffle: random.Random
) -> None:
    one, two = Revocations(), Revocations()
    one.add_all(batch)
    mixed = batch * 2
    shuffle.shuffle(mixed)
    two.add_all(mixed)
    assert one.entries() == two.entries()


def test_pushes_are_signed_and_checked() -> None:
    auth = make_auth(Clock())
    batch = [Revocation(Kind.TOKEN, "abc", 1, 2), Revocation(Kind.USER, "ann", 1, 2)]
    body = sealed(auth, batch)
    assert unsealed(auth, body) == batch
    with pytest.raises(AuthError):
        unsealed(auth, {**body, "revocations": body["revocations"].replace("abc", "abd")})
    assert body["site"] == "site-a"
    with pytest.raises(AuthError, match="does not verify under site partner-c's key"):
        unsealed(auth, {**body, "site": "partner-c"})
    with pytest.raises(AuthError, match="no key in the key ring"):
        unsealed(auth, {**body, "site": "site-x"})
    foreign_ring, foreign = generate({"site-a": Trust.INHOUSE})
    other = Auth({}, SiteKeys("site-a", foreign["site-a"], foreign_ring), clock=Clock())
    with pytest.raises(AuthError):
        unsealed(other, body)
    for bad in ({}, {"site": "site-a", "revocations": 1, "signature": ""}):
        with pytest.raises(InvalidRecord):
            unsealed(auth, bad)
    with pytest.raises(InvalidRecord, match="kind"):
        Revocation.from_json({"kind": "x", "subject": "a", "at_ms": 1, "expires_ms": 2})
    with pytest.raises(InvalidRecord):
        Revocation(Kind.TOKEN, "a", 5, 4)


def test_a_partner_site_revokes_only_its_own_users_tokens() -> None:
    site_a, partner = make_auth(Clock()), make_auth(Clock(), "partner-c")
    pia_token = partner.verify(partner.login("pia", "pw").token)
    assert pia_token.token_id.startswith("partner-c~"), "a token id names its issuing site"
    own = [Revocation(Kind.USER, "pia", 1, 2), partner.revoke_token(pia_token)]
    assert unsealed(site_a, sealed(partner, own)) == own
    for beyond in (Revocation(Kind.USER, "ann", 1, 2), Revocation(Kind.TOKEN, "site-a~x", 1, 2)):
        with pytest.raises(OutOfScope, match="partner site partner-c may revoke only its own"):
            unsealed(site_a, sealed(partner, [*own, beyond]))
        assert not partner.may_spread(beyond), "a partner node leaves it out of its pushes"
        assert site_a.may_spread(beyond), "an in-house site revokes anyone"
        assert revocation_out_of_scope(beyond, "site-a", Trust.INHOUSE, USERS) is None
    unknown_user = Revocation(Kind.USER, "nobody", 1, 2)
    assert revocation_out_of_scope(unknown_user, "partner-c", Trust.PARTNER, USERS) is not None


# -- over real nodes in two sites -----------------------------------------------------------


async def test_a_token_revoked_at_one_site_is_refused_at_every_node_of_another(
    tmp_path: Path,
) -> None:
    sites = [SitePlan("site-a", "inhouse", 2), SitePlan("site-b", "inhouse", 1)]
    async with (
        LocalCluster(sites, tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as admin_http,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, admin_http)
        await client.all_ready(30)
        a1, a2, b1 = "site-a-n1", "site-a-n2", "site-b-n1"

        async def status_with(token: str, node: str) -> tuple[int, str]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(client.url(node, "/agents/ann/offers"), headers=headers) as r:
                body = await r.json()
                return r.status, str(body.get("error", "")) if isinstance(body, dict) else ""

        async def refused_everywhere(token: str, code: str) -> float:
            async def refused() -> bool:
                answers = [await status_with(token, node) for node in (a1, a2, b1)]
                return all(answer == (401, code) for answer in answers)

            return await eventually(refused, 10, f"{code} at every node")

        token = await client.login_user(a1, "ann")
        keep = await client.login_user(a1, "ann")
        for node in (a1, a2, b1):
            status, error = await status_with(token, node)
            assert status != 401, (node, error)
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(client.url(a1, "/logout"), headers=headers) as response:
            assert response.status == 200, await response.text()
        took = await refused_everywhere(token, "token_revoked")
        print(f"logout seen at every node of both sites within {took:.2f} s")
        for node in (a1, a2, b1):
            status, _ = await status_with(keep, node)
            assert status != 401, "another token of the same user stays valid"
        # an admin at site-b revokes every token of ann: the kept one goes too, everywhere
        status, body = await client.post(b1, "/users/ann/revoke")
        assert status == 200, body
        await refused_everywhere(keep, "token_revoked")
        fresh = await client.login_user(a2, "ann")
        status, _ = await status_with(fresh, b1)
        assert status != 401, "a login after the revocation works"
        # bad input: a user name that is no id, an unsigned push
        status, body = await client.post(a1, "/users/not an id/revoke")
        assert status == 400, body
        unsigned = {"site": "site-a", "revocations": "[]", "signature": "x"}
        async with http.post(client.url(b1, "/revocations"), json=unsigned) as response:
            assert response.status == 401, "an unsigned push is refused"
