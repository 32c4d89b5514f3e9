"""The call's state machine: every pair in the table, and every pair outside it refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.callstate import TRANSITIONS, CallEvent, CallState, Outcome, WrongState, transition


def test_a_call_answered_then_hung_up_completes() -> None:
    state = CallState.WAITING
    for event in (CallEvent.OFFER, CallEvent.MISS, CallEvent.OFFER, CallEvent.ANSWER):
        state, outcome = transition(state, event)
        assert outcome is None
    assert transition(state, CallEvent.CALLER_HANGUP) == (CallState.ENDED, Outcome.COMPLETED)


def test_hanging_up_before_answer_is_abandoned() -> None:
    assert transition(CallState.OFFERED, CallEvent.CALLER_HANGUP)[1] is Outcome.ABANDONED
    assert transition(CallState.WAITING, CallEvent.CALLER_HANGUP)[1] is Outcome.ABANDONED


@given(st.sampled_from(CallState), st.sampled_from(CallEvent))
def test_only_the_table_moves_a_call(state: CallState, event: CallEvent) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event) == TRANSITIONS[(state, event)]
    else:
        with pytest.raises(WrongState, match=f"a {state.value} call cannot take {event.value}"):
            transition(state, event)


def test_every_ending_has_exactly_one_outcome_and_ended_is_final() -> None:
    for (_, _), (after, outcome) in TRANSITIONS.items():
        assert (after is CallState.ENDED) == (outcome is not None)
    assert not [key for key in TRANSITIONS if key[0] is CallState.ENDED]


def test_a_call_at_an_entry_point_waits_once_queued_or_ends_there() -> None:
    state, _ = transition(CallState.ARRIVING, CallEvent.MENU)
    assert state is CallState.IVR
    assert transition(state, CallEvent.QUEUE) == (CallState.WAITING, None)
    assert transition(CallState.ARRIVING, CallEvent.QUEUE) == (CallState.WAITING, None)
    for at in (CallState.ARRIVING, CallState.IVR):
        assert transition(at, CallEvent.CALLER_HANGUP) == (CallState.ENDED, Outcome.ABANDONED)
        assert transition(at, CallEvent.VOICEMAIL) == (CallState.ENDED, Outcome.VOICEMAIL)
        assert transition(at, CallEvent.HOOK_HANGUP) == (CallState.ENDED, Outcome.COMPLETED)
        assert transition(at, CallEvent.FAIL) == (CallState.ENDED, Outcome.FAILED)
    with pytest.raises(WrongState):
        transition(CallState.IVR, CallEvent.OFFER)  # routing waits for the queue
