"""The calls this node owns: their life (node/callstate.py), routing each waiting call to the best
agent in any site through the agent's home node, and the call records.

One offer per call at a time: a call is routed by at most one task, which asks the ranked
candidates' home nodes in turn until one reserves. A refusal or no answer within the deadline
moves on to the next candidate. Waiting calls are routed again every `retry_s` (escalation steps
open with time) and when an agent frees up anywhere, its home node pulls the best waiting call.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from node import metrics
from node.callstate import Call, CallEvent, CallState, Outcome, WrongState, transition
from node.cdr import CallRecords
from node.crm import Customer, Directory, Field, Scope, normalise_phone, visible
from node.exchange import AgentAction, CallInfo, Link, ReleaseReason, Verdict
from node.homewatch import HomeWatch, Party
from node.queues import QueueConfig
from node.reachability import Reachability
from node.routing import AgentIndex, eligible, rank_agents, reached_steps
from node.tasks import Tasks
from registry.clock import wall_ms
from registry.records import AgentRecord, AgentState, QueueSummary, Skills
from registry.registry import Registry

log = logging.getLogger(__name__)

CANDIDATES_PER_ROUND = 5
MISSED_AGENT_COOLDOWN_S = 30.0
CLAIM_S = 2.0


class UnknownCall(Exception):
    code = "call_not_found"


class UnknownQueue(Exception):
    code = "queue_not_found"


class Draining(Exception):
    code = "node_draining"


class UnknownEntry(Exception):
    code = "entry_not_found"


class Entries(Protocol):
    """The entry points' side (node/ivr.py): where a call that arrives at one goes first."""

    def known(self) -> Collection[str]: ...

    def arrived(self, call: Call) -> None:
        """Take the call (arriving) into the entry point's IVR. Must not block."""

    def digits(self, call_id: str, digits: str, *, agent_id: str = "") -> Call:
        """DTMF for the call's hook (here: from `agent_id`'s keypad). Must not block."""


