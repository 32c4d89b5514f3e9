"""Routing decisions: pure functions over registry values (DESIGN.md §4, steps 3 and 5).

No I/O, no clock: the time a call has waited comes in as an argument. Two questions:

- a call waits in a queue: which agents may take it, best first (`rank_agents`);
- an agent frees up: which waiting (node, queue) it should pull from (`pick_queue`).

**Which steps a call has reached.** A queue's steps are cumulative: an agent eligible in an earlier
step stays eligible. With `t` the last step whose `after_s <= waited_s`:

    reached = t
    while reached is not the last step and nobody who could take the call in steps[0..reached]
          is logged in (anywhere, in any state but OFFLINE):
        reached += 1                       # the next step applies at once

"Could take the call" means: has every required skill at its minimum level, is not in the call's
`exclude` set (agents who already refused or missed this call), and passes the tier, trust and
site of one of those steps. A busy or not-ready agent counts (they will be back; the call waits
for them until the next step's time), an offline one does not. So tier-1 partners get a sales
call first, in-house specialists join after 30 s, or at once when no tier-1 agent with the skill
is logged in. Equivalently: reached = max(t, min(m, last)), where m is the earliest step that
admits some logged-in agent who could take the call.

**Ranking.** Of the agents eligible in the reached steps: the higher skill score first (the sum of
the agent's levels in the queue's required skills), then the longest idle (older
`state_since_ms`), then the cost of crossing sites (0 for an agent of the call's owner site,
`cross_site_cost` otherwise), then the agent id (then the record's version, for input that holds
an agent twice). The order is total, so the result does not depend on the order of the input.

**Speed.** A decision must take well under a millisecond at 10,000 agents in CPython, so the
loops touch as little as possible: only the free agents are considered, a set test on one
required skill drops most of them, and only the few left are fully checked and scored. The
logged-in scan for the reached step runs only when every free agent found belongs to a later step
than the waiting time has reached, and stops at the first agent found. Given a plain iterable,
that is one pass over every agent; given an `AgentIndex` (agents by skill, kept up to date from
the registry's changes), only the agents holding the queue's least common required skill are read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from node.queues import QueueConfig, Step
from registry.records import AgentRecord, AgentState, QueueSummary, Skills, Trust, Version
from registry.sync import Delta

_AVAILABLE = AgentState.AVAILABLE
_OFFLINE = AgentState.OFFLINE
_NO_ONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible agent with what ranked it."""

    agent: AgentRecord
    skill_score: int
    """The sum of the agent's levels in the queue's required skills."""
    idle_since_ms: int
    """When the agent became available (its `state_since_ms`)."""
    cross_site: bool
    """Whether the agent works at another site than the call's owner node."""


class _Gate:
    """One step's tier, trust and site test, in the form cheapest to evaluate.

    Trusts are a tuple, not a set: `in` on a tuple of enum members compares identities, while a
    set would call the enum's Python-level __hash__ for every agent.
    """

    __slots__ = ("sites", "tiers", "trusts")

    def __init__(self, step: Step) -> None:
        self.tiers = step.tiers
        self.trusts: tuple[Trust, ...] = tuple(step.trusts)
        self.sites = step.sites

    def admits(self, agent: AgentRecord) -> bool:
        return (
            agent.tier in self.tiers
            and agent.trust in self.trusts
            and (self.sites is None or agent.site in self.sites)
        )


def _first_step(agent: AgentRecord, gates: Sequence[_Gate]) -> int:
    """The index of the first gate that admits `agent`; len(gates) when none does."""
    for i, gate in enumerate(gates):
        if gate.admits(agent):
            return i
    return len(gates)


def _skill_score(skills: Skills, required: Skills) -> int:
    """The sum of the levels in `required` skills; -1 when one is missing or below its minimum."""
    if not required:
        return 0
    levels = dict(skills)
    score = 0
    for name, minimum in required:
        level = levels.get(name, 0)
        if level < minimum:
            return -1
        score += level
    return score


def _prefilter(required: Skills) -> frozenset[tuple[str, int]] | None:
    """(skill, level) pairs of which an agent who may take the call holds at least one: those of
    the required skill with the highest minimum level, the rarest guess. None: no skill needed."""
    if not required:
        return None
    name, minimum = max(required, key=lambda pair: (pair[1], pair[0]))
    return frozenset((name, level) for level in range(minimum, 11))


