"""A load-test scenario: a TOML file parsed into frozen dataclasses, with errors naming the field.

[scenario]
name = "three-sites"
duration_s = 150          # arrivals for this long (the first warmup_s are not measured)
warmup_s = 30
seed = 7
service_level_s = 5       # the T of the service level
ring_delay_s = 0.3        # how long an agent lets an offer ring before answering
drain_s = 60              # after the last arrival, how long calls may still end
mode = "signalling"       # or "media": every caller and agent a WebRTC peer sending a tone,
                          # audio checked both ways on every answered call

[[sites]]
name = "site-a"
trust = "inhouse"         # or "partner"
nodes = 2                 # node processes when the load test starts the cluster

[[agents]]                # a group of agents homed at one site
site = "site-a"
count = 120
tier = 1
skills = { support = 5 }

[queues.support]
skills = { support = 1 }  # minimum levels, as in the cluster's queue file

[[arrivals]]              # Poisson arrivals of one queue entering at one site
queue = "support"
site = "site-a"
rate_per_s = 7.0

[handle]                  # talk time, from answer to the agent's hang-up
distribution = "exponential"   # or "lognormal" (then `sigma`, the log's deviation)
mean_s = 12.0

[patience]                # how long a caller waits before hanging up
distribution = "exponential"   # or "none": callers wait until answered
mean_s = 60

wrap_up_s = 1.0           # (in [scenario]) after each call, before the agent is free again

[wan]                     # emulated wide-area links between sites
delay_ms = 40             # each way, on node-to-node gRPC between different sites

[[events]]
kind = "partition"        # cut `island` off from the other sites at at_s for for_s seconds
island = ["partner-c"]
at_s = 60
for_s = 20
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import InvalidRecord
from registry.records import MAX_TIER, check_id

MAX_DURATION_S = 3_600.0
MAX_AGENTS = 20_000
MAX_RATE = 500.0
MAX_NODES_PER_SITE = 8
MAX_MEDIA_AGENTS = 200
"""In media mode every agent holds a WebRTC leg in the load test's one process."""
MODES = ("signalling", "media")


class ScenarioError(ValueError):
    """The scenario is unusable; `field` names where (e.g. "agents[2].count")."""

    code = "scenario_invalid"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    trust: str
    nodes: int = 1


@dataclass(frozen=True, slots=True)
class AgentGroup:
    site: str
    count: int
    tier: int
    skills: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    skills: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Arrivals:
    queue: str
    site: str
    rate_per_s: float


@dataclass(frozen=True, slots=True)
class Distribution:
    """A positive random duration: exponential, lognormal (with `sigma`), or none (infinite)."""

    kind: str
    mean_s: float = 0.0
    sigma: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "none":
            return math.inf
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.mean_s)
        mu = math.log(self.mean_s) - self.sigma**2 / 2  # so that the mean is mean_s
        return rng.lognormvariate(mu, self.sigma)


@dataclass(frozen=True, slots=True)
class Partition:
    island: tuple[str, ...]
    at_s: float
    for_s: float

    def cuts(self, site_a: str, site_b: str) -> bool:
        """Whether the partition separates these two sites."""
        return (site_a in self.island) != (site_b in self.island)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_s: float
    warmup_s: float
    seed: int
    service_level_s: float
    ring_delay_s: float
    drain_s: float
    wrap_up_s: float
    sites: tuple[Site, ...]
    agents: tuple[AgentGroup, ...]
    queues: tuple[Queue, ...]
    arrivals: tuple[Arrivals, ...]
    handle: Distribution
    patience: Distribution
    wan_delay_ms: float = 0.0
    events: tuple[Partition, ...] = ()
    mode: str = "signalling"
    """"signalling": calls without audio; "media": WebRTC callers and agents with tones."""

    @property
    def total_agents(self) -> int:
        return sum(group.count for group in self.agents)

    @property
    def total_rate(self) -> float:
        return sum(a.rate_per_s for a in self.arrivals)

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)


