"""The values the call exchange moves between a call's owner node and an agent's home node, and
the narrow interfaces each side needs of the other (node/calls_rpc.py carries them over gRPC, or
directly when both are this node)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

WATCHDOG_S = 2.0
"""How often each side of a cross-node call in talk asks the other whether it still holds it: the
home asks the owner (Report CHECK), the owner asks the home (Holds)."""
WATCHDOG_MISSES = 3
"""A side unreachable this many checks in a row is taken as gone: the home frees the agent, the
owner closes the call as failed, so both give up together."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the agent's screen shows before answering."""

    call_id: str
    owner_node: str
    queue: str
    caller: str
    arrived_ms: int
    notes: str = ""
    customer: Mapping[str, str] = field(default_factory=dict)  # cut to the agent's site trust


@dataclass(frozen=True, slots=True)
class Reservation:
    reserved: bool
    reason: str = ""  # why not: not_here, fenced, not_available, at_capacity, unreachable
    epoch: int = 0


class ReleaseReason(enum.Enum):
    CANCELLED = "cancelled"  # the caller hung up, or the call went elsewhere, before answer
    MISSED = "missed"  # ring timeout
    ENDED = "ended"  # the call ended after the agent answered: wrap-up follows


class AgentAction(enum.Enum):
    ANSWER = "answer"
    REJECT = "reject"
    HANGUP = "hangup"
    CHECK = "check"  # the home node's watchdog: is the call still live with this agent?
    ESCALATE = "escalate"  # hand the call to another queue, with notes (a cold transfer)
    CONSULT = "consult"  # warm: ask an agent of another queue to join, with notes
    HANDOVER = "handover"  # warm: leave the call to the consulted agent
    DIGITS = "digits"  # the agent's keypad: DTMF (in `notes`) for the call's hook
    DISPOSITION = "disposition"  # in wrap-up: how the call went (in `notes`), for its leg


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    reason: str = ""  # e.g. call_gone when the caller hung up meanwhile


class Desk(Protocol):
    """An agent's home node, as a call's owner sees it."""

    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation: ...

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None: ...

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        """Whether the home still holds the agent on the call at session `epoch` (accepted),
        or why not: no_session, epoch_changed, call_not_held. ConnectionError when the home
        cannot be reached or cannot tell now (its etcd lease is in doubt)."""
        ...


class Owner(Protocol):
    """A call's owner node, as an agent's home node sees it."""

    async def report(
        self,
        call_id: str,
        agent_id: str,
        action: AgentAction,
        epoch: int,
        *,
        queue: str = "",
        notes: str = "",
    ) -> Verdict: ...

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool: ...


class Link(Protocol):
    """Reach any node's desk or owner side by node id."""

    def desk(self, node_id: str) -> Desk: ...

    def owner(self, node_id: str) -> Owner: ...
