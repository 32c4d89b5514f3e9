"""Randomized fault schedules: pure values drawn from a seed, so a failing run replays exactly.

A schedule is a tuple of faults, each a frozen dataclass with the second it starts (`at_s`), how
long it lasts (`for_s`) and its target. The nemesis (chaos/nemesis.py) applies a fault at `at_s`
and undoes it `for_s` later. Faults on the same target never overlap in time, so every undo
finds the target as its fault left it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

LEASE_TTL_S = 2.0
"""The fast preset's lease: a pause must outlast it to fence the paused node."""


@dataclass(frozen=True, slots=True)
class CutLink:
    """Every link between two sites cut (gossip and the call exchange, both ways)."""

    at_s: float
    for_s: float
    sites: tuple[str, str]

    @property
    def target(self) -> str:
        return "link:" + "|".join(sorted(self.sites))


@dataclass(frozen=True, slots=True)
class PauseNode:
    """SIGSTOP, then SIGCONT `for_s` later (longer than a lease: the node must fence itself)."""

    at_s: float
    for_s: float
    node: str

    @property
    def target(self) -> str:
        return f"node:{self.node}"


@dataclass(frozen=True, slots=True)
class KillNode:
    """SIGKILL, then a restart `for_s` later (open calls are closed as failed on restart)."""

    at_s: float
    for_s: float
    node: str

    @property
    def target(self) -> str:
        return f"node:{self.node}"


@dataclass(frozen=True, slots=True)
class KillEtcd:
    """SIGKILL the site's etcd member, then a restart on the same data `for_s` later."""

    at_s: float
    for_s: float
    site: str

    @property
    def target(self) -> str:
        return f"etcd:{self.site}"


@dataclass(frozen=True, slots=True)
class SkewClock:
    """The node's registry clock (its HLC's physical part) off by `offset_ms` for `for_s`."""

    at_s: float
    for_s: float
    node: str
    offset_ms: int

    @property
    def target(self) -> str:
        return f"node:{self.node}"


Fault = CutLink | PauseNode | KillNode | KillEtcd | SkewClock
KINDS: tuple[type[Fault], ...] = (CutLink, PauseNode, KillNode, KillEtcd, SkewClock)


@dataclass(frozen=True, slots=True)
class Topology:
    """What the schedule may aim at: site name -> its node ids."""

    sites: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        if not self.sites or any(not nodes for _, nodes in self.sites):
            raise ValueError("a topology needs at least one site, each with a node")

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sites)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(node for _, nodes in self.sites for node in nodes)


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    duration_s: float
    faults: tuple[Fault, ...]

    def describe(self) -> str:
        """One line per fault, in time order, after the seed that replays it."""
        lines = [
            f"schedule seed={self.seed} duration={self.duration_s:g}s {len(self.faults)} faults"
        ]
        lines += [f"  {describe(fault)}" for fault in self.faults]
        return "\n".join(lines)


def describe(fault: Fault) -> str:
    window = f"{fault.at_s:6.1f}s +{fault.for_s:.1f}s"
    match fault:
        case CutLink(sites=(a, b)):
            return f"{window} cut links {a} <-> {b}"
        case PauseNode(node=node):
            return f"{window} pause {node} (SIGSTOP)"
        case KillNode(node=node):
            return f"{window} kill {node}, then restart"
        case KillEtcd(site=site):
            return f"{window} kill the etcd of {site}, then restart"
        case SkewClock(node=node, offset_ms=offset):
            return f"{window} skew the clock of {node} by {offset:+d} ms"
    raise AssertionError(fault)


def kind_name(fault: Fault) -> str:
    return type(fault).__name__


def plan(
    seed: int,
    topology: Topology,
    duration_s: float,
    *,
    faults: int | None = None,
    warm_up_s: float = 3.0,
    settle_s: float = 2.0,
    kinds: Sequence[type[Fault]] = KINDS,
) -> Schedule:
    """A random schedule of `faults` faults (default: one per ~8 s) in [warm_up_s, duration_s -
    settle_s]; every kind in `kinds` appears once before any repeats; faults on one target
    never overlap. The same arguments always give the same schedule."""
    if duration_s <= warm_up_s + settle_s:
        raise ValueError(f"duration {duration_s:g} s leaves no room after warm-up and settling")
    if not kinds:
        raise ValueError("at least one fault kind is needed")
    rng = random.Random(seed)
    count = faults if faults is not None else max(1, int(duration_s // 8))
    order: list[type[Fault]] = []
    while len(order) < count:
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    busy: dict[str, list[tuple[float, float]]] = {}
    chosen: list[Fault] = []
    for kind in order[:count]:
        for _ in range(50):  # a few draws to find a free target and window
            fault = _draw(rng, kind, topology, warm_up_s, duration_s - settle_s)
            if fault is None:
                break
            windows = busy.setdefault(fault.target, [])
            start, end = fault.at_s, fault.at_s + fault.for_s
            if all(end + 0.5 <= s or start >= e + 0.5 for s, e in windows):
                windows.append((start, end))
                chosen.append(fault)
                break
    chosen.sort(key=lambda f: (f.at_s, f.target))
    return Schedule(seed, duration_s, tuple(chosen))


def _draw(
    rng: random.Random, kind: type[Fault], topology: Topology, start_s: float, end_s: float
) -> Fault | None:
    span = end_s - start_s
    lasts = {
        CutLink: (2.0, 8.0),
        PauseNode: (LEASE_TTL_S + 1.0, LEASE_TTL_S + 4.0),
        KillNode: (1.0, 5.0),
        KillEtcd: (1.0, 4.0),
        SkewClock: (3.0, 8.0),
    }[kind]
    for_s = _tenths(min(rng.uniform(*lasts), span * 0.8))
    at_s = max(start_s, _tenths(rng.uniform(start_s, end_s - for_s)))  # rounded down: fits
    names = topology.site_names
    if kind is CutLink:
        if len(names) < 2:
            return None
        a, b = rng.sample(sorted(names), 2)
        return CutLink(at_s, for_s, (min(a, b), max(a, b)))
    if kind is KillEtcd:
        return KillEtcd(at_s, for_s, rng.choice(names))
    node = rng.choice(topology.nodes)
    if kind is PauseNode:
        return PauseNode(at_s, for_s, node)
    if kind is KillNode:
        return KillNode(at_s, for_s, node)
    offset = rng.choice((-1, 1)) * rng.randint(100, 1500)
    return SkewClock(at_s, for_s, node, offset)


def _tenths(seconds: float) -> float:
    """Rounded down to a tenth of a second (schedules print and replay in tenths)."""
    return math.floor(seconds * 10) / 10