def _time_step(steps: Sequence[Step], waited_s: float) -> int:
    """The index of the last step whose after_s <= waited_s (the first step starts at 0)."""
    reached = 0
    for i, step in enumerate(steps):
        if step.after_s <= waited_s:
            reached = i
    return reached


def _staffed_step(
    logged_in: Iterable[AgentRecord],
    required: Skills,
    gates: Sequence[_Gate],
    exclude: frozenset[str],
    limit: int,
    enough: int,
) -> int:
    """The earliest step below `limit` whose gates admit a logged-in agent who has the required
    skills and is not excluded; `limit` when there is none. Stops at the first at or below
    `enough`, where the answer no longer matters."""
    pre = _prefilter(required)
    if pre is not None:  # one tight pass first: most agents lack the skill
        isdisjoint = pre.isdisjoint
        logged_in = [a for a in logged_in if a.state is not _OFFLINE and not isdisjoint(a.skills)]
    best = limit
    for agent in logged_in:
        if agent.state is _OFFLINE:
            continue
        first = _first_step(agent, gates[:best])
        if (
            first < best
            and agent.agent_id not in exclude
            and _skill_score(agent.skills, required) >= 0
        ):
            best = first
            if best <= enough:
                break
    return best


def _logged_in(agents: Iterable[AgentRecord], required: Skills) -> Iterable[AgentRecord]:
    """What to scan for logged-in agents who may have the `required` skills."""
    if isinstance(agents, AgentIndex):
        return agents.logged_in_with(required)
    return agents


def _free(agents: Iterable[AgentRecord], required: Skills) -> list[AgentRecord]:
    """Available agents with room for a call who may have the `required` skills (the prefilter
    drops most who lack them; the caller checks the skills in full)."""
    pool = agents.free_with(required) if isinstance(agents, AgentIndex) else agents
    pre = _prefilter(required)
    if pre is None:
        return [a for a in pool if a.state is _AVAILABLE and a.active_calls < a.capacity]
    isdisjoint = pre.isdisjoint
    free = [a for a in pool if a.state is _AVAILABLE and not isdisjoint(a.skills)]
    return [a for a in free if a.active_calls < a.capacity]


def _reached(
    queue: QueueConfig,
    waited_s: float,
    agents: Iterable[AgentRecord],
    exclude: frozenset[str],
) -> int:
    """The index of the last step a call that waited `waited_s` has reached (module docstring)."""
    steps = queue.steps
    by_time = _time_step(steps, waited_s)
    last = len(steps) - 1
    if by_time == last:
        return last
    gates = [_Gate(step) for step in steps]
    logged_in = _logged_in(agents, queue.skills)
    staffed = _staffed_step(logged_in, queue.skills, gates, exclude, last, by_time)
    return max(by_time, staffed)


def reached_steps(
    queue: QueueConfig,
    waited_s: float,
    agents: Iterable[AgentRecord],
    *,
    exclude: frozenset[str] = _NO_ONE,
) -> tuple[Step, ...]:
    """The steps whose agents may take a call that waited `waited_s`: the first ones up to the
    current step (steps are cumulative)."""
    return queue.steps[: _reached(queue, waited_s, agents, exclude) + 1]


def current_step(
    queue: QueueConfig,
    waited_s: float,
    agents: Iterable[AgentRecord],
    *,
    exclude: frozenset[str] = _NO_ONE,
) -> Step:
    """The latest step a call that waited `waited_s` has reached: by time, or sooner when nobody
    who could take the call in the earlier steps is logged in (module docstring)."""
    return queue.steps[_reached(queue, waited_s, agents, exclude)]


def eligible(agent: AgentRecord, queue: QueueConfig, steps: Sequence[Step]) -> bool:
    """Whether `agent` may be offered a call of `queue` now: available with room for a call, every
    required skill at or above its minimum level, and admitted by one of `steps` (the reached
    steps; see `reached_steps`)."""
    return (
        agent.state is _AVAILABLE
        and agent.active_calls < agent.capacity
        and _skill_score(agent.skills, queue.skills) >= 0
        and _first_step(agent, [_Gate(step) for step in steps]) < len(steps)
    )


_Ranked = tuple[int, int, int, str, Version, AgentRecord]
"""(-skill score, idle since, site cost, agent id, version, agent): sorts best first."""


