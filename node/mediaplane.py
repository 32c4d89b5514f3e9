"""The node's media: callers' and agents' WebRTC legs, bridged while a call is in talk.

Owner side (the call's node): `call_in` answers a caller's offer and keeps the leg for the call's
life (a SIP trunk's RTP leg stands in for it when the call came from the trunk). The plane
follows each call through the switchboard's observers and arranges its media to match who is
on the call: the agent who answered (a bridge: RTP forwarded), or the agent and a consulted agent
(a warm escalation: a three-way conference, mixed). An agent homed on another node is reached
through a node-to-node leg to that node (node/media_rpc.py). When the call leaves talk
(escalated) its media is taken down; when it ends the caller's leg is closed (the caller sees the
hang-up). A caller whose connection closes or fails hangs up.

Home side (the agent's node): `agent_in` answers an agent page's offer; one leg per agent
session, kept up between calls, replaced by a new offer. `open_leg` bridges that leg to a call's
node-to-node leg; `close_leg`, or the agent's release from the call, unbridges. Hold plays music
on hold toward the caller from here, so it needs no message to the owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from media.conference import Conference
from media.forward import Bridge, Codec, Leg, Port
from media.peer import PeerLeg, StockBridge, codec_for, encode_tone, stock_relay
from media.recorder import Recorder
from media.relay import RelayLeg
from node import metrics
from node.callstate import Call, CallEvent, CallState
from node.media_rpc import NoMedia
from node.tasks import Tasks

log = logging.getLogger(__name__)

STATS_S = 2.0
MUSIC_HZ = 425.0  # a plain tone; a prompt file can replace it
OPUS = 111  # the payload type node-to-node legs carry

Key = tuple[str, str]
"""(call id, agent id): one agent's part in one call."""


@dataclass(frozen=True, slots=True)
class MediaSettings:
    host: str = ""
    """The address of the node's ICE host candidates and node-to-node legs ("" = every
    interface aioice finds for ICE, and `relay_host` for node-to-node legs)."""
    relay_host: str = "127.0.0.1"
    """Where node-to-node legs listen when `host` is empty. A partner node's relay address is
    taken by an in-house home node only when its host is where the partner's gRPC connections
    come from or its gossiped gRPC host (node/peerpolicy.py `may_send_media_to`)."""
    mode: str = "forward"
    """forward: RTP forwarded with rewritten headers; transcode: decoded and encoded again;
    stock: aiortc's tracks relayed as aiortc does it (a benchmark baseline, one node only)."""


class Remote(Protocol):
    """How the owner reaches an agent's home node for media (node/media_rpc.py's MediaLink)."""

    async def open_leg(self, node_id: str, call_id: str, agent_id: str, address: str) -> str: ...

    async def close_leg(self, node_id: str, call_id: str, agent_id: str) -> None: ...


def parties(call: Call) -> list[tuple[str, str]]:
    """Who the caller talks with: [(agent, its node)], the consulted agent too once it has
    answered; nobody unless the call is in talk. Pure."""
    if call.state is not CallState.TALKING or not call.agent_id:
        return []
    found = [(call.agent_id, call.agent_node)]
    if call.consult_agent and call.consult_answered:
        found.append((call.consult_agent, call.consult_node))
    return found