# -- parsing ----------------------------------------------------------------------------------

_TOP = {"scenario", "sites", "agents", "queues", "arrivals", "handle", "patience", "wan", "events"}
_SCENARIO = {
    "name",
    "duration_s",
    "warmup_s",
    "seed",
    "service_level_s",
    "ring_delay_s",
    "drain_s",
    "wrap_up_s",
    "mode",
}


def _table(where: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(where, f"must be a table, got {value!r:.40}")
    return value


def _keys(where: str, table: Mapping[str, Any], known: set[str], required: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ScenarioError(
            f"{prefix}{unknown[0]}", f"unknown key; known: {', '.join(sorted(known))}"
        )
    for key in sorted(required - set(table)):
        raise ScenarioError(f"{where}.{key}" if where else key, "missing")


def _number(where: str, value: object, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(where, f"must be a number, got {value!r:.40}")
    if (value <= low if open_low else value < low) or value > high:
        bound = "above" if open_low else "at least"
        raise ScenarioError(where, f"must be {bound} {low:g} and at most {high:g}, got {value:g}")
    return float(value)


def _int(where: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ScenarioError(where, f"must be an integer in {low}-{high}, got {value!r:.40}")
    return value


def _name(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ScenarioError(where, f"must be a string, got {value!r:.40}")
    try:
        check_id(where, value)
    except InvalidRecord as error:
        raise ScenarioError(where, str(error)) from None
    return value


def _array(where: str, value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ScenarioError(where, f"must be one or more [[{where}]] tables")
    return [_table(f"{where}[{i}]", item) for i, item in enumerate(value)]


def _skills(where: str, value: object) -> tuple[tuple[str, int], ...]:
    table = _table(where, value)
    return tuple(
        sorted((_name(f"{where}.{k}", k), _int(f"{where}.{k}", v, 1, 10)) for k, v in table.items())
    )


def _distribution(where: str, value: object, *, allow_none: bool) -> Distribution:
    table = _table(where, value)
    _keys(where, table, {"distribution", "mean_s", "sigma"}, {"distribution"})
    kind = table["distribution"]
    kinds = ("exponential", "lognormal", "none") if allow_none else ("exponential", "lognormal")
    if kind not in kinds:
        raise ScenarioError(f"{where}.distribution", f"must be one of {', '.join(kinds)}")
    if kind == "none":
        for key in ("mean_s", "sigma"):
            if key in table:
                raise ScenarioError(f"{where}.{key}", 'a distribution of "none" takes no ' + key)
        return Distribution("none")
    if "mean_s" not in table:
        raise ScenarioError(f"{where}.mean_s", "missing")
    mean = _number(f"{where}.mean_s", table["mean_s"], 0, MAX_DURATION_S, open_low=True)
    sigma = 0.0
    if kind == "lognormal":
        if "sigma" not in table:
            raise ScenarioError(f"{where}.sigma", "missing (the deviation of the log)")
        sigma = _number(f"{where}.sigma", table["sigma"], 0, 5, open_low=True)
    elif "sigma" in table:
        raise ScenarioError(f"{where}.sigma", "only a lognormal distribution takes sigma")
    return Distribution(kind, mean, sigma)


def parse_scenario(text: str) -> Scenario:
    """The scenario of a TOML document; ScenarioError names the field of the first problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError("", f"not valid TOML: {error}") from None
    _keys("", raw, _TOP, {"scenario", "sites", "agents", "queues", "arrivals", "handle"})
    head = _table("scenario", raw["scenario"])
    _keys("scenario", head, _SCENARIO, {"name", "duration_s", "seed"})
    name = _name("scenario.name", head["name"])
    duration = _number("scenario.duration_s", head["duration_s"], 0, MAX_DURATION_S, open_low=True)
    warmup = _number("scenario.warmup_s", head.get("warmup_s", 0), 0, MAX_DURATION_S)
    if warmup >= duration:
        raise ScenarioError("scenario.warmup_s", f"must be shorter than duration_s ({duration:g})")
    seed = _int("scenario.seed", head["seed"], 0, 2**63 - 1)
    sl = _number(
        "scenario.service_level_s", head.get("service_level_s", 20), 0, 3600, open_low=True
    )
    ring = _number("scenario.ring_delay_s", head.get("ring_delay_s", 0.3), 0, 60)
    drain = _number("scenario.drain_s", head.get("drain_s", 60), 0, MAX_DURATION_S)
    wrap = _number("scenario.wrap_up_s", head.get("wrap_up_s", 0), 0, 600)
    mode = head.get("mode", "signalling")
    if mode not in MODES:
        raise ScenarioError(
            "scenario.mode", f"must be {' or '.join(repr(m) for m in MODES)}, got {mode!r:.40}"
        )

    sites = []
    for i, table in enumerate(_array("sites", raw["sites"])):
        where = f"sites[{i}]"
        _keys(where, table, {"name", "trust", "nodes"}, {"name", "trust"})
        trust = table["trust"]
        if trust not in ("inhouse", "partner"):
            raise ScenarioError(f"{where}.trust", f'must be "inhouse" or "partner", got {trust!r}')
        nodes = _int(f"{where}.nodes", table.get("nodes", 1), 1, MAX_NODES_PER_SITE)
        sites.append(Site(_name(f"{where}.name", table["name"]), trust, nodes))
    site_names = [s.name for s in sites]
    if len(set(site_names)) != len(site_names):
        raise ScenarioError("sites", f"site names must be unique: {', '.join(site_names)}")

    def known_site(where: str, value: object) -> str:
        site = _name(where, value)
        if site not in site_names:
            raise ScenarioError(where, f"no site {site!r}; sites: {', '.join(site_names)}")
        return site

    agents = []
    for i, table in enumerate(_array("agents", raw["agents"])):
        where = f"agents[{i}]"
        _keys(where, table, {"site", "count", "tier", "skills"}, {"site", "count", "skills"})
        agents.append(
            AgentGroup(
                known_site(f"{where}.site", table["site"]),
                _int(f"{where}.count", table["count"], 1, MAX_AGENTS),
                _int(f"{where}.tier", table.get("tier", 1), 1, MAX_TIER),
                _skills(f"{where}.skills", table["skills"]),
            )
        )
    if sum(g.count for g in agents) > MAX_AGENTS:
        raise ScenarioError("agents", f"at most {MAX_AGENTS} agents in all")
    if mode == "media" and sum(g.count for g in agents) > MAX_MEDIA_AGENTS:
        raise ScenarioError(
            "agents", f'at most {MAX_MEDIA_AGENTS} agents in all with mode = "media"'
        )

    queues = []
    for qname, table in _table("queues", raw["queues"]).items():
        where = f"queues.{qname}"
        _keys(where, _table(where, table), {"skills"}, {"skills"})
        queues.append(Queue(_name(where, qname), _skills(f"{where}.skills", table["skills"])))
    if not queues:
        raise ScenarioError("queues", "define at least one [queues.NAME] table")
    queue_names = [q.name for q in queues]

    arrivals = []
    for i, table in enumerate(_array("arrivals", raw["arrivals"])):
        where = f"arrivals[{i}]"
        _keys(where, table, {"queue", "site", "rate_per_s"}, {"queue", "site", "rate_per_s"})
        queue = _name(f"{where}.queue", table["queue"])
        if queue not in queue_names:
            raise ScenarioError(
                f"{where}.queue", f"no queue {queue!r}; queues: {', '.join(queue_names)}"
            )
        rate = _number(f"{where}.rate_per_s", table["rate_per_s"], 0, MAX_RATE, open_low=True)
        arrivals.append(Arrivals(queue, known_site(f"{where}.site", table["site"]), rate))
    if sum(a.rate_per_s for a in arrivals) > MAX_RATE:
        raise ScenarioError("arrivals", f"at most {MAX_RATE:g} calls per second in all")

    handle = _distribution("handle", raw["handle"], allow_none=False)
    patience = _distribution(
        "patience", raw.get("patience", {"distribution": "none"}), allow_none=True
    )
    wan = _table("wan", raw.get("wan", {}))
    _keys("wan", wan, {"delay_ms"}, set())
    delay = _number("wan.delay_ms", wan.get("delay_ms", 0), 0, 5_000)

    events = []
    for i, table in enumerate(raw.get("events", [])):
        where = f"events[{i}]"
        table = _table(where, table)
        _keys(where, table, {"kind", "island", "at_s", "for_s"}, {"kind", "island", "at_s"})
        if table["kind"] != "partition":
            raise ScenarioError(f"{where}.kind", 'must be "partition"')
        island = table["island"]
        if not isinstance(island, list) or not island:
            raise ScenarioError(f"{where}.island", "must be a non-empty list of site names")
        names = tuple(known_site(f"{where}.island", s) for s in island)
        if set(names) == set(site_names):
            raise ScenarioError(f"{where}.island", "an island needs at least one site outside it")
        at = _number(f"{where}.at_s", table["at_s"], 0, duration)
        length = _number(f"{where}.for_s", table.get("for_s", 10), 0, MAX_DURATION_S, open_low=True)
        events.append(Partition(names, at, length))

    return Scenario(
        name=name,
        duration_s=duration,
        warmup_s=warmup,
        seed=seed,
        service_level_s=sl,
        ring_delay_s=ring,
        drain_s=drain,
        wrap_up_s=wrap,
        sites=tuple(sites),
        agents=tuple(agents),
        queues=tuple(queues),
        arrivals=tuple(arrivals),
        handle=handle,
        patience=patience,
        wan_delay_ms=delay,
        events=tuple(events),
        mode=mode,
    )


def load_scenario(path: Path) -> Scenario:
    """The scenario in the TOML file at `path`; ScenarioError names the file when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise ScenarioError("", f"cannot read scenario file {path}: {reason}") from None
    return parse_scenario(text)


def queues_toml(scenario: Scenario, *, siloed: bool, ring_timeout_s: float = 10.0) -> str:
    """The cluster's queue file for the scenario. Pooled: one queue per scenario queue, served by
    any site. Siloed: one queue per scenario queue and site (NAME-SITE), served only there."""
    backstop = scenario.wrap_up_s + 5  # agents end wrap-up themselves; the node only if they fail
    lines: list[str] = []
    for queue in scenario.queues:
        skills = ", ".join(f"{k} = {v}" for k, v in queue.skills)
        names: list[tuple[str, str | None]] = [(queue.name, None)]
        if siloed:
            names = [(f"{queue.name}-{site.name}", site.name) for site in scenario.sites]
        for name, site in names:
            lines += [
                f"[queues.{name}]",
                f"skills = {{ {skills} }}",
                f"service_level_s = {scenario.service_level_s:g}",
                f"ring_timeout_s = {ring_timeout_s:g}",
                f"wrap_up_s = {backstop:g}",
                "max_wait_s = 3600",
                "missed_offers_to_not_ready = 100",
            ]
            if site is not None:
                tiers = ", ".join(str(t) for t in range(1, MAX_TIER + 1))
                lines += [
                    f"[[queues.{name}.steps]]",
                    "after_s = 0",
                    f"tiers = [{tiers}]",
                    'trusts = ["inhouse", "partner"]',
                    f'sites = ["{site}"]',
                ]
            lines.append("")
    return "\n".join(lines)


def queue_for(arrival: Arrivals, *, siloed: bool) -> str:
    """The cluster queue a caller of `arrival` dials."""
    return f"{arrival.queue}-{arrival.site}" if siloed else arrival.queue
