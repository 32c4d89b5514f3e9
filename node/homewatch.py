"""The owner's watchdog: is each agent on a call in talk here still held by its home node?

The mirror of the home's `AgentDesk.watch_owners`. The gossiped registry cannot tell an owner
that an agent's home died or was cut off (and no peer of a one-node site writes its agents
offline), so every WATCHDOG_S the owner asks each agent's home (`Desk.holds`, the Holds RPC).
Held: the misses are forgotten. Not held (no session, another epoch, no such offer): the party is
lost at once. No answer within the rpc timeout: a miss, and WATCHDOG_MISSES in a row lose it too.
What losing means (the call fails, or a consultation ends) is the switchboard's (`on_lost`).

Safe to give up: a cross-node call's media runs owner -> relay -> home, so a call whose home is
gone or cut off has no audio anyway, and the home frees the agent after the same misses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from node.callstate import Call, CallState
from node.exchange import WATCHDOG_MISSES, WATCHDOG_S, Link, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Party:
    """An agent on a call in talk, as the owner's watchdog asks the agent's home about it: the
    call's agent, or the agent it consults."""

    call_id: str
    agent_id: str
    node: str  # the agent's home node
    epoch: int
    consulted: bool = False


def parties(call: Call) -> tuple[Party, ...]:
    """Who is on a call in talk: its agent, and the consulted agent when there is one."""
    if call.state is not CallState.TALKING or not call.agent_id:
        return ()
    own = Party(call.call_id, call.agent_id, call.agent_node, call.epoch)
    if not call.consult_agent:
        return (own,)
    consulted = Party(
        call.call_id, call.consult_agent, call.consult_node, call.consult_epoch, consulted=True
    )
    return (own, consulted)


class HomeWatch:
    """Checks the homes of the agents on `calls` (the owner's live calls, read, never written).
    `on_lost(call, party, why)` is called when a home no longer holds its agent; it must not
    block."""

    def __init__(
        self,
        calls: Mapping[str, Call],
        node_id: str,
        link: Link,
        on_lost: Callable[[Call, Party, str], None],
        rpc_timeout_s: float,
    ) -> None:
        self._calls = calls
        self._node_id = node_id
        self._link = link
        self._on_lost = on_lost
        self._rpc_timeout_s = rpc_timeout_s
        self._misses: dict[Party, int] = {}  # checks in a row unanswered

    async def watch(self, every_s: float = WATCHDOG_S) -> None:
        """A round every `every_s`, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            await self.check()

    async def check(self) -> None:
        """One round: check every agent on a call in talk homed on another node, all at once,
        each bounded by the rpc timeout (so one check per call is under way at a time); forget
        the misses of calls no longer in talk."""
        live = [party for call in list(self._calls.values()) for party in parties(call)]
        for party in set(self._misses) - set(live):
            del self._misses[party]
        remote = [party for party in live if party.node != self._node_id]
        results = await asyncio.gather(
            *(self._check(party) for party in remote), return_exceptions=True
        )
        for party, result in zip(remote, results, strict=True):
            if isinstance(result, Exception):  # a fault here must not stop the other checks
                log.error("call %s: home check failed: %r", party.call_id, result)

    async def _check(self, party: Party) -> None:
        """One check of one agent's home: held resets the misses; not held loses the party at
        once; no answer counts a miss, and WATCHDOG_MISSES in a row lose it too."""
        verdict: Verdict | None = None
        failure = ""
        try:
            verdict = await asyncio.wait_for(
                self._link.desk(party.node).holds(party.call_id, party.agent_id, party.epoch),
                self._rpc_timeout_s,
            )
        except (TimeoutError, ConnectionError) as error:
            failure = str(error) or "timeout"
        call = self._calls.get(party.call_id)
        if call is None or party not in parties(call):
            self._misses.pop(party, None)  # ended or handed over meanwhile
            return
        if verdict is not None and verdict.accepted:
            self._misses.pop(party, None)
            return
        if verdict is not None:
            why = f"agent's home no longer holds the agent on this call: {verdict.reason}"
        else:
            misses = self._misses.get(party, 0) + 1
            self._misses[party] = misses
            log.warning(
                "call %s: agent %s's home %s did not answer the check (%d of %d): %s",
                party.call_id,
                party.agent_id,
                party.node,
                misses,
                WATCHDOG_MISSES,
                failure,
            )
            if misses < WATCHDOG_MISSES:
                return
            why = f"agent's home {party.node} unreachable ({failure})"
        self._misses.pop(party, None)
        self._on_lost(call, party, why)