def _ranked(
    agents: Iterable[AgentRecord],
    queue: QueueConfig,
    waited_s: float,
    owner_site: str,
    exclude: frozenset[str],
    cross_site_cost: int,
) -> list[_Ranked]:
    if not isinstance(agents, AgentIndex | Collection):
        agents = list(agents)  # read twice at most: free agents, then maybe the logged-in ones
    required = queue.skills
    steps = queue.steps
    gates = [_Gate(step) for step in steps]
    free = _free(agents, required)
    found: list[tuple[int, int, AgentRecord]] = []
    for agent in free:
        if agent.agent_id in exclude:
            continue
        first = _first_step(agent, gates)
        if first == len(gates):
            continue
        score = _skill_score(agent.skills, required)
        if score >= 0:
            found.append((first, score, agent))
    if not found:
        return []
    reached = by_time = _time_step(steps, waited_s)
    earliest = min(first for first, _, _ in found)
    if earliest > by_time:
        # every free agent is in a later step: may one of those apply already?
        logged_in = _logged_in(agents, required)
        staffed = _staffed_step(logged_in, required, gates, exclude, earliest, by_time)
        reached = max(by_time, staffed)
    ranked = [
        (
            -score,
            agent.state_since_ms,
            0 if agent.site == owner_site else cross_site_cost,
            agent.agent_id,
            agent.version,
            agent,
        )
        for first, score, agent in found
        if first <= reached
    ]
    ranked.sort(key=_sort_key)
    return ranked


def _sort_key(entry: _Ranked) -> tuple[int, int, int, str, Version]:
    return entry[:5]


def rank_agents(
    agents: Iterable[AgentRecord],
    queue: QueueConfig,
    waited_s: float,
    owner_site: str,
    *,
    exclude: frozenset[str] = _NO_ONE,
    cross_site_cost: int = 1,
) -> list[AgentRecord]:
    """The agents who may take a call of `queue` that has waited `waited_s` at a node of
    `owner_site`, best first; none of `exclude` (agent ids). See the module docstring for the
    reached steps and the order."""
    return [
        entry[5] for entry in _ranked(agents, queue, waited_s, owner_site, exclude, cross_site_cost)
    ]


def rank_candidates(
    agents: Iterable[AgentRecord],
    queue: QueueConfig,
    waited_s: float,
    owner_site: str,
    *,
    exclude: frozenset[str] = _NO_ONE,
    cross_site_cost: int = 1,
) -> list[Candidate]:
    """`rank_agents` with what ranked each agent (for logs and the supervisors' view)."""
    return [
        Candidate(agent, -negative_score, idle_since, cost != 0)
        for negative_score, idle_since, cost, _, _, agent in _ranked(
            agents, queue, waited_s, owner_site, exclude, cross_site_cost
        )
    ]


def pick_queue(
    summaries: Iterable[QueueSummary],
    agent: AgentRecord,
    queues: Mapping[str, QueueConfig],
    now_ms: int,
    *,
    agents: Iterable[AgentRecord] | None = None,
) -> QueueSummary | None:
    """The waiting (node, queue) an agent who frees up should pull from; None when none.

    Of the summaries with calls waiting whose queue is configured here (the same file runs
    everywhere; a queue unknown here is skipped) and that `agent` is `eligible` for, in the steps
    reached by the queue's oldest call (age: now_ms - oldest_since_ms): the highest top_priority,
    then the oldest call, then (node, queue). So the oldest call across all sites is served first.

    Without `agents` the steps are reached by time only. With `agents` (the registry's view) the
    rule of the module docstring applies too: an agent of a later step may pull at once when
    nobody of the earlier steps who could take the call is logged in.
    """
    if agent.state is not _AVAILABLE or agent.active_calls >= agent.capacity:
        return None
    view = agents
    if view is not None and not isinstance(view, AgentIndex | Collection):
        view = list(view)  # read once per candidate queue
    best: QueueSummary | None = None
    for summary in summaries:
        queue = queues.get(summary.queue)
        if summary.waiting <= 0 or queue is None:
            continue
        if best is not None and _pick_key(summary) >= _pick_key(best):
            continue
        waited_s = max(0, now_ms - summary.oldest_since_ms) / 1000
        if view is None:
            steps = queue.steps[: _time_step(queue.steps, waited_s) + 1]
        else:
            steps = reached_steps(queue, waited_s, view)
        if eligible(agent, queue, steps):
            best = summary
    return best


def _pick_key(summary: QueueSummary) -> tuple[int, int, str, str]:
    return (-summary.top_priority, summary.oldest_since_ms, summary.node, summary.queue)


