"""The agents homed on this node, as calls come and go: reservations fenced by the session epoch,
answer, reject and hang up, wrap-up, and pulling the best waiting call when an agent frees up.

A reservation takes one of the agent's `capacity` slot keys in the site's etcd, in one
transaction that also requires the agent's session key to be at the revision this node wrote at
login: a node that lost the session (or its lease) cannot reserve, and no agent is ever reserved
for more calls than its capacity (I1), whatever the registry shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from node.etcd import Etcd
from node.events import EventHub
from node.exchange import (
    WATCHDOG_MISSES,
    WATCHDOG_S,
    AgentAction,
    CallInfo,
    Link,
    ReleaseReason,
    Reservation,
    Verdict,
)
from node.queues import QueueConfig
from node.reservationlog import ReservationLog
from node.routing import pick_queue
from node.sessions import Fenced, NotHeldHere, SessionError, Sessions
from node.tasks import Tasks
from registry.clock import wall_ms
from registry.records import AgentRecord, AgentState
from registry.registry import Registry

log = logging.getLogger(__name__)

EXPIRY_MARGIN_S = 2.0
"""A reservation the owner neither confirms nor releases lapses this long after its ring timeout."""
SLOT_RETRY_S = 0.2
SLOT_RETRY_MAX_S = 5.0
"""A slot etcd did not let a release free is tried again after these delays (doubling)."""
PULL_TRIES = 3
"""Waiting (node, queue)s a freed agent asks in turn when the best one has nothing left for it."""


def offer_json(offer: Offer) -> dict[str, Any]:
    """An offer as the agent's page shows it: the call, the notes and the screen pop."""
    call = offer.call
    return {
        "call_id": call.call_id,
        "owner_node": call.owner_node,
        "queue": call.queue,
        "caller": call.caller,
        "arrived_ms": call.arrived_ms,
        "notes": call.notes,
        "customer": dict(call.customer),
        "answered": offer.answered,
    }


@dataclass(slots=True)
class Offer:
    call: CallInfo
    slot_key: str
    epoch: int
    wrap_up_s: float
    answered: bool = False
    expiry: asyncio.TimerHandle | None = None
    unreachable: int = 0  # watchdog checks in a row the owner did not answer


class OfferError(SessionError):
    code = "offer_not_found"