class Switchboard:
    """Owner-side call handling. `on_change()` is called after registry writes (gossip)."""

    def __init__(
        self,
        registry: Registry,
        site: str,
        records: CallRecords,
        link: Link,
        queues: Callable[[], Mapping[str, QueueConfig]],
        on_change: Callable[[], None],
        customers: Directory | None = None,
        *,
        rpc_timeout_s: float = 1.0,
        retry_s: float = 0.5,
    ) -> None:
        self._registry = registry
        self._site = site
        self._records = records
        self._link = link
        self._queues = queues
        self._on_change = on_change
        self._customers = customers
        self._customer: dict[str, Customer | None] = {}  # live call -> its customer record
        self._rpc_timeout_s = rpc_timeout_s
        self._retry_s = retry_s
        self.calls: dict[str, Call] = {}  # live calls; ended ones live in the records
        self._routing: set[str] = set()  # calls with a routing task under way
        self._tried: dict[str, dict[str, float]] = {}  # call -> agent -> monotonic time missed
        self._ring: dict[str, asyncio.TimerHandle] = {}
        self._tasks = Tasks(f"switchboard {registry.node_id}")
        self._ids = itertools.count(1)
        self._published: set[str] = set()
        self._index = AgentIndex()  # the registry's agents by skill, kept up to date on use
        # agents this node is asking or has offered a call, until gossip shows them busy: other
        # calls here skip them instead of all asking the same best agent at once
        self._claimed: dict[str, float] = {}
        self.draining = False  # set on SIGTERM: calls in progress go on, no new ones come in
        # called after every transition, once it is recorded: (the call before, its event, the
        # call after); media and hook scripts follow the call's life here. Must not block.
        self.observers: list[Callable[[Call, CallEvent, Call], None]] = []
        # called with (the call before, after) when who is on a call in talk changes without a
        # transition: a consulted agent answers or leaves, or takes the call over (hand-over).
        # Media follows who talks with whom here. Must not block.
        self.party_observers: list[Callable[[Call, Call], None]] = []
        self.entries: Entries | None = None  # calls arriving at an entry point go there first
        # home nodes whose offers failed lately: their agents are skipped for a backoff
        self.reachability = Reachability()
        # the owner's watchdog: asks each agent's home whether it still holds the agent
        self.homes = HomeWatch(self.calls, registry.node_id, link, self._lost, rpc_timeout_s)

    @property
    def node_id(self) -> str:
        return self._registry.node_id

    # -- callers -----------------------------------------------------------------------------------

    async def arrive(self, queue: str, caller: str, *, entry: str = "") -> Call:
        """Accept a call: look up the caller's customer record for the screen pop, record the
        call, and route it (or, at an entry point, hand it to its IVR, which queues it)."""
        if self.draining:
            raise Draining(f"node {self.node_id} is shutting down; place the call at another node")
        if entry:
            known = self.entries.known() if self.entries is not None else ()
            if entry not in known:
                raise UnknownEntry(
                    f"no entry point {entry!r}; entry points: {', '.join(sorted(known))}"
                )
        elif queue not in self._queues():
            known = ", ".join(sorted(self._queues()))
            raise UnknownQueue(f"no queue {queue!r}; queues: {known}")
        customer = None
        if self._customers is not None:
            try:
                customer = await self._customers.lookup(caller)
            except Exception:  # a broken directory costs the screen pop, never the call
                log.exception("customer look-up for %s failed; routing without it", caller)
        call_id = f"{self.node_id}-{wall_ms():x}-{next(self._ids)}"
        now = wall_ms()
        call = Call(
            call_id,
            self.node_id,
            "" if entry else queue,
            caller,
            now,
            state=CallState.ARRIVING if entry else CallState.WAITING,
            queued_ms=0 if entry else now,
            customer_id=customer.customer_id if customer is not None else "",
            entry=entry,
        )
        self._records.save(call)  # accepted only once recorded
        self.calls[call_id] = call
        self._customer[call_id] = customer
        if entry and self.entries is not None:
            log.info("call %s arrived at entry point %s from %s", call_id, entry, caller)
            self.entries.arrived(call)
            return call
        log.info("call %s arrived in queue %s from %s", call_id, queue, caller)
        self._publish(queue)
        self._route_soon(call_id)
        return call

    def get(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise UnknownCall(f"no live call {call_id} on node {self.node_id}")
        return call

    def position(self, call: Call) -> int:
        """1 for the oldest waiting call of its queue on this node; 0 when not waiting."""
        if call.state is not CallState.WAITING:
            return 0
        return 1 + sum(
            1
            for other in self.calls.values()
            if other.queue == call.queue
            and other.state is CallState.WAITING
            and (other.queued_ms, other.call_id) < (call.queued_ms, call.call_id)
        )

    async def hangup_caller(self, call_id: str) -> Call:
        call = self.get(call_id)
        agent, node, answered = call.agent_id, call.agent_node, call.state is CallState.TALKING
        ended = self._apply(call, CallEvent.CALLER_HANGUP, reason="caller hung up")
        if agent:
            reason = ReleaseReason.ENDED if answered else ReleaseReason.CANCELLED
            await self._release(node, call_id, agent, reason)
        return ended

    # -- the entry point's IVR steering a call (node/ivr.py) -----------------------------------

    def begin_menu(self, call_id: str) -> Call:
        """The entry point's hook holds the caller with prompts or digits (arriving -> ivr)."""
        call = self.get(call_id)
        return call if call.state is CallState.IVR else self._apply(call, CallEvent.MENU)

    def enqueue(self, call_id: str, queue: str, *, transfer: bool = False) -> Call:
        """Put the call in `queue`: a call at its entry point starts waiting, a waiting call
        moves; with `transfer`, a call in talk is handed to the queue (its agent released, as
        in a cold escalation). WrongState for any other call."""
        call = self.get(call_id)
        if queue not in self._queues():
            raise UnknownQueue(f"no queue {queue!r}; queues: {', '.join(sorted(self._queues()))}")
        now = wall_ms()
        if call.state in (CallState.ARRIVING, CallState.IVR):
            changed = self._apply(
                call, CallEvent.QUEUE, queue=queue, queued_ms=now, ivr_ms=now - call.arrived_ms
            )
        elif call.state is CallState.WAITING:
            changed = self._apply(call, CallEvent.REQUEUE, queue=queue, queued_ms=now)
        elif transfer and call.state is CallState.TALKING:
            verdict = self._escalate(call, queue, "transferred by the entry point's hook")
            if not verdict.accepted:
                raise WrongState(verdict.reason)
            return self.get(call_id)
        else:
            raise WrongState(f"a {call.state.value} call cannot be put in a queue")
        self._route_soon(call_id)
        return changed

    def end_by_hook(self, call_id: str, *, voicemail: bool, reason: str) -> Call:
        """End a call at its entry point or waiting: to voicemail, or hung up (completed)."""
        call = self.get(call_id)
        event = CallEvent.VOICEMAIL if voicemail else CallEvent.HOOK_HANGUP
        fields: dict[str, Any] = {}
        if call.state in (CallState.ARRIVING, CallState.IVR):
            fields["ivr_ms"] = wall_ms() - call.arrived_ms
        return self._apply(call, event, reason=reason, **fields)

    def set_routing(
        self, call_id: str, *, skills: Skills | None = None, priority: int | None = None
    ) -> Call:
        """Required skills (over its queue's) and priority for this call only."""
        call = self.get(call_id)
        changed = replace(
            call,
            skills=call.skills if skills is None else skills,
            priority=call.priority if priority is None else priority,
        )
        self.calls[call_id] = changed
        self._records.save(changed)
        if changed.state is CallState.WAITING:
            self._publish(changed.queue)
        return changed

    def add_customer_fields(self, call_id: str, fields: Sequence[tuple[str, str]]) -> None:
        """Screen-pop fields found by a hook, shown to in-house agents only (a hook's data has
        no scope of its own, so it is cut as the most private). InvalidCustomer when too many."""
        call = self.get(call_id)
        names = {name for name, _ in fields}
        extra = tuple(Field(name, value, Scope.INHOUSE) for name, value in fields)
        base = self._customer.get(call_id)
        if base is None:
            phone = normalise_phone(call.caller) or "0"
            self._customer[call_id] = Customer(call.customer_id or "unknown", phone, extra, ())
        else:
            kept = tuple(item for item in base.fields if item.name not in names)
            self._customer[call_id] = replace(base, fields=kept + extra)

    def config_of(self, call: Call) -> QueueConfig | None:
        """The call's queue, with the skills and priority a hook set for this call over it."""
        config = self._queues().get(call.queue)
        if config is None or (call.skills is None and call.priority is None):
            return config
        return _overridden(config, call.skills, call.priority)

    # -- the agent's home node reporting ---------------------------------------------------------

    async def report(
        self,
        call_id: str,
        agent_id: str,
        action: AgentAction,
        epoch: int,
        *,
        queue: str = "",
        notes: str = "",
    ) -> Verdict:
        if action is AgentAction.DISPOSITION:  # in wrap-up: the call has usually ended
            if not self._records.set_disposition(call_id, agent_id, notes):
                return Verdict(False, f"agent {agent_id} answered no call {call_id} here")
            return Verdict(True)
        call = self.calls.get(call_id)
        if call is not None and call.consult_agent == agent_id and call.consult_epoch == epoch:
            return self._consulted(call, action)
        if call is None or call.agent_id != agent_id or call.epoch != epoch:
            return Verdict(False, "call_gone")
        if action is AgentAction.CHECK:
            return Verdict(call.state in (CallState.OFFERED, CallState.TALKING))
        if action is AgentAction.ESCALATE:
            return self._escalate(call, queue, notes)
        if action is AgentAction.CONSULT:
            return await self._consult(call, queue, notes)
        if action is AgentAction.HANDOVER:
            return self._handover(call)
        if action is AgentAction.DIGITS:
            if self.entries is None or call.state is not CallState.TALKING:
                return Verdict(False, "digits go to a call in talk")
            try:
                self.entries.digits(call_id, notes, agent_id=agent_id)
            except ValueError as error:  # BadDigits
                return Verdict(False, str(error))
            return Verdict(True)
        try:
            if action is AgentAction.ANSWER:
                self._apply(call, CallEvent.ANSWER)
                self._records.update_leg(call_id, agent_id, answered_ms=wall_ms())
            elif action is AgentAction.REJECT:
                self._miss(call, "rejected")
            else:
                self._apply(call, CallEvent.AGENT_HANGUP, reason="agent hung up")
                self._tasks.spawn(
                    self._release(call.agent_node, call_id, agent_id, ReleaseReason.ENDED),
                    f"release {call_id}",
                )
        except WrongState as error:
            return Verdict(False, str(error))
        return Verdict(True)

    async def _consult(self, call: Call, queue: str, notes: str) -> Verdict:
        """Warm escalation: reserve an agent of `queue` for a consultation while the call's agent
        stays on; the consulted agent gets the notes and the record cut to its trust."""
        config = self._queues().get(queue)
        if call.state is not CallState.TALKING or call.consult_agent:
            return Verdict(False, "only a call in talk with no consultation can start one")
        if config is None:
            return Verdict(False, f"no queue {queue!r} to consult")
        self._index.refresh(self._registry)
        ranked = rank_agents(
            self._index, config, 0.0, self._site, exclude=frozenset({call.agent_id})
        )
        line = f"{call.agent_id}: {notes.strip() or '(no notes)'}"
        all_notes = f"{call.notes}\n{line}" if call.notes else line
        customer = self._customer.get(call.call_id)
        for agent in ranked[:CANDIDATES_PER_ROUND]:
            info = CallInfo(
                call.call_id,
                self.node_id,
                queue,
                call.caller,
                call.arrived_ms,
                all_notes,
                visible(customer, agent.trust) if customer is not None else {},
            )
            try:
                answer = await asyncio.wait_for(
                    self._link.desk(agent.home_node).reserve(
                        info, agent.agent_id, config.ring_timeout_s, config.wrap_up_s
                    ),
                    self._rpc_timeout_s,
                )
            except (TimeoutError, ConnectionError):
                continue
            if not answer.reserved:
                continue
            current = self.calls.get(call.call_id)
            if current is None or current.state is not CallState.TALKING:
                await self._release(
                    agent.home_node, call.call_id, agent.agent_id, ReleaseReason.CANCELLED
                )
                return Verdict(False, "call_gone")
            now = wall_ms()
            consulting = replace(
                current,
                notes=all_notes,
                consult_agent=agent.agent_id,
                consult_node=agent.home_node,
                consult_epoch=answer.epoch,
                consult_answered=False,
            )
            self.calls[call.call_id] = consulting
            self._records.save(consulting)
            self._records.open_leg(consulting, agent.agent_id, agent.home_node, now, kind="consult")
            log.info(
                "call %s: %s consults %s (%s)", call.call_id, call.agent_id, agent.agent_id, queue
            )
            asyncio.get_running_loop().call_later(
                config.ring_timeout_s, self._consult_timeout, call.call_id, agent.agent_id
            )
            return Verdict(True, agent.agent_id)
        return Verdict(False, f"no agent of {queue} is free to consult")

    def _consult_timeout(self, call_id: str, agent_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.consult_agent == agent_id and not call.consult_answered:
            node = call.consult_node
            cleared = replace(call, consult_agent="", consult_node="", consult_epoch=0)
            self.calls[call_id] = cleared
            self._records.save(cleared)
            self._records.update_leg(
                call_id, agent_id, ended_ms=wall_ms(), result="consult not answered"
            )
            self._tasks.spawn(
                self._release(node, call_id, agent_id, ReleaseReason.MISSED),
                f"release consult {call_id}",
            )

    def _consulted(self, call: Call, action: AgentAction) -> Verdict:
        """What the consulted agent does: answer joins the consultation; reject or hang up ends
        it (the call stays with its agent)."""
        if action is AgentAction.CHECK:
            return Verdict(True)
        agent, node = call.consult_agent, call.consult_node
        if action is AgentAction.ANSWER:
            answered = replace(call, consult_answered=True)
            self.calls[call.call_id] = answered
            self._records.save(answered)
            self._records.update_leg(call.call_id, agent, answered_ms=wall_ms())
            self._parties_changed(call, answered)
            return Verdict(True)
        if action not in (AgentAction.REJECT, AgentAction.HANGUP):
            return Verdict(False, "the consulted agent may answer, reject or hang up")
        result = "consult rejected" if action is AgentAction.REJECT else "consult ended"
        self._end_consult(call, result)
        if action is AgentAction.HANGUP:
            self._tasks.spawn(
                self._release(node, call.call_id, agent, ReleaseReason.ENDED),
                f"release {call.call_id}",
            )
        return Verdict(True)

    def _end_consult(self, call: Call, result: str) -> Call:
        """The consulted agent leaves the call (its leg ends with `result`); the call stays with
        its agent."""
        ended = replace(
            call, consult_agent="", consult_node="", consult_epoch=0, consult_answered=False
        )
        self.calls[call.call_id] = ended
        self._records.save(ended)
        self._records.update_leg(
            call.call_id, call.consult_agent, ended_ms=wall_ms(), result=result
        )
        if call.consult_answered:
            self._parties_changed(call, ended)
        return ended

    def _handover(self, call: Call) -> Verdict:
        """The call's agent leaves the call to the consulted agent, who has answered."""
        if not call.consult_agent or not call.consult_answered:
            return Verdict(False, "hand over only to a consulted agent who has answered")
        leaving, node, now = call.agent_id, call.agent_node, wall_ms()
        self._records.update_leg(call.call_id, leaving, ended_ms=now, result="handed over")
        # the consultation (billed as such) ends here; the call goes on as the new agent's leg
        self._records.update_leg(
            call.call_id, call.consult_agent, ended_ms=now, result="took the call"
        )
        taken = replace(
            call,
            agent_id=call.consult_agent,
            agent_node=call.consult_node,
            epoch=call.consult_epoch,
            consult_agent="",
            consult_node="",
            consult_epoch=0,
            consult_answered=False,
            escalations=call.escalations + 1,
        )
        self.calls[call.call_id] = taken
        self._records.save(taken)
        self._records.open_leg(taken, offered_ms=now, answered_ms=now)
        self._tasks.spawn(
            self._release(node, call.call_id, leaving, ReleaseReason.ENDED),
            f"release {call.call_id}",
        )
        log.info("call %s handed over from %s to %s", call.call_id, leaving, taken.agent_id)
        self._parties_changed(call, taken)
        return Verdict(True)

    def _parties_changed(self, before: Call, after: Call) -> None:
        for observer in self.party_observers:
            try:
                observer(before, after)
            except Exception:  # an observer's fault never stops the call
                log.exception("call %s: party observer %r failed", after.call_id, observer)

    def _escalate(self, call: Call, queue: str, notes: str) -> Verdict:
        """A cold transfer: the call waits again in `queue` (the owner keeps it) with the notes;
        the agent who escalated is released into wrap-up and is not offered it again."""
        if call.state is not CallState.TALKING:
            return Verdict(
                False, f"only a call in talk can be escalated, not a {call.state.value} one"
            )
        if queue not in self._queues():
            return Verdict(False, f"no queue {queue!r} to escalate to")
        agent, node = call.agent_id, call.agent_node
        self._records.update_leg(call.call_id, agent, ended_ms=wall_ms(), result="escalated")
        self._tried.setdefault(call.call_id, {})[agent] = time.monotonic()
        line = f"{agent}: {notes.strip()}" if notes.strip() else f"{agent}: (no notes)"
        self._apply(
            call,
            CallEvent.TRANSFER,
            queue=queue,
            agent_id="",
            agent_node="",
            epoch=0,
            notes=f"{call.notes}\n{line}" if call.notes else line,
            escalations=call.escalations + 1,
            queued_ms=wall_ms(),
        )
        log.info("call %s escalated by %s to queue %s", call.call_id, agent, queue)
        self._tasks.spawn(
            self._release(node, call.call_id, agent, ReleaseReason.ENDED), f"release {call.call_id}"
        )
        self._route_soon(call.call_id)
        return Verdict(True)

    def _overflow(self, call: Call, queue: QueueConfig) -> None:
        """The call waited past the queue's maximum: on to the overflow queue, to voicemail, or
        hung up, as the queue says."""
        why = f"waited over {queue.max_wait_s:g} s in {queue.name}"
        target = queue.overflow_queue
        if target is not None and target in self._queues():
            self._apply(call, CallEvent.REQUEUE, queue=target, queued_ms=wall_ms())
            log.info("call %s overflowed from %s to %s", call.call_id, queue.name, target)
            self._route_soon(call.call_id)
        elif queue.overflow == "voicemail":
            self._apply(call, CallEvent.VOICEMAIL, reason=why)  # recording comes with media
        else:
            self._apply(call, CallEvent.OVERFLOW, reason=why)

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
        """A free agent's home node asks for this node's oldest waiting call of `queue` that the
        agent may take. The home node vouches that the agent is free (gossip may not have told
        this node yet); its desk checks again when it reserves."""
        record = self._registry.agent(agent_id)
        config = self._queues().get(queue)
        if record is None or config is None:
            return False
        free = replace(record, state=AgentState.AVAILABLE, reason="", active_calls=0)
        waiting = sorted(
            (c for c in self.calls.values() if c.queue == queue and c.state is CallState.WAITING),
            key=lambda c: (-_priority(c, config), c.queued_ms, c.call_id),
        )
        self._index.refresh(self._registry)
        for call in waiting:
            waited_s = (wall_ms() - call.queued_ms) / 1000
            own = self.config_of(call) or config
            steps = reached_steps(own, waited_s, self._index)
            if not eligible(free, own, steps):
                continue
            for _ in range(100):  # a retry round routing this call: let it finish first
                if call.call_id not in self._routing:
                    break
                await asyncio.sleep(0.01)
            if await self._route(call.call_id, candidates=[free]):
                return True
        return False

    # -- routing -----------------------------------------------------------------------------------

    def _route_soon(self, call_id: str) -> None:
        if call_id not in self._routing:
            self._tasks.spawn(self._route(call_id), f"route {call_id}")

    async def _route(self, call_id: str, candidates: list[AgentRecord] | None = None) -> bool:
        """Offer the call to the best candidate that reserves (the ranked agents, or the given
        `candidates`); whether one did."""
        if call_id in self._routing:
            return False
        self._routing.add(call_id)
        try:
            return await self._route_once(call_id, candidates)
        finally:
            self._routing.discard(call_id)

    async def _route_once(self, call_id: str, candidates: list[AgentRecord] | None) -> bool:
        call = self.calls.get(call_id)
        if call is None or call.state is not CallState.WAITING:
            return False
        queue = self.config_of(call)
        if queue is None:
            return False
        waited_s = (wall_ms() - call.queued_ms) / 1000
        if waited_s > queue.max_wait_s:
            self._overflow(call, queue)
            return False
        now = time.monotonic()
        tried = self._tried.get(call_id, {})
        exclude = frozenset(a for a, t in tried.items() if now - t < MISSED_AGENT_COOLDOWN_S)
        exclude |= self._still_claimed(now)
        ranked = candidates
        if ranked is None:
            started = time.perf_counter()
            self._index.refresh(self._registry)
            ranked = rank_agents(self._index, queue, waited_s, self._site, exclude=exclude)
            metrics.ROUTING_DECISION.labels(self._site).observe(time.perf_counter() - started)
        customer = self._customer.get(call_id)
        offers = 0
        for agent in ranked:
            if offers >= CANDIDATES_PER_ROUND:
                break
            info = CallInfo(
                call.call_id,
                self.node_id,
                call.queue,
                call.caller,
                call.arrived_ms,
                call.notes,
                # the record leaves this node cut to the agent's site trust (I5)
                visible(customer, agent.trust) if customer is not None else {},
            )
            if candidates is None and agent.agent_id in self._claimed:
                continue  # claimed by another call of this node since the ranking
            if candidates is None and not self.reachability.usable(agent.home_node):
                continue  # its home did not answer lately (a pull comes from a live home)
            offers += 1
            self._claimed[agent.agent_id] = now
            desk = self._link.desk(agent.home_node)
            asked = time.perf_counter()
            try:
                answer = await asyncio.wait_for(
                    desk.reserve(info, agent.agent_id, queue.ring_timeout_s, queue.wrap_up_s),
                    self._rpc_timeout_s,
                )
            except (TimeoutError, ConnectionError) as error:
                self._count_offer(
                    agent, "timeout" if isinstance(error, TimeoutError) else "failed", asked
                )
                log.warning(
                    "call %s: %s at %s did not answer (%s); skipping %s's agents for %.1f s",
                    call_id,
                    agent.agent_id,
                    agent.home_node,
                    error or "timeout",
                    agent.home_node,
                    self.reachability.failed(agent.home_node),
                )
                continue
            self.reachability.answered(agent.home_node)
            self._count_offer(agent, "accepted" if answer.reserved else "refused", asked)
            if not answer.reserved:
                self._claimed.pop(agent.agent_id, None)
                log.info("call %s: %s refused (%s)", call_id, agent.agent_id, answer.reason)
                continue
            current = self.calls.get(call_id)
            if current is None or current.state is not CallState.WAITING:
                # the caller hung up while we asked: free the agent at once
                await self._release(
                    agent.home_node, call_id, agent.agent_id, ReleaseReason.CANCELLED
                )
                return False
            offered = self._apply(
                current,
                CallEvent.OFFER,
                agent_id=agent.agent_id,
                agent_node=agent.home_node,
                epoch=answer.epoch,
            )
            self._records.open_leg(offered)
            loop = asyncio.get_running_loop()
            self._ring[call_id] = loop.call_later(
                queue.ring_timeout_s, self._ring_timeout, call_id, agent.agent_id
            )
            return True
        return False

    def _still_claimed(self, now: float) -> frozenset[str]:
        """Claims younger than CLAIM_S (by then gossip shows the agents' real state)."""
        for agent_id in [a for a, t in self._claimed.items() if now - t > CLAIM_S]:
            del self._claimed[agent_id]
        return frozenset(self._claimed)

    def _count_offer(self, agent: AgentRecord, result: str, asked: float) -> None:
        metrics.OFFERS.labels(self._site, str(agent.tier), result).inc()
        metrics.RESERVATION.labels(self._site, result).observe(time.perf_counter() - asked)

    def _ring_timeout(self, call_id: str, agent_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state is CallState.OFFERED and call.agent_id == agent_id:
            node = call.agent_node
            self._miss(call, "ring timeout")
            self._tasks.spawn(
                self._release(node, call_id, agent_id, ReleaseReason.MISSED), f"release {call_id}"
            )

    def _miss(self, call: Call, why: str) -> None:
        self._tried.setdefault(call.call_id, {})[call.agent_id] = time.monotonic()
        self._records.update_leg(call.call_id, call.agent_id, ended_ms=wall_ms(), result=why)
        self._apply(
            call, CallEvent.MISS, agent_id="", agent_node="", epoch=0, missed=call.missed + 1
        )
        self._route_soon(call.call_id)

    async def _release(self, node: str, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        try:
            await asyncio.wait_for(
                self._link.desk(node).release(call_id, agent_id, reason), self._rpc_timeout_s
            )
        except (TimeoutError, ConnectionError) as error:
            # the agent's reservation lapses by itself at its home node
            log.warning(
                "call %s: release of %s at %s failed (%s)",
                call_id,
                agent_id,
                node,
                error or "timeout",
            )

    # -- state, records, summaries -------------------------------------------------------------

    def _apply(self, call: Call, event: CallEvent, reason: str = "", **fields: Any) -> Call:
        state, outcome = transition(call.state, event)
        now = wall_ms()
        changed = replace(call, state=state, **fields)
        if event is CallEvent.OFFER:
            changed = replace(changed, offered_ms=now)
        elif event is CallEvent.ANSWER:
            changed = replace(changed, answered_ms=now)
        if outcome is not None:
            changed = replace(changed, outcome=outcome, ended_ms=now, reason=reason)
            timer = self._ring.pop(call.call_id, None)
            if timer is not None:
                timer.cancel()
        self._records.save(changed)  # recorded before anyone is told
        if call.agent_id and outcome is not None:
            self._records.update_leg(
                call.call_id, call.agent_id, ended_ms=now, result=outcome.value
            )
        if call.agent_id and (outcome is not None or event is CallEvent.MISS):
            self._claimed.pop(call.agent_id, None)
        if outcome is not None and call.consult_agent:
            # the call ended during a consultation: the consulted agent goes too
            self._records.update_leg(
                call.call_id, call.consult_agent, ended_ms=now, result=outcome.value
            )
            self._tasks.spawn(
                self._release(
                    call.consult_node,
                    call.call_id,
                    call.consult_agent,
                    ReleaseReason.ENDED if call.consult_answered else ReleaseReason.CANCELLED,
                ),
                f"release consult {call.call_id}",
            )
        if outcome is not None:
            self._count_end(changed, outcome)
        if state is CallState.ENDED:
            self.calls.pop(call.call_id, None)
            self._tried.pop(call.call_id, None)
            self._customer.pop(call.call_id, None)
        else:
            self.calls[call.call_id] = changed
        log.info(
            "call %s %s -> %s%s",
            call.call_id,
            call.state.value,
            state.value,
            f" ({outcome.value})" if outcome else "",
        )
        if state is CallState.WAITING or call.state is CallState.WAITING:
            self._publish(call.queue)
            if changed.queue != call.queue:
                self._publish(changed.queue)
        for observer in self.observers:
            try:
                observer(call, event, changed)
            except Exception:  # an observer's fault never stops the call
                log.exception("call %s: observer %r failed on %s", call.call_id, observer, event)
        return changed

    def _count_end(self, call: Call, outcome: Outcome) -> None:
        site, queue = self._site, call.queue
        metrics.CALLS.labels(site, queue, outcome.value).inc()
        answered = call.answered_ms > 0
        end_of_wait = call.answered_ms if answered else call.ended_ms
        waited_s = max(0, end_of_wait - call.arrived_ms) / 1000
        result = "answered" if answered else outcome.value
        metrics.CALL_WAIT.labels(site, queue, result).observe(waited_s)
        if answered:
            metrics.CALL_TALK.labels(site, queue).observe((call.ended_ms - call.answered_ms) / 1000)
        config = self._queues().get(queue)
        if config is not None and (answered or outcome is Outcome.ABANDONED):
            met = answered and waited_s <= config.service_level_s
            if answered or waited_s > config.service_level_s:  # quick abandons do not count
                metrics.SERVICE_LEVEL_CALLS.labels(site, queue, str(met).lower()).inc()

    def _publish(self, queue: str) -> None:
        """Write this node's summary of `queue` for the other nodes (what waits, how old)."""
        config = self._queues().get(queue)
        waiting = [
            c for c in self.calls.values() if c.queue == queue and c.state is CallState.WAITING
        ]
        if not waiting and queue not in self._published:
            return
        self._published.add(queue)
        self._registry.write_queue(
            QueueSummary(
                node=self.node_id,
                queue=queue,
                waiting=len(waiting),
                oldest_since_ms=min((c.queued_ms for c in waiting), default=0),
                top_priority=max(
                    (_priority(c, config) for c in waiting),
                    default=config.priority if config is not None else 0,
                ),
                required_skills=config.skills if config is not None else (),
            )
        )
        self._on_change()

    # -- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Route every waiting call again every `retry_s`, until cancelled."""
        while True:
            await asyncio.sleep(self._retry_s)
            for call in list(self.calls.values()):
                if call.state is CallState.WAITING:
                    self._route_soon(call.call_id)
                elif call.state is CallState.TALKING:
                    self._fail_if_agent_gone(call)

    def _fail_if_agent_gone(self, call: Call) -> None:
        """Close a talking call as failed once the registry shows its agent is no longer on it,
        so that it does not stay bridged to an agent who takes other calls (found by the chaos
        checker: one agent talking on two calls at once):
        - the agent's session ended: a higher epoch (a login elsewhere, or its home node died and
          a peer wrote the agent offline);
        - the agent's home released it since the answer (its watchdog gave up on this owner
          while cut off or paused): same epoch, no call, not reserved or talking, since after
          the answer. With capacity > 1 the agent may be on another call: not detected here."""
        agent = self._registry.agent(call.agent_id)
        if agent is None:
            return
        if agent.epoch > call.epoch:
            why = f"the agent's session ended (epoch {call.epoch} -> {agent.epoch})"
        elif (
            agent.epoch == call.epoch
            and agent.active_calls == 0
            and agent.state not in (AgentState.RESERVED, AgentState.TALKING)
            and agent.state_since_ms > call.answered_ms > 0
        ):
            why = f"the agent's home released the agent ({agent.state.name.lower()})"
        else:
            return
        log.warning(
            "call %s: agent %s is gone: %s; closing as failed", call.call_id, call.agent_id, why
        )
        self._apply(call, CallEvent.FAIL, reason=why)

    # -- the owner's watchdog: calls whose agent's home died or was cut off ---------------------

    def _lost(self, call: Call, party: Party, why: str) -> None:
        """The agent's home no longer holds the agent on the call: a consulted agent leaves the
        consultation (the call goes on with its agent); the call's own agent ends the call as
        failed. The agent is released all the same, in case its home still has the offer (of an
        earlier session, or once it answers again)."""
        release = ReleaseReason.ENDED
        if party.consulted:
            release = ReleaseReason.ENDED if call.consult_answered else ReleaseReason.CANCELLED
            log.warning(
                "call %s: consulted agent %s is gone: %s; the consultation ends",
                call.call_id,
                party.agent_id,
                why,
            )
            self._end_consult(call, f"consult failed: {why}")
        else:
            log.warning(
                "call %s: agent %s is gone: %s; closing as failed",
                call.call_id,
                party.agent_id,
                why,
            )
            self._apply(call, CallEvent.FAIL, reason=why)
        self._tasks.spawn(
            self._release(party.node, call.call_id, party.agent_id, release),
            f"release {call.call_id}",
        )

    async def close(self) -> None:
        for timer in self._ring.values():
            timer.cancel()
        await self._tasks.close()


def _priority(call: Call, config: QueueConfig | None) -> int:
    """The call's own priority when a hook set one, else its queue's."""
    if call.priority is not None:
        return call.priority
    return config.priority if config is not None else 0


@functools.lru_cache(maxsize=256)
def _overridden(config: QueueConfig, skills: Skills | None, priority: int | None) -> QueueConfig:
    return replace(
        config,
        skills=config.skills if skills is None else skills,
        priority=config.priority if priority is None else priority,
    )
