"""What a peer node may do, by the identity its certificate proves (pure; no grpc, no I/O).

In-house peers are trusted with everything the protocol allows. A partner site's node
(semi-trusted) may only:
- deliver registry entries of its own site: agent records whose agent and home node belong to its
  site and say trust partner, queue summaries of its own nodes, its own nodes' addresses. Entries
  of other sites it relays are dropped (each in-house site learns them from in-house gateways);
- reserve agents of its own site, or of the sites `partner_scopes` lists for it
  ("PARTNER=SITE"), and only for calls its site's nodes own;
- report what an agent did, or ask for a waiting call for an agent, only for agents homed at its
  site;
- ask whether an agent here still holds a call (Holds, the owner's watchdog) only for calls its
  site's nodes own;
- open or close a node-to-node media leg to an agent only for a call its site's nodes own and
  that agent is offered here (the Media service, node/media_rpc.py), and have its RTP sent only
  to itself: the host its connection comes from, or the host of its certificate's node's
  gossiped gRPC address (`may_send_media_to`), never to a third party (no exfiltration or
  reflection of a call's audio).
Rights are a site's: a certificate names a site and its trust (its CN may be the node or the
site), and node ids are mapped to sites through the registry, whose node entries a partner can
only write for its own site.
Customer fields are cut by the *receiving* node's certificate: node/calls_rpc.py sends a record
cut for in-house eyes only over a channel pinned to in-house certificates (node/transport.py).
A peer identity of None means plain gRPC (no TLS: development and unit tests), which has no
identities to check.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from node.ca import Identity
from registry.records import AgentRecord, NodeInfo, Trust
from registry.sync import Delta


class RegistryView(Protocol):
    def agent(self, agent_id: str) -> AgentRecord | None: ...

    def node(self, node_id: str) -> NodeInfo | None: ...


def parse_scopes(pairs: Iterable[str]) -> frozenset[tuple[str, str]]:
    """NodeConfig.partner_scopes ("PARTNER=SITE") as (partner site, site) pairs."""
    return frozenset((p, s) for p, _, s in (pair.partition("=") for pair in pairs))


@dataclass(frozen=True, slots=True)
class Admitted:
    delta: Delta
    dropped: int


def _trusted(peer: Identity | None) -> bool:
    return peer is None or peer.trust is Trust.INHOUSE


def admit(peer: Identity | None, delta: Delta, view: RegistryView) -> Admitted:
    """The part of a pushed delta this peer may write (a partner: its own site's entries)."""
    if _trusted(peer):
        return Admitted(delta, 0)
    assert peer is not None
    site = peer.site

    def ours(node_id: str) -> bool:
        known = view.node(node_id)
        return known.site == site if known is not None else node_id in new_nodes

    nodes = tuple(
        n
        for n in delta.nodes
        if n.site == site
        and n.trust is Trust.PARTNER
        and ((known := view.node(n.node_id)) is None or known.site == site)
    )
    new_nodes = {n.node_id for n in nodes}
    agents = tuple(
        a
        for a in delta.agents
        if a.site == site
        and a.trust is Trust.PARTNER
        and ours(a.home_node)
        and ((known_agent := view.agent(a.agent_id)) is None or known_agent.site == site)
    )
    queues = tuple(q for q in delta.queues if ours(q.node))
    kept = replace(delta, agents=agents, queues=queues, nodes=nodes)
    return Admitted(kept, len(delta) - len(kept))


def _site_of(view: RegistryView, node_id: str) -> str | None:
    known = view.node(node_id)
    return known.site if known is not None else None


def may_reserve(
    peer: Identity | None,
    call_owner: str,
    home_site: str,
    scopes: frozenset[tuple[str, str]],
    view: RegistryView,
) -> str | None:
    """None when the peer may reserve an agent of `home_site` for a call `call_owner` owns;
    else why not. The owner must be a node of the peer's site (a certificate names a site; it may
    be one for the whole site, so node ids are checked through the registry)."""
    if _trusted(peer):
        return None
    assert peer is not None
    if _site_of(view, call_owner) != peer.site:
        return f"site {peer.site} may reserve only for calls its nodes own, not {call_owner!r:.70}"
    if home_site != peer.site and (peer.site, home_site) not in scopes:
        return f"partner site {peer.site} may not reserve agents of site {home_site}"
    return None


def may_speak_for(peer: Identity | None, agent_id: str, view: RegistryView) -> str | None:
    """None when the agent is homed at the peer's site (reports, pulls); else why not."""
    if _trusted(peer):
        return None
    assert peer is not None
    record = view.agent(agent_id)
    if record is None or record.site != peer.site or _site_of(view, record.home_node) != peer.site:
        return f"site {peer.site} is not the home of agent {agent_id!r:.70}"
    return None


def may_pull(
    peer: Identity | None, agent_id: str, home_node: str, view: RegistryView
) -> str | None:
    """None when the peer may ask for a waiting call for `agent_id` at `home_node`."""
    if _trusted(peer):
        return None
    assert peer is not None
    if _site_of(view, home_node) != peer.site:
        return f"site {peer.site} may ask for calls only for its own nodes' agents"
    return may_speak_for(peer, agent_id, view)


def may_release(peer: Identity | None, call_owner: str, view: RegistryView) -> str | None:
    """None when the peer may release an agent from a call `call_owner` owns (its site's)."""
    if _trusted(peer):
        return None
    assert peer is not None
    if _site_of(view, call_owner) != peer.site:
        return f"site {peer.site} may release agents only from its own nodes' calls"
    return None


def may_ask_holds(peer: Identity | None, call_owner: str | None, view: RegistryView) -> str | None:
    """None when the peer may ask whether an agent here is still held on a call whose offer names
    `call_owner` as its owner (None: no such offer here, and the answer, not held, tells no more
    than the registry shows of the agent's session); else why not."""
    if _trusted(peer) or call_owner is None:
        return None
    assert peer is not None
    if _site_of(view, call_owner) != peer.site:
        return f"site {peer.site} may ask about agents only on its own nodes' calls"
    return None


def may_relay(peer: Identity | None, call_owner: str | None, view: RegistryView) -> str | None:
    """None when the peer may open or close a node-to-node media leg for a call whose offer to
    the agent here names `call_owner` as its owner (None: no such offer here); else why not."""
    if _trusted(peer):
        return None
    assert peer is not None
    if call_owner is None:
        return f"site {peer.site} may bridge media only for calls offered to the agent here"
    if _site_of(view, call_owner) != peer.site:
        return f"site {peer.site} may bridge media only for its own nodes' calls"
    return None


def _canonical(host: str) -> str:
    """A host as compared: an IP address in its canonical form, a name in lower case."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host.lower()


def _host(address: str) -> str:
    """The host of host:port ([v6]:port too)."""
    return _canonical(address.rpartition(":")[0])


def may_send_media_to(
    peer: Identity | None, address: str, peer_host: str | None, view: RegistryView
) -> str | None:
    """None when this node may send a media leg's RTP to `address` (host:port) for the peer that
    asks; else why not. A partner's node may name only itself: `peer_host` (the IP its
    connection comes from, None when unknown) or the host of the gRPC address the registry
    holds for the node its certificate names (when that node is of its site). The port is
    free: a node's legs take ephemeral ports."""
    if _trusted(peer):
        return None
    assert peer is not None
    wanted = _host(address)
    own = view.node(peer.node_id)
    hosts = {_canonical(peer_host)} if peer_host else set()
    if own is not None and own.site == peer.site:
        hosts.add(_host(own.grpc))
    if wanted in hosts:
        return None
    known = ", ".join(sorted(hosts)) or "none known"
    return (
        f"site {peer.site} may have media sent only to its own node ({known}), "
        f"not to {address!r:.70}"
    )
