"""Revocation pushes between sites over a real mutual-TLS gRPC connection on loopback
(node/revocation_rpc.py, node/revoker.py `unsealed`): a push must name the site of the pushing
node's certificate and carry that site's signature; a partner site (by its key or by its
certificate) revokes only its own users' tokens; a refused push is refused whole."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.auth import Auth
from node.ca import init_ca, issue
from node.revocation_rpc import RevocationLink, RevocationServicer
from node.revocations import Kind, Revocation
from node.revoker import sealed
from node.sitekeys import KeyRing, SiteKeys, generate
from node.transport import Tls, Transport
from node.users import Role, User, hash_password
from protos import revocations_pb2_grpc as pb_grpc
from registry.records import Trust

SITES = {"site-a": Trust.INHOUSE, "site-b": Trust.INHOUSE, "partner-c": Trust.PARTNER}
RING, PRIVATE = generate(SITES)
USERS = {
    "ann": User("ann", Role.AGENT, hash_password("pw", n=2**4), site="site-a"),
    "pia": User("pia", Role.AGENT, hash_password("pw", n=2**4), site="partner-c"),
}
ANN = Revocation(Kind.USER, "ann", 1, 2)
PIA = Revocation(Kind.USER, "pia", 1, 2)


def auth_of(
    site: str, ring: KeyRing = RING, private: Mapping[str, Ed25519PrivateKey] = PRIVATE
) -> Auth:
    return Auth(USERS, SiteKeys(site, private[site], ring), clock=lambda: 1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tls]:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(ca)
    material = {}
    for site, trust in SITES.items():
        cert, key = issue(ca, f"{site}-n1", site, trust)
        material[site] = Tls.load(ca / "ca.pem", cert, key)
    return material


@dataclass
class Taken:
    """The receiving node's Revoker, as the servicer sees it (no etcd here)."""

    auth: Auth
    entries: list[Revocation] = field(default_factory=list)

    async def received(self, entries: list[Revocation]) -> int:
        self.entries += entries
        return len(entries)


@contextlib.asynccontextmanager
async def site_a_node(tls: Tls, auth: Auth) -> AsyncIterator[tuple[str, Taken]]:
    taken, transport = Taken(auth), Transport(tls=tls)
    server = transport.server()
    servicer = RevocationServicer(lambda: taken, True, transport)
    pb_grpc.add_RevocationsServicer_to_server(servicer, server)
    port = transport.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", taken
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def link_of(tls: Tls) -> AsyncIterator[RevocationLink]:
    link = RevocationLink(Transport(tls=tls), timeout_s=2.0)
    try:
        yield link
    finally:
        await link.close()


async def refused(link: RevocationLink, address: str, body: dict[str, object], why: str) -> None:
    with pytest.raises(ConnectionError, match=why):
        await link.push(address, dict(body))


async def test_sites_push_over_mutual_tls_within_their_rights(pki: dict[str, Tls]) -> None:
    async with (
        site_a_node(pki["site-a"], auth_of("site-a")) as (address, taken),
        link_of(pki["site-b"]) as site_b,
        link_of(pki["partner-c"]) as partner,
    ):
        await site_b.push(address, sealed(auth_of("site-b"), [ANN, PIA]))
        await partner.push(address, sealed(auth_of("partner-c"), [PIA]))
        assert taken.entries == [ANN, PIA, PIA]
        # a partner revoking an in-house user: the whole push is refused
        beyond = sealed(auth_of("partner-c"), [PIA, ANN])
        await refused(partner, address, beyond, "PERMISSION_DENIED: partner site partner-c")
        # a push signed by site-b relayed (or replayed) by a partner's node
        relayed = sealed(auth_of("site-b"), [ANN])
        await refused(partner, address, relayed, "a node of site partner-c may push only its own")
        # a bad signature
        forged = {**sealed(auth_of("site-b"), [ANN]), "signature": "AAAA"}
        await refused(site_b, address, forged, "UNAUTHENTICATED")
        # not a list of entries
        garbage = sealed(auth_of("site-b"), [])
        garbage = {**garbage, "revocations": "{}"}
        garbage["signature"] = auth_of("site-b").sign("{}")
        await refused(site_b, address, garbage, "INVALID_ARGUMENT: revocations must be a JSON list")
        assert taken.entries == [ANN, PIA, PIA], "nothing of a refused push is taken"


async def test_a_partners_certificate_bounds_its_push_whatever_the_key_ring_says(
    pki: dict[str, Tls],
) -> None:
    """A key ring that wrongly lists partner-c as in-house: its certificate still says partner."""
    ring, private = generate({"site-a": Trust.INHOUSE, "partner-c": Trust.INHOUSE})
    async with (
        site_a_node(pki["site-a"], auth_of("site-a", ring, private)) as (address, taken),
        link_of(pki["partner-c"]) as partner,
    ):
        beyond = sealed(auth_of("partner-c", ring, private), [ANN])
        await refused(partner, address, beyond, "partner site partner-c may revoke only its own")
        await partner.push(address, sealed(auth_of("partner-c", ring, private), [PIA]))
        assert taken.entries == [PIA]


async def test_a_node_without_authentication_says_so() -> None:
    transport = Transport()
    server = transport.server()
    servicer = RevocationServicer(lambda: None, False, transport)
    pb_grpc.add_RevocationsServicer_to_server(servicer, server)
    port = transport.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        link = RevocationLink(transport, timeout_s=2.0)
        body = sealed(auth_of("site-b"), [ANN])
        await refused(link, f"127.0.0.1:{port}", body, "FAILED_PRECONDITION: authentication is off")
        await link.close()
    finally:
        await server.stop(0)