class AgentDesk:
    """Reservations and offers of the agents whose sessions this node holds."""

    def __init__(
        self,
        etcd: Etcd,
        registry: Registry,
        sessions: Sessions,
        link: Link,
        queues: Callable[[], Mapping[str, QueueConfig]],
        events: EventHub | None = None,
        reservation_log: ReservationLog | None = None,
    ) -> None:
        self._etcd = etcd
        self._reservation_log = reservation_log  # chaos runs: every reserve and release
        self._registry = registry
        self._sessions = sessions
        self._link = link
        self._queues = queues
        self._events = events or EventHub()
        self.offers: dict[str, dict[str, Offer]] = {}  # agent id -> call id -> offer
        self._missed: dict[str, int] = {}
        # agent -> (call, owner node, epoch) of the call its wrap-up follows, for the disposition
        self._wrapping: dict[str, tuple[str, str, int]] = {}
        self._pulling: dict[str, str] = {}  # agent id -> the owner node it is held for
        self.draining = False  # set on SIGTERM: agents finish their calls and take no new ones
        # called with (agent id, call id) when an agent leaves a call (media unbridges here)
        self.on_release: list[Callable[[str, str], None]] = []
        self._tasks = Tasks(f"agent desk {registry.node_id}")

    @property
    def node_id(self) -> str:
        return self._registry.node_id

    # -- the owner's side of the exchange -------------------------------------------------------

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        try:
            record = self._sessions.held_record(agent_id)
        except SessionError as error:
            return Reservation(False, error.code)
        if self.draining:
            return Reservation(False, "draining")
        held_for = self._pulling.get(agent_id)
        if held_for is not None and held_for != call.owner_node:
            return Reservation(False, "held_for_older_call")
        if record.state not in (AgentState.AVAILABLE, AgentState.RESERVED, AgentState.TALKING):
            return Reservation(False, "not_available")
        if record.state is not AgentState.AVAILABLE and record.capacity == 1:
            return Reservation(False, "not_available")
        if record.active_calls >= record.capacity:
            return Reservation(False, "at_capacity")
        session_revision = self._sessions.session_revisions.get(agent_id)
        if session_revision is None:
            return Reservation(False, "not_here")
        guard = [(self._sessions.session_key(agent_id), session_revision)]
        value = json.dumps({"call": call.call_id, "owner": call.owner_node}).encode()
        for slot in range(record.capacity):
            key = self._sessions.slot_key(agent_id, slot)
            if await self._etcd.put_if(key, value, mod_revision=0, leased=True, guards=guard):
                break
        else:
            return Reservation(False, "at_capacity")
        if self._reservation_log is not None:
            await self._log_reserve(self._reservation_log, call, record, key, value)
        try:
            record = self._sessions.held_record(agent_id)  # fresh: it may have changed meanwhile
        except SessionError as error:
            # The session moved, or the lease became doubtful, while the slot was written: the
            # slot must not outlive this refusal under a lease that may well be renewed.
            if self._reservation_log is not None:
                self._reservation_log.append(
                    "release", agent_id, call.call_id, record.epoch, 0, slot=key, reason=error.code
                )
            await self._free_slot_soon(key, call.call_id)
            return Reservation(False, error.code)
        self._sessions.write(
            replace(
                record,
                state=AgentState.RESERVED if record.active_calls == 0 else record.state,
                reason="",
                active_calls=record.active_calls + 1,
                state_since_ms=wall_ms() if record.active_calls == 0 else record.state_since_ms,
            )
        )
        offer = Offer(call, key, record.epoch, wrap_up_s)
        loop = asyncio.get_running_loop()
        offer.expiry = loop.call_later(
            ring_timeout_s + EXPIRY_MARGIN_S, self._spawn_expiry, agent_id, call.call_id
        )
        self.offers.setdefault(agent_id, {})[call.call_id] = offer
        self._events.publish(agent_id, {"type": "offer", "offer": offer_json(offer)})
        log.info(
            "agent %s reserved for call %s (owner %s)", agent_id, call.call_id, call.owner_node
        )
        return Reservation(True, "", record.epoch)

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        offer = self.offers.get(agent_id, {}).pop(call_id, None)
        if offer is None:
            return  # already released (an expiry, a reject, a retry of the owner)
        for observer in self.on_release:
            observer(agent_id, call_id)
        if self._reservation_log is not None:
            self._reservation_log.append(
                "release",
                agent_id,
                call_id,
                offer.epoch,
                0,
                slot=offer.slot_key,
                reason=reason.value,
            )
        self._events.publish(
            agent_id, {"type": "released", "call_id": call_id, "reason": reason.value}
        )
        if offer.expiry is not None:
            offer.expiry.cancel()
        await self._settle(agent_id, call_id, offer, reason, wait=True)

    async def _settle_later(
        self, agent_id: str, call_id: str, offer: Offer, reason: ReleaseReason
    ) -> None:
        settled = await self._sessions.settled(agent_id)
        log.info(
            "agent %s: release of call %s goes on: %s",
            agent_id,
            call_id,
            "the lease was kept" if settled else "the session is no longer held here",
        )
        await self._settle(agent_id, call_id, offer, reason, wait=False)

    async def _settle(
        self, agent_id: str, call_id: str, offer: Offer, reason: ReleaseReason, *, wait: bool
    ) -> None:
        """What a release does to the slot and the agent's record, once the offer is gone."""
        if await self._held_for_release(agent_id, call_id, offer, reason, wait=wait) is None:
            return
        await self._free_slot_soon(offer.slot_key, call_id)  # only the session's holder writes
        # The record is read again after etcd freed the slot: another release (or a reservation)
        # of the agent may have written it meanwhile. Written from the record read before, two
        # releases at once left an agent of capacity 2 reserved with one call for good (likely
        # the chaos checker's seed-13 finding: site-b's agents have capacity 2).
        record = await self._held_for_release(agent_id, call_id, offer, reason, wait=wait)
        if record is None:
            return
        if offer.epoch != record.epoch:
            # An offer of an earlier session (the node lost its lease, the agent logged in here
            # again): the current session's record and calls are not this offer's to change.
            log.info("agent %s: offer of call %s outlived its session", agent_id, call_id)
            return
        active = max(0, record.active_calls - 1)
        if reason is ReleaseReason.ENDED:
            state, why = AgentState.WRAP_UP, ""
            self._wrapping[agent_id] = (call_id, offer.call.owner_node, offer.epoch)
            self._tasks.spawn(self._end_wrap_up(agent_id, offer.wrap_up_s), f"wrap-up {agent_id}")
        elif reason is ReleaseReason.MISSED:
            self._missed[agent_id] = self._missed.get(agent_id, 0) + 1
            limit = self._limit(offer.call.queue)
            if self._missed[agent_id] >= limit:
                state, why = AgentState.NOT_READY, "missed offers"
                self._missed[agent_id] = 0
            else:
                state, why = AgentState.AVAILABLE, ""
        else:
            state, why = AgentState.AVAILABLE, ""
        if active > 0:
            state, why = (
                (AgentState.TALKING, "") if self._talking(agent_id) else (AgentState.RESERVED, "")
            )
        self._sessions.write(
            replace(record, state=state, reason=why, active_calls=active, state_since_ms=wall_ms())
        )
        log.info(
            "agent %s released from call %s (%s) -> %s", agent_id, call_id, reason.value, state.name
        )
        if state is AgentState.AVAILABLE:
            self.freed(agent_id)

    async def _held_for_release(
        self, agent_id: str, call_id: str, offer: Offer, reason: ReleaseReason, *, wait: bool
    ) -> AgentRecord | None:
        """The agent's record when this node holds its session, so a release may write it; else
        None, once the release did what it still must."""
        try:
            return self._sessions.held_record(agent_id)
        except Fenced:
            # The lease's deadline passed, but the lease is not declared lost (a late keep-alive
            # answer may renew it): the session, its slot and the reserved record live on, so the
            # release waits for the verdict; dropped here, the agent stayed reserved for good. A
            # lost lease drops the session: its slots die with the lease, and a peer writes the
            # agent offline.
            if wait and agent_id in self._sessions.held:
                log.warning(
                    "agent %s: release of call %s waits: the lease's keep-alive is late",
                    agent_id,
                    call_id,
                )
                self._tasks.spawn(
                    self._settle_later(agent_id, call_id, offer, reason), f"release {call_id}"
                )
            return None
        except SessionError:
            # The session moved: the record is not ours to write, but the slot this node wrote
            # for this call would live on under its lease and block the agent's new session.
            await self._free_slot_soon(offer.slot_key, call_id)
            return None

    async def _log_reserve(
        self, log_: ReservationLog, call: CallInfo, record: AgentRecord, key: str, value: bytes
    ) -> None:
        """Log a reservation with its slot key's revision (0 when it cannot be read back)."""
        try:
            slot = await self._etcd.get(key)
        except Exception as error:  # the reservation stands; only its revision is unknown
            log.warning("call %s: slot %s not read back: %s", call.call_id, key, error)
            slot = None
        revision = slot.mod_revision if slot is not None and slot.value == value else 0
        log_.append(
            "reserve",
            record.agent_id,
            call.call_id,
            record.epoch,
            revision,
            slot=key,
            capacity=record.capacity,
            owner=call.owner_node,
        )

    async def _free_slot_soon(self, key: str, call_id: str) -> None:
        """Free the slot now, or, when etcd does not answer, keep trying in the background while
        the release goes on: the agent's record must not stay reserved because the site's etcd
        was down for a moment (found by the chaos checker, seed 13: an agent left reserved). Until
        the slot is freed the agent cannot be reserved in it, so I1 holds meanwhile; a slot whose
        lease is lost dies with it."""
        try:
            await self._free_slot(key, call_id)
        except Exception as error:
            log.warning("slot %s of call %s not freed yet (%s); retrying", key, call_id, error)
            self._tasks.spawn(self._retry_free_slot(key, call_id), f"free slot {key}")

    async def _retry_free_slot(self, key: str, call_id: str) -> None:
        delay = SLOT_RETRY_S
        while not self._sessions.lease_lost:  # a lost lease takes the slot with it
            await asyncio.sleep(delay)
            try:
                await self._free_slot(key, call_id)
                log.info("slot %s of call %s freed", key, call_id)
                return
            except Exception as error:
                log.warning("slot %s of call %s still not freed: %s", key, call_id, error)
                delay = min(delay * 2, SLOT_RETRY_MAX_S)

    async def _free_slot(self, key: str, call_id: str) -> None:
        """Delete the slot key if it still holds this call's reservation: after a lost lease and
        a new login the same slot may hold another call's reservation by now (found by the chaos
        checker: a stale release freed it, and the agent was reserved for two calls)."""
        slot = await self._etcd.get(key)
        if slot is None:
            return
        try:
            holder = json.loads(slot.value).get("call")
        except (ValueError, AttributeError):
            holder = None
        if holder == call_id:
            await self._etcd.delete_if(key, mod_revision=slot.mod_revision)

    def busy(self) -> int:
        """How many agents homed here have a call (offered or answered)."""
        return sum(1 for offers in self.offers.values() if offers)

    def _limit(self, queue: str) -> int:
        config = self._queues().get(queue)
        return config.missed_offers_to_not_ready if config is not None else 2

    def _talking(self, agent_id: str) -> bool:
        return any(o.answered for o in self.offers.get(agent_id, {}).values())

    # -- what the agent does ---------------------------------------------------------------------

    def offer_list(self, agent_id: str) -> list[Offer]:
        """The agent's offers and calls in its current session: an offer of an earlier session
        (its reservation died with a lost lease) is not the agent's to see or act on; its owner
        closes the call when it sees the new epoch, and the watchdog frees it here."""
        record = self._sessions.held_record(agent_id)
        return [o for o in self.offers.get(agent_id, {}).values() if o.epoch == record.epoch]

    async def act(
        self, agent_id: str, call_id: str, action: AgentAction, *, queue: str = "", notes: str = ""
    ) -> Verdict:
        """The agent answers, rejects, hangs up or escalates; the call's owner decides what
        follows (an escalation or a hang-up comes back as a release into wrap-up)."""
        record = self._sessions.held_record(agent_id)
        offer = self.offers.get(agent_id, {}).get(call_id)
        if offer is None or offer.epoch != record.epoch:
            raise OfferError(f"agent {agent_id} has no offer or call {call_id}")
        if action is AgentAction.ANSWER and offer.answered:
            return Verdict(True, "already answered")
        needs_answer = (
            AgentAction.HANGUP,
            AgentAction.ESCALATE,
            AgentAction.CONSULT,
            AgentAction.HANDOVER,
            AgentAction.DIGITS,
        )
        if action in needs_answer and not offer.answered:
            raise OfferError(f"call {call_id} is not answered yet: reject it instead")
        owner = self._link.owner(offer.call.owner_node)
        verdict = await owner.report(
            call_id, agent_id, action, offer.epoch, queue=queue, notes=notes
        )
        released = self.offers.get(agent_id, {}).get(call_id) is not offer
        if action is AgentAction.ANSWER and verdict.accepted and released:
            # The offer lapsed (or was released) while the owner answered: the agent's record no
            # longer counts this call, and no release would come for it to undo a talking state.
            # The owner closes the call when the registry shows the agent not on it.
            log.warning("agent %s: answer of call %s came after its release", agent_id, call_id)
        elif action is AgentAction.ANSWER and verdict.accepted:
            offer.answered = True
            if offer.expiry is not None:
                offer.expiry.cancel()
            record = self._sessions.held_record(agent_id)
            self._sessions.write(
                replace(record, state=AgentState.TALKING, state_since_ms=wall_ms())
            )
            log.info("agent %s answered call %s", agent_id, call_id)
        elif action is AgentAction.REJECT or (
            not verdict.accepted and action is AgentAction.ANSWER
        ):
            await self.release(call_id, agent_id, ReleaseReason.CANCELLED)
        return verdict

    async def finish_wrap_up(self, agent_id: str, disposition: str = "") -> Verdict:
        """End the agent's wrap-up; a disposition goes to the call's owner, onto the agent's leg
        of the call the wrap-up follows. The agent is available again either way; the verdict
        says whether the disposition was stored."""
        record = self._sessions.held_record(agent_id)
        if record.state is not AgentState.WRAP_UP:
            raise NotHeldHere(f"agent {agent_id} is not in wrap-up")
        self._sessions.write(replace(record, state=AgentState.AVAILABLE, state_since_ms=wall_ms()))
        self.freed(agent_id)
        last = self._wrapping.pop(agent_id, None)
        if not disposition:
            return Verdict(True)
        if last is None:
            return Verdict(False, "no ended call to give the disposition to")
        call_id, owner, epoch = last
        try:
            return await self._link.owner(owner).report(
                call_id, agent_id, AgentAction.DISPOSITION, epoch, notes=disposition
            )
        except ConnectionError as error:
            log.warning("agent %s: disposition of call %s not stored: %s", agent_id, call_id, error)
            return Verdict(False, f"the call's node {owner} is unreachable")

    async def _end_wrap_up(self, agent_id: str, wrap_up_s: float) -> None:
        await asyncio.sleep(wrap_up_s)
        await self._sessions.settled(agent_id)  # a doubtful lease: wait for the keep-alive
        try:
            record = self._sessions.held_record(agent_id)
        except SessionError:
            return
        if record.state is AgentState.WRAP_UP and record.active_calls == 0:
            await self.finish_wrap_up(agent_id)

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        """Whether this node still holds the agent on the call at `epoch`: its session is alive
        here at that epoch and the call's offer (answered, or being answered) is still here. The
        owner's watchdog asks it of every call in talk (node/homewatch.py)."""
        try:
            record = self._sessions.held_record(agent_id)
        except Fenced as error:  # the lease may yet be renewed: no answer either way
            raise ConnectionError(f"cannot tell: {error}") from None
        except SessionError:
            return Verdict(False, "no_session")
        if record.epoch != epoch:
            return Verdict(False, "epoch_changed")
        offer = self.offers.get(agent_id, {}).get(call_id)
        if offer is None or offer.epoch != epoch:
            return Verdict(False, "call_not_held")
        return Verdict(True)

    # -- the watchdog: calls whose owner died ------------------------------------------------

    async def watch_owners(self, every_s: float = WATCHDOG_S) -> None:
        """Free agents whose answered call its owner no longer holds, or whose owner stays
        unreachable, until cancelled (the owner closes the call as failed when it restarts)."""
        while True:
            await asyncio.sleep(every_s)
            for agent_id, offers in list(self.offers.items()):
                for call_id, offer in list(offers.items()):
                    if offer.answered:
                        await self._check(agent_id, call_id, offer)

    async def _check(self, agent_id: str, call_id: str, offer: Offer) -> None:
        owner = self._link.owner(offer.call.owner_node)
        verdict = await owner.report(call_id, agent_id, AgentAction.CHECK, offer.epoch)
        if verdict.accepted:
            offer.unreachable = 0
            return
        if verdict.reason == "call_gone" or verdict.reason == "":
            why = "its owner no longer holds it"
        else:
            offer.unreachable += 1
            if offer.unreachable < WATCHDOG_MISSES:
                return
            why = f"its owner {offer.call.owner_node} is unreachable ({verdict.reason})"
        log.warning("call %s: freeing agent %s: %s", call_id, agent_id, why)
        await self.release(call_id, agent_id, ReleaseReason.ENDED)

    # -- pulling the best waiting call -------------------------------------------------------------

    def freed(self, agent_id: str) -> None:
        """The agent is available again: ask the owner of the best waiting call for it."""
        self._tasks.spawn(self._pull(agent_id), f"pull {agent_id}")

    async def _pull(self, agent_id: str) -> None:
        """Pull from the best waiting (node, queue) in the registry; when its owner has nothing
        for the agent (the summary was stale: another agent took that call), from the next best,
        up to PULL_TRIES, so that the agent does not sit idle until an owner's next retry."""
        tried: set[tuple[str, str]] = set()
        while len(tried) < PULL_TRIES:
            try:
                record = self._sessions.held_record(agent_id)
            except SessionError:
                return
            if record.state is not AgentState.AVAILABLE:
                return  # reserved meanwhile (an owner's retry), or no longer free
            best = pick_queue(
                (q for q in self._registry.queues() if q.key not in tried),
                record,
                self._queues(),
                wall_ms(),
                agents=self._registry.agents(),
            )
            if best is None:
                return
            tried.add(best.key)
            # Held for the owner of the oldest call while it answers, so that a newer call's
            # owner retrying meanwhile does not take the agent first.
            self._pulling[agent_id] = best.node
            try:
                offered = await self._link.owner(best.node).pull(agent_id, self.node_id, best.queue)
            finally:
                self._pulling.pop(agent_id, None)
            log.info(
                "agent %s pulled from %s/%s: %s",
                agent_id,
                best.node,
                best.queue,
                "offered" if offered else "nothing",
            )
            if offered:
                return

    # -- tasks -------------------------------------------------------------------------------------

    def _spawn_expiry(self, agent_id: str, call_id: str) -> None:
        self._tasks.spawn(self._expire(agent_id, call_id), f"expire {call_id}")

    async def _expire(self, agent_id: str, call_id: str) -> None:
        offer = self.offers.get(agent_id, {}).get(call_id)
        if offer is not None and not offer.answered:
            log.warning("call %s: reservation of agent %s lapsed unconfirmed", call_id, agent_id)
            await self.release(call_id, agent_id, ReleaseReason.MISSED)

    async def close(self) -> None:
        for offers in self.offers.values():
            for offer in offers.values():
                if offer.expiry is not None:
                    offer.expiry.cancel()
        await self._tasks.close()
        if self._reservation_log is not None:
            self._reservation_log.close()