class MediaPlane:
    """The WebRTC legs, bridges and conferences of one node."""

    def __init__(
        self,
        node_id: str,
        site: str,
        settings: MediaSettings,
        remote: Remote,
        *,
        hangup: Callable[[str], Awaitable[object]],
        has_offer: Callable[[str, str], bool],
        holds_agent: Callable[[str], bool] = lambda agent_id: True,
        recordings: Path | None = None,
        records_queue: Callable[[str], bool] = lambda queue: False,
        recorded: Callable[[str, str], None] = lambda call_id, file: None,
        trunk_leg: Callable[[str], Leg | None] = lambda call_id: None,
        phone_leg: Callable[[str, str], Leg | None] = lambda call_id, agent_id: None,
        call_live: Callable[[str], bool] = lambda call_id: True,
    ) -> None:
        self.node_id = node_id
        self._site = site
        self.settings = settings
        self._remote = remote
        self._hangup = hangup
        self._has_offer = has_offer
        self._holds_agent = holds_agent
        self._recordings = recordings
        self._records_queue = records_queue
        self._recorded = recorded
        self._trunk_leg = trunk_leg  # a SIP call's RTP leg (sip/leg.py), owned by the trunk
        self._call_live = call_live  # whether the switchboard still holds the call
        self._phone_leg = phone_leg  # an agent's external phone's RTP leg (sip/phones.py)
        self._phones: dict[Key, Port] = {}  # -> the phone leg's port, while the call lasts
        self.callers: dict[str, Port] = {}  # call id -> the caller's WebRTC leg (owner side)
        self._trunks: dict[str, Port] = {}  # call id -> its trunk leg's port (owner side)
        self.agents: dict[str, Port] = {}  # agent id -> the agent's leg (home side)
        self.bridges: dict[Key, Bridge | StockBridge] = {}  # two-way: owner or home side
        self.conferences: dict[str, Conference] = {}  # call id -> its three-way (owner side)
        self._relays: dict[Key, tuple[RelayLeg, str]] = {}  # -> (leg, the other node or "")
        self._agent_call: dict[str, str] = {}  # agent id -> the call its leg is in
        self.recorders: dict[str, Recorder] = {}  # call id -> its recording (owner side)
        self._locks: dict[str, asyncio.Lock] = {}  # call id -> one arrangement at a time
        self._music: dict[int, Sequence[bytes]] = {}  # payload type -> music on hold
        self._reported: dict[int, tuple[int, int]] = {}  # id(port) -> packets, lost counted
        self._stock: Any = None  # media_mode = "stock": the node's one aiortc MediaRelay
        self._tasks = Tasks(f"media {node_id}")

    @property
    def calls_carried(self) -> int:
        """Calls whose caller's media is on this node (WebRTC callers and trunk legs)."""
        return len(self.callers) + len(self._trunks)

    @property
    def _relay_host(self) -> str:
        return self.settings.host or self.settings.relay_host

    @property
    def _lean(self) -> bool:
        return self.settings.mode != "stock"

    def _codecs(self, caller: Port, agent: Port) -> tuple[Codec, Codec] | None:
        """Decoders and encoders when a bridge must transcode: always in transcode mode, and
        between legs of different codecs (a G.711 trunk leg and Opus)."""
        types = (caller.leg.payload_type, agent.leg.payload_type)
        g711 = [t in (0, 8) for t in types]
        same = g711[0] == g711[1] and (not g711[0] or types[0] == types[1])
        if self.settings.mode != "transcode" and same:
            return None
        return codec_for(types[0]), codec_for(types[1])

    def _caller(self, call_id: str) -> Port | None:
        """The caller's leg of a call owned here: WebRTC, or a SIP trunk's RTP leg."""
        port = self.callers.get(call_id) or self._trunks.get(call_id)
        if port is None:
            leg = self._trunk_leg(call_id)
            if leg is not None:
                port = self._trunks[call_id] = Port(leg, "trunk")
        return port

    # -- callers (owner side) ---------------------------------------------------------------------

    async def call_in(self, sdp: str, arrive: Callable[[], Awaitable[Call]]) -> tuple[Call, str]:
        """Answer a caller's offer, then let the call arrive; (the call, the SDP answer)."""
        leg = await PeerLeg.answering(sdp, self.settings.host, lean=self._lean)
        try:
            call = await arrive()
        except BaseException:
            await leg.close()
            raise
        self.callers[call.call_id] = Port(leg, "caller")
        metrics.MEDIA_LEGS.labels(self._site, "caller").inc()
        leg.on_closed = lambda: self._tasks.spawn(
            self._caller_gone(call.call_id), f"caller of {call.call_id} gone"
        )
        if not self._call_live(call.call_id):  # it ended on arrival (a hook hung up)
            self._tasks.spawn(self._end(call.call_id), f"end media {call.call_id}")
        return call, leg.local_sdp

    async def _caller_gone(self, call_id: str) -> None:
        if call_id in self.callers:
            log.info("call %s: the caller's connection closed: hanging up", call_id)
            try:
                await self._hangup(call_id)
            except Exception as error:  # the call ended meanwhile
                log.info("call %s: hang-up after the caller left: %s", call_id, error)

    def observe(self, before: Call, event: CallEvent, after: Call) -> None:
        """Switchboard observer: arrange the media on answer and on leaving talk; close the
        caller's leg at the end."""
        call_id = after.call_id
        if self._caller(call_id) is None:
            return
        if event is CallEvent.ANSWER or before.state is CallState.TALKING:
            self._tasks.spawn(self._arrange(after), f"media of {call_id}")
        if after.state is CallState.ENDED:
            self._tasks.spawn(self._end(call_id), f"end media {call_id}")

    def parties_changed(self, before: Call, after: Call) -> None:
        """Switchboard party observer: a consultation was answered or ended, or a hand-over."""
        if self._caller(after.call_id) is not None:
            self._tasks.spawn(self._arrange(after), f"media of {after.call_id}")

    async def _arrange(self, call: Call) -> None:
        """Take the call's media down and set it up again for who is on the call now."""
        lock = self._locks.setdefault(call.call_id, asyncio.Lock())
        async with lock:
            await self._teardown(call.call_id)
            caller = self._caller(call.call_id)
            wanted = parties(call)
            if caller is None or not wanted or call.call_id not in self._live_calls():
                return
            ports = {}
            for agent_id, node in wanted:
                port = await self._agent_port(call.call_id, agent_id, node)
                if port is not None:
                    ports[agent_id] = port
            if len(ports) == 1:
                [(agent_id, agent)] = ports.items()
                self._bridge((call.call_id, agent_id), caller, agent, self._recorder(call))
            elif len(ports) > 1:
                codecs: dict[str, Codec] = {"caller": codec_for(caller.leg.payload_type)}
                codecs |= {a: codec_for(p.leg.payload_type) for a, p in ports.items()}
                for agent_id in ports:
                    self._agent_call[agent_id] = call.call_id
                self.conferences[call.call_id] = Conference({"caller": caller, **ports}, codecs)
                log.info("call %s: conference of the caller, %s", call.call_id, ", ".join(ports))

    def _live_calls(self) -> set[str]:
        return set(self.callers) | set(self._trunks)

    async def _agent_port(self, call_id: str, agent_id: str, node: str) -> Port | None:
        """The agent's leg here, or a node-to-node leg bridged to it at its home node."""
        if node == self.node_id:
            port = self._agent_here(call_id, agent_id)
            if port is None:
                log.info("call %s: agent %s has no media here", call_id, agent_id)
            return port
        relay = await RelayLeg.open(self._relay_host)
        key = (call_id, agent_id)
        self._relays[key] = (relay, node)
        metrics.MEDIA_LEGS.labels(self._site, "internode").inc()
        try:
            address = await self._remote.open_leg(node, call_id, agent_id, relay.address)
        except (NoMedia, ConnectionError) as error:
            log.info("call %s: no media leg to %s at %s: %s", call_id, agent_id, node, error)
            self._close_relay(key)
            return None
        if self._relays.get(key, (None,))[0] is not relay:
            return None  # taken down meanwhile
        relay.connect(address)
        log.info("call %s: %s reached at %s through %s", call_id, agent_id, node, address)
        return Port(relay, "internode")

    def _agent_here(self, call_id: str, agent_id: str) -> Port | None:
        """The agent's leg on this node for `call_id`: its page's WebRTC leg, or the RTP leg of
        the call out to its external phone (the audio is on the phone)."""
        port = self.agents.get(agent_id)
        if port is not None:
            return port
        key = (call_id, agent_id)
        port = self._phones.get(key)
        if port is None:
            leg = self._phone_leg(call_id, agent_id)
            if leg is not None:
                port = self._phones[key] = Port(leg, "phone")
        return port

    def _recorder(self, call: Call) -> Recorder | None:
        """The call's recording, started at its first bridge when its queue records."""
        recorder = self.recorders.get(call.call_id)
        if recorder is None and self._recordings is not None and self._records_queue(call.queue):
            name = f"recordings/{call.call_id}.wav"
            caller = self._caller(call.call_id)
            caller_type = OPUS if caller is None else caller.leg.payload_type
            codecs = {"caller": codec_for(caller_type), "agent": codec_for(OPUS)}
            recorder = Recorder(self._recordings / f"{call.call_id}.wav", codecs)
            self.recorders[call.call_id] = recorder
            self._recorded(call.call_id, name)
            log.info("call %s: recording to %s", call.call_id, name)
        return recorder

    async def _teardown(self, call_id: str) -> None:
        """The call's bridges, conference and node-to-node legs, here and at the agents' nodes."""
        conference = self.conferences.pop(call_id, None)
        if conference is not None:
            conference.close()
        for key in [k for k in self.bridges if k[0] == call_id]:
            self._unbridge(key)
        for agent_id in [a for a, c in self._agent_call.items() if c == call_id]:
            del self._agent_call[agent_id]
        for key in [k for k in self._relays if k[0] == call_id]:
            node = self._relays[key][1]
            self._close_relay(key)
            if node:
                try:
                    await self._remote.close_leg(node, *key)
                except ConnectionError as error:
                    log.info("call %s: closing the leg at %s: %s", call_id, node, error)

    async def _end(self, call_id: str) -> None:
        async with self._locks.setdefault(call_id, asyncio.Lock()):
            await self._teardown(call_id)
        self._locks.pop(call_id, None)
        recorder = self.recorders.pop(call_id, None)
        if recorder is not None:
            recorder.close()
        for key in [k for k in self._phones if k[0] == call_id]:  # phone lines close theirs
            self._report(self._phones.pop(key), final=True)
        trunk = self._trunks.pop(call_id, None)  # the trunk closes its own leg
        if trunk is not None:
            self._report(trunk, final=True)
        port = self.callers.pop(call_id, None)
        if port is not None:
            metrics.MEDIA_LEGS.labels(self._site, "caller").dec()
            self._report(port, final=True)
            assert isinstance(port.leg, PeerLeg)
            await port.leg.close()

    # -- agents (home side) ---------------------------------------------------------------------

    async def agent_in(self, agent_id: str, sdp: str) -> str:
        """Answer an agent page's offer; a new offer replaces the agent's leg (and a call in
        progress moves to the new one)."""
        leg = await PeerLeg.answering(sdp, self.settings.host, lean=self._lean)
        port = Port(leg, "agent")
        old = self.agents.get(agent_id)
        self.agents[agent_id] = port
        leg.on_closed = lambda: self._tasks.spawn(
            self._agent_gone(agent_id, port), f"agent {agent_id} media gone"
        )
        if old is None:
            metrics.MEDIA_LEGS.labels(self._site, "agent").inc()
        else:
            call_id = self._agent_call.get(agent_id, "")
            bridge = self.bridges.get((call_id, agent_id))
            if bridge is not None:
                bridge.swap(old, port)
            if call_id in self.conferences:
                self.conferences[call_id].swap(old, port)
            self._report(old, final=True)
            assert isinstance(old.leg, PeerLeg)
            await old.leg.close()
        log.info("agent %s media %s", agent_id, "renegotiated" if old else "up")
        return leg.local_sdp

    async def _agent_gone(self, agent_id: str, port: Port) -> None:
        if self.agents.get(agent_id) is port:
            await self.drop_agent(agent_id)

    async def drop_agent(self, agent_id: str) -> None:
        """The agent's session ended here (logout, moved) or its page went away."""
        port = self.agents.pop(agent_id, None)
        if port is None:
            return
        metrics.MEDIA_LEGS.labels(self._site, "agent").dec()
        call_id = self._agent_call.pop(agent_id, None)
        if call_id is not None:
            self._unbridge((call_id, agent_id))
        self._report(port, final=True)
        assert isinstance(port.leg, PeerLeg)
        await port.leg.close()
        log.info("agent %s media down", agent_id)

    async def open_leg(self, call_id: str, agent_id: str, owner_address: str) -> str:
        """The owner of `call_id` asks: bridge this agent's leg to RTP at `owner_address`."""
        agent = self._agent_here(call_id, agent_id)
        if agent is None:
            raise NoMedia(f"agent {agent_id} has no media session on node {self.node_id}")
        if not self._has_offer(agent_id, call_id):
            raise NoMedia(f"agent {agent_id} has no call {call_id} on node {self.node_id}")
        key = (call_id, agent_id)
        await self.close_leg(*key)
        relay = await RelayLeg.open(self._relay_host)
        relay.connect(owner_address)
        self._relays[key] = (relay, "")
        metrics.MEDIA_LEGS.labels(self._site, "internode").inc()
        self._bridge(key, Port(relay, "internode"), agent)
        log.info("call %s: agent %s bridged to the owner at %s", call_id, agent_id, owner_address)
        return relay.address

    async def close_leg(self, call_id: str, agent_id: str) -> None:
        self._unbridge((call_id, agent_id))
        self._close_relay((call_id, agent_id))

    def released(self, agent_id: str, call_id: str) -> None:
        """The agent's home desk released the agent from the call (ended, escalated, lapsed)."""
        key = (call_id, agent_id)
        if self._relays.get(key, (None, "x"))[1] == "":  # the home end of a node-to-node leg
            self._unbridge(key)
            self._close_relay(key)
        phone = self._phones.pop(key, None)  # the phone line hangs up and closes its own leg
        if phone is not None:
            bridge = self.bridges.get(key)
            if bridge is not None and phone in (bridge.caller, bridge.agent):
                self._unbridge(key)
            self._report(phone, final=True)

    def hold(self, call_id: str, agent_id: str, on: bool) -> None:
        """Hold (music toward the caller, nothing either way) or resume, where the agent's
        bridge is: the agent's home node, or the owner when the agent is homed there."""
        bridge = self.bridges.get((call_id, agent_id))
        if bridge is None:
            raise NoMedia(f"call {call_id} has no two-way media for {agent_id} here")
        payload_type = bridge.caller.leg.payload_type
        if on and payload_type not in self._music:
            self._music[payload_type] = encode_tone(MUSIC_HZ, 1.0, 0.1, payload_type)
        bridge.hold(on, self._music.get(payload_type, ()))
        log.info("call %s %s", call_id, "on hold" if on else "resumed")

    # -- bridges ---------------------------------------------------------------------------------

    def _bridge(self, key: Key, caller: Port, agent: Port, tap: Recorder | None = None) -> None:
        call_id, agent_id = key
        self._unbridge(key)
        previous = self._agent_call.get(agent_id)
        if previous is not None and previous != call_id:
            self._unbridge((previous, agent_id))
        self._agent_call[agent_id] = call_id
        if not self._lean and isinstance(caller.leg, PeerLeg) and isinstance(agent.leg, PeerLeg):
            if self._stock is None:
                self._stock = stock_relay()
            self.bridges[key] = StockBridge(caller, agent, self._stock)
        else:
            taps = [] if tap is None else [tap.tap]
            codecs = self._codecs(caller, agent)
            self.bridges[key] = Bridge(caller, agent, codecs=codecs, taps=taps)

    def _unbridge(self, key: Key) -> None:
        bridge = self.bridges.pop(key, None)
        if bridge is not None:
            bridge.close()
            for port in (bridge.caller, bridge.agent):
                if port.kind == "internode":  # a relay lives as long as its bridge
                    self._report(port, final=True)
        if self._agent_call.get(key[1]) == key[0]:
            del self._agent_call[key[1]]

    def _close_relay(self, key: Key) -> None:
        entry = self._relays.pop(key, None)
        if entry is not None:
            entry[0].close()
            metrics.MEDIA_LEGS.labels(self._site, "internode").dec()

    # -- statistics ------------------------------------------------------------------------------

    def _ports_of(self, call_id: str) -> list[Port]:
        ports = [self._caller(call_id)] if call_id in self._live_calls() else []
        for key, bridge in self.bridges.items():
            if key[0] == call_id:
                ports += [bridge.caller, bridge.agent]
        conference = self.conferences.get(call_id)
        if conference is not None:
            ports += list(conference.ports.values())
        return list({id(p): p for p in ports if p is not None}.values())

    def call_media(self, call_id: str) -> dict[str, object]:
        """The call's legs on this node (caller, node-to-node, agent) with their statistics."""
        ports = self._ports_of(call_id)
        if not ports:
            raise NoMedia(f"call {call_id} has no media on node {self.node_id}")
        bridges = [b for k, b in self.bridges.items() if k[0] == call_id]
        recorder = self.recorders.get(call_id)
        return {
            "call_id": call_id,
            "bridged": bool(bridges) or call_id in self.conferences,
            "conference": call_id in self.conferences,
            "held": any(b.held for b in bridges),
            "recording": "" if recorder is None else f"recordings/{call_id}.wav",
            "legs": [port.summary() for port in ports],
        }

    def agent_media(self, agent_id: str) -> dict[str, object]:
        port = self.agents.get(agent_id)
        if port is None:
            raise NoMedia(f"agent {agent_id} has no media session on node {self.node_id}")
        return {
            "agent_id": agent_id,
            "call_id": self._agent_call.get(agent_id, ""),
            "leg": port.summary(),
        }

    def _report(self, port: Port, *, final: bool = False) -> None:
        """Count what the port received since its last report into the media metrics;
        `final` when the leg goes away."""
        stats = port.stats()
        packets, lost = self._reported.pop(id(port), (0, 0))
        if not final:
            self._reported[id(port)] = (stats.packets, stats.lost)
        metrics.MEDIA_PACKETS_RECEIVED.labels(self._site, port.kind).inc(
            max(0, stats.packets - packets)
        )
        metrics.MEDIA_PACKETS_LOST.labels(self._site, port.kind).inc(max(0, stats.lost - lost))
        if stats.packets > packets:
            metrics.MEDIA_JITTER.labels(self._site, port.kind).observe(stats.jitter_s)

    async def run(self) -> None:
        """Every STATS_S: report every live leg's statistics, and close the legs of agents
        whose session this node no longer holds (logged out, moved); until cancelled."""
        while True:
            await asyncio.sleep(STATS_S)
            for agent_id in [a for a in self.agents if not self._holds_agent(a)]:
                await self.drop_agent(agent_id)
            live = [*self.callers.values(), *self.agents.values(), *self._trunks.values()]
            live += [p for b in self.bridges.values() for p in (b.caller, b.agent)]
            for port in {id(p): p for p in live}.values():
                self._report(port)
                if isinstance(port.leg, PeerLeg):
                    port.round_trip_s = (await port.leg.send_stats()).round_trip_s
                    if port.round_trip_s is not None:
                        metrics.MEDIA_ROUND_TRIP.labels(self._site, port.kind).observe(
                            port.round_trip_s
                        )

    async def close(self) -> None:
        for conference in self.conferences.values():
            conference.close()
        self.conferences.clear()
        for key in list(self.bridges):
            self._unbridge(key)
        for key in list(self._relays):
            self._close_relay(key)
        for recorder in self.recorders.values():
            recorder.close()
        self.recorders.clear()
        legs = [p.leg for p in [*self.callers.values(), *self.agents.values()]]
        self.callers.clear()
        self.agents.clear()
        for leg in legs:
            assert isinstance(leg, PeerLeg)
            await leg.close()
        await self._tasks.close()
