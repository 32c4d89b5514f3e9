"""The life of a call on its owner node: states, events and the table of transitions. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CallState(enum.Enum):
    ARRIVING = "arriving"  # accepted at an entry point; its hook has not answered yet
    IVR = "ivr"  # the entry point's hook holds the caller: prompts, digits
    WAITING = "waiting"
    OFFERED = "offered"
    TALKING = "talking"
    ENDED = "ended"


class CallEvent(enum.Enum):
    MENU = "menu"  # the entry point's hook answered with prompts or a digit collection
    QUEUE = "queue"  # the hook (or its fallback) put the call in a queue
    HOOK_HANGUP = "hook_hangup"  # the hook (or its fallback) ended the call
    OFFER = "offer"  # an agent was reserved for the call
    MISS = "miss"  # the offer lapsed: ring timeout, rejected, or the reservation was lost
    ANSWER = "answer"  # the offered agent answered
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFER = "transfer"  # the agent hands the call to another queue (escalation)
    OVERFLOW = "overflow"  # waited past the queue's maximum, and the queue says hang up
    REQUEUE = "requeue"  # waited past the queue's maximum: on to the queue it overflows to
    VOICEMAIL = "voicemail"  # waited past the queue's maximum: the caller leaves a message
    FAIL = "fail"  # the node could not carry the call on (e.g. it restarted)


class Outcome(enum.Enum):
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    VOICEMAIL = "voicemail"
    OVERFLOWED = "overflowed"
    FAILED = "failed"


class WrongState(Exception):
    code = "wrong_state"


S, E, Out = CallState, CallEvent, Outcome

TRANSITIONS: dict[tuple[CallState, CallEvent], tuple[CallState, Outcome | None]] = {
    (S.ARRIVING, E.MENU): (S.IVR, None),
    (S.ARRIVING, E.QUEUE): (S.WAITING, None),
    (S.IVR, E.QUEUE): (S.WAITING, None),
    (S.ARRIVING, E.CALLER_HANGUP): (S.ENDED, Out.ABANDONED),
    (S.IVR, E.CALLER_HANGUP): (S.ENDED, Out.ABANDONED),
    (S.ARRIVING, E.VOICEMAIL): (S.ENDED, Out.VOICEMAIL),
    (S.IVR, E.VOICEMAIL): (S.ENDED, Out.VOICEMAIL),
    (S.ARRIVING, E.HOOK_HANGUP): (S.ENDED, Out.COMPLETED),
    (S.IVR, E.HOOK_HANGUP): (S.ENDED, Out.COMPLETED),
    (S.WAITING, E.HOOK_HANGUP): (S.ENDED, Out.COMPLETED),
    (S.ARRIVING, E.FAIL): (S.ENDED, Out.FAILED),
    (S.IVR, E.FAIL): (S.ENDED, Out.FAILED),
    (S.WAITING, E.OFFER): (S.OFFERED, None),
    (S.OFFERED, E.MISS): (S.WAITING, None),
    (S.OFFERED, E.ANSWER): (S.TALKING, None),
    (S.WAITING, E.CALLER_HANGUP): (S.ENDED, Out.ABANDONED),
    (S.OFFERED, E.CALLER_HANGUP): (S.ENDED, Out.ABANDONED),
    (S.TALKING, E.CALLER_HANGUP): (S.ENDED, Out.COMPLETED),
    (S.TALKING, E.AGENT_HANGUP): (S.ENDED, Out.COMPLETED),
    (S.TALKING, E.TRANSFER): (S.WAITING, None),
    (S.WAITING, E.OVERFLOW): (S.ENDED, Out.OVERFLOWED),
    (S.WAITING, E.REQUEUE): (S.WAITING, None),
    (S.WAITING, E.VOICEMAIL): (S.ENDED, Out.VOICEMAIL),
    (S.WAITING, E.FAIL): (S.ENDED, Out.FAILED),
    (S.OFFERED, E.FAIL): (S.ENDED, Out.FAILED),
    (S.TALKING, E.FAIL): (S.ENDED, Out.FAILED),
}
"""(state, event) -> (next state, outcome when the call ends). Anything else is WrongState."""


def transition(state: CallState, event: CallEvent) -> tuple[CallState, Outcome | None]:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise WrongState(f"a {state.value} call cannot take {event.value}") from None


@dataclass(frozen=True, slots=True)
class Call:
    """One call as its owner node holds it."""

    call_id: str
    owner_node: str
    queue: str
    caller: str
    arrived_ms: int
    state: CallState = CallState.WAITING
    agent_id: str = ""  # the agent offered or talking
    agent_node: str = ""
    epoch: int = 0  # the agent's session epoch the reservation is fenced by
    offered_ms: int = 0
    answered_ms: int = 0
    ended_ms: int = 0
    outcome: Outcome | None = None
    reason: str = ""
    missed: int = 0  # offers that lapsed
    notes: str = ""  # escalation notes, each line "agent: text"
    queued_ms: int = 0  # when the call entered its current queue (arrival, escalation, overflow)
    # a warm escalation: the consulted agent, explicit beside `agent_id` (I2), until handover
    consult_agent: str = ""
    consult_node: str = ""
    consult_epoch: int = 0
    consult_answered: bool = False
    customer_id: str = ""  # the caller's customer record, when the directory knew the caller
    escalations: int = 0
    entry: str = ""  # the entry point the call arrived at ("": straight into `queue`)
    ivr_ms: int = 0  # time spent at the entry point (arriving + IVR), set when it left them
    # set by a hook for this call, over its queue's (None: the queue's own)
    skills: tuple[tuple[str, int], ...] | None = None
    priority: int | None = None