# -- the index --------------------------------------------------------------------------------


class AgentSource(Protocol):
    """What `AgentIndex.refresh` reads: registry.registry.Registry satisfies it."""

    @property
    def seq(self) -> int: ...

    def agents(self) -> list[AgentRecord]: ...

    def delta_since(self, watermark: int, peer: str) -> Delta | None: ...


_NOT_A_PEER = "\0routing"
"""Passed to `delta_since` as the peer not to echo to: no change ever comes from it."""

_EMPTY: dict[str, AgentRecord] = {}


class AgentIndex:
    """The registry's agents by skill: logged-in ones and free ones (available with room).

    A derived view for routing at scale: `rank_agents`, `current_step`, `reached_steps` and
    `pick_queue` take it wherever they take an iterable of agents, give the same answers, and
    read only the agents who hold the queue's least common required skill. Keep it up to date
    with `refresh(registry)` before deciding (it reads the registry's changes since the last
    refresh, or everything when too much changed), or with `put` for each changed record.
    Iterating it yields every agent it holds. Not thread-safe; no I/O.
    """

    def __init__(self, agents: Iterable[AgentRecord] = ()) -> None:
        self._agents: dict[str, AgentRecord] = {}
        self._logged_in: dict[str, AgentRecord] = {}
        self._free: dict[str, AgentRecord] = {}
        self._logged_in_by_skill: dict[str, dict[str, AgentRecord]] = {}
        self._free_by_skill: dict[str, dict[str, AgentRecord]] = {}
        self._source: AgentSource | None = None
        self._seq = 0
        for agent in agents:
            self.put(agent)

    def _clear(self) -> None:
        for held in (self._agents, self._logged_in, self._free):
            held.clear()
        self._logged_in_by_skill.clear()
        self._free_by_skill.clear()

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[AgentRecord]:
        return iter(self._agents.values())

    def get(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def put(self, agent: AgentRecord) -> None:
        """Hold `agent` in place of the record with its id (the caller has merged: the registry's
        current record goes in, whatever its version)."""
        old = self._agents.get(agent.agent_id)
        if old is agent:
            return
        if old is not None:
            self._unlink(old)
        self._agents[agent.agent_id] = agent
        self._link(agent)

    def refresh(self, source: AgentSource) -> int:
        """Catch up with `source` (a registry): how many agent records were put."""
        if source is self._source and source.seq == self._seq:
            return 0
        delta = None
        if source is self._source:
            delta = source.delta_since(self._seq, _NOT_A_PEER)
        seq = source.seq
        changed = source.agents() if delta is None else delta.agents
        if delta is None:
            self._clear()  # start over from the full state
        for agent in changed:
            self.put(agent)
        self._source, self._seq = source, seq
        return len(changed)

    def free_with(self, required: Skills) -> Collection[AgentRecord]:
        """Free agents holding the least common of the `required` skills (at any level)."""
        return self._pool(self._free, self._free_by_skill, required)

    def logged_in_with(self, required: Skills) -> Collection[AgentRecord]:
        """Logged-in agents holding the least common of the `required` skills (at any level)."""
        return self._pool(self._logged_in, self._logged_in_by_skill, required)

    @staticmethod
    def _pool(
        every: dict[str, AgentRecord],
        by_skill: dict[str, dict[str, AgentRecord]],
        required: Skills,
    ) -> Collection[AgentRecord]:
        if not required:
            return every.values()
        return min((by_skill.get(name, _EMPTY) for name, _ in required), key=len).values()

    def _link(self, agent: AgentRecord) -> None:
        if agent.state is _OFFLINE:
            return
        agent_id = agent.agent_id
        free = agent.state is _AVAILABLE and agent.active_calls < agent.capacity
        self._logged_in[agent_id] = agent
        if free:
            self._free[agent_id] = agent
        for name, _ in agent.skills:
            self._logged_in_by_skill.setdefault(name, {})[agent_id] = agent
            if free:
                self._free_by_skill.setdefault(name, {})[agent_id] = agent

    def _unlink(self, agent: AgentRecord) -> None:
        agent_id = agent.agent_id
        if self._logged_in.pop(agent_id, None) is None:
            return
        self._free.pop(agent_id, None)
        for name, _ in agent.skills:
            self._logged_in_by_skill[name].pop(agent_id, None)
            free = self._free_by_skill.get(name)
            if free is not None:
                free.pop(agent_id, None)
