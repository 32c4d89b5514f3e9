"""Chaos runs end to end: a fresh LocalCluster per schedule (two in-house sites and a partner,
fast timers), load throughout, the schedule's faults, a heal, a quiet wait, the history, the
checker. `callmesh chaos` prints each schedule (with the seed that replays it) and ends with
one JSON line.

Links between sites are cut in the sites' own network namespaces when this process may build
them (root, `ip netns` works), else through the nodes' fault injection; the run says which
(`cut_mechanism`). Every node's registry is polled throughout, so I4's figure is the time from
the last heal to the first poll that found them all equal."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from chaos.checker import Violation, check, count
from chaos.client import Client
from chaos.collect import collect, wait_quiet
from chaos.convergence import RegistryWatch
from chaos.load import QUEUES_TOML, Load, plan_load
from chaos.nemesis import Nemesis
from chaos.schedule import Schedule, Topology, plan
from node.localcluster import DEFAULT_SITES, LocalCluster
from node.netns import unavailable

REGISTRY_BOUND_S = 10.0
"""I4: every registry must agree within this long after the last heal."""
QUIET_WITHIN_S = 45.0
VIOLATIONS_FILE = "violations.txt"
"""Written in each schedule's folder, beside the nodes' logs and data: violations and schedule."""


@dataclass(frozen=True, slots=True)
class Result:
    seed: int
    faults: dict[str, int]
    calls_placed: int
    calls_refused: int
    outcomes: dict[str, int]
    violations: tuple[Violation, ...]
    converged_after_s: float | None
    quiet: bool
    seconds: float
    checked: dict[str, int]
    """How much history the checker read: records, legs, reservations, slot events."""
    root: str = ""
    cut_mechanism: str = ""
    """How links were cut: "netns" (routes in the sites' namespaces) or "faults"."""
    report: str = ""
    """The violations file (VIOLATIONS_FILE in the run's folder), when the folder is kept."""


@dataclass(slots=True)
class Options:
    duration_s: float = 60.0
    faults: int | None = None
    agents_per_site: int = 2
    call_every_s: float = 0.7
    keep: bool = False
    root: Path | None = None
    say: Callable[[str], None] = print
    netns: bool | None = None
    """Cut links in network namespaces: None uses them when they are available, True insists."""


def credentials_of(cluster: LocalCluster) -> tuple[str, str] | None:
    """The admin's user and password when the cluster configures authentication."""
    passwords = getattr(getattr(cluster, "credentials", None), "passwords", None)
    if isinstance(passwords, dict) and "admin" in passwords:
        return "admin", str(passwords["admin"])
    return None


def topology_of(cluster: LocalCluster) -> Topology:
    by_site: dict[str, list[str]] = {}
    for node, plan_ in cluster.plans.items():
        by_site.setdefault(plan_.site.name, []).append(node)
    return Topology(tuple((site, tuple(nodes)) for site, nodes in by_site.items()))


def choose_netns(wanted: bool | None) -> tuple[bool, str]:
    """Whether to run the sites in network namespaces, and the line that says how links are cut;
    a ValueError when they are insisted on but unavailable."""
    why_not = unavailable() if wanted is not False else "not asked for"
    if why_not is None:
        return True, "cuts: network namespaces (blackhole routes between the sites' blocks)"
    if wanted:
        raise ValueError(f"network namespaces unavailable: {why_not}")
    return False, f"cuts: fault injection (POST /debug/faults), since namespaces: {why_not}"


async def run_schedule(seed: int, options: Options) -> Result:
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        options.say(line)

    started_at = time.monotonic()
    netns, how = choose_netns(options.netns)
    base = options.root or Path(tempfile.mkdtemp(prefix="callmesh-chaos-"))
    root = base / f"seed-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    timeout = aiohttp.ClientTimeout(total=2)
    async with contextlib.AsyncExitStack() as stack:
        cluster = await _start_cluster(stack, root, say, netns)
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        addresses = {node: p.http for node, p in cluster.plans.items()}
        client = Client(addresses, http, credentials_of(cluster))
        nodes = list(cluster.plans)
        await _all_ready(client, nodes, 30.0)
        topology = topology_of(cluster)
        schedule: Schedule = plan(seed, topology, options.duration_s, faults=options.faults)
        say(schedule.describe())
        say(how)
        load_plan = replace(
            plan_load(dict(topology.sites), options.agents_per_site, seed=seed),
            call_every_s=options.call_every_s,
        )
        load = Load(client, load_plan, seed)
        nemesis = Nemesis(cluster, client, say)
        stop = asyncio.Event()
        async with RegistryWatch(client, nodes) as watch:
            driving = asyncio.create_task(load.run(stop))
            started = time.monotonic()
            try:
                await nemesis.run(schedule, started)
                await asyncio.sleep(max(0.0, started + schedule.duration_s - time.monotonic()))
            finally:
                await nemesis.heal_all()
                stop.set()
                await driving
            converged = await watch.converged_after(nemesis.last_heal, REGISTRY_BOUND_S)
        say(
            f"load stopped: {len(load.stats.placed)} calls placed; registries equal "
            f"{converged} s after the last heal; waiting for quiet"
        )
        quiet = await wait_quiet(client, nodes, load.stats.placed, QUIET_WITHIN_S)
        history = await collect(
            cluster,
            client,
            load.stats.placed,
            load.capacities,
            REGISTRY_BOUND_S,
            load.stats.events,
            converged,
        )
    violations = tuple(check(history))
    outcomes = Counter(r.outcome or "none" for r in history.records)
    for violation in violations:
        say(f"VIOLATION seed={seed} {violation}")
    report = root / VIOLATIONS_FILE
    report.write_text(violations_report(seed, said, violations))
    keep = options.keep or bool(violations)
    if not keep and options.root is None:
        shutil.rmtree(base, ignore_errors=True)
    return Result(
        seed=seed,
        faults=dict(nemesis.injected),
        calls_placed=len(load.stats.placed),
        calls_refused=load.stats.refused,
        outcomes=dict(outcomes),
        violations=violations,
        converged_after_s=history.converged_after_s,
        quiet=quiet,
        seconds=round(time.monotonic() - started_at, 1),
        checked={
            "records": len(history.records),
            "legs": len(history.legs),
            "reservations": len(history.reservations),
            "slot_events": len(history.slots),
            "agent_events": len(history.agent_events),
        },
        root=str(root) if keep else "",
        cut_mechanism=nemesis.mechanism,
        report=str(report) if keep or options.root is not None else "",
    )


def violations_report(seed: int, said: list[str], violations: tuple[Violation, ...]) -> str:
    """The text of a run's violations file: the violations (or none), then every line the run
    said (the schedule, each fault as the nemesis applied it), so a failure can be read after
    the run without its output."""
    head = [f"seed {seed}: {len(violations)} violations"]
    head += [f"VIOLATION {v}" for v in violations] or ["violations: none"]
    return "\n".join([*head, "", "-- what the run said --", *said, ""])


async def _start_cluster(
    stack: contextlib.AsyncExitStack,
    root: Path,
    say: Callable[[str], None],
    netns: bool,
    attempts: int = 3,
) -> LocalCluster:
    """A started cluster; a start that fails (a port taken meanwhile: the planned ports were
    free only a moment before) is tried again with new ports, in a new folder."""
    for attempt in range(1, attempts + 1):
        folder = root if attempt == 1 else root / f"attempt-{attempt}"
        cluster = LocalCluster(
            list(DEFAULT_SITES), folder, fast=True, queues_toml=QUEUES_TOML, netns=netns
        )
        try:
            return await stack.enter_async_context(cluster)
        except RuntimeError as error:
            if attempt == attempts:
                raise
            say(f"cluster start failed ({error}); trying again")
    raise AssertionError("unreachable")


async def _all_ready(client: Client, nodes: list[str], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if all([(await client.get(n, "/readyz"))[0] == 200 for n in nodes]):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the cluster was not ready within {within_s:g} s")


async def run_many(schedules: int, seed: int, options: Options) -> list[Result]:
    results = []
    for i in range(schedules):
        this = seed + i
        options.say(
            f"== schedule {i + 1}/{schedules} seed {this} (replay: callmesh chaos "
            f"--schedules 1 --seed {this} --duration {options.duration_s:g}"
            + (f" --faults {options.faults})" if options.faults is not None else ")")
        )
        result = await run_schedule(this, options)
        options.say(
            f"== seed {this}: {sum(result.faults.values())} faults, {result.calls_placed} calls, "
            f"{len(result.violations)} violations, registries equal "
            f"{result.converged_after_s} s after the last heal, cuts by {result.cut_mechanism}, "
            f"{result.seconds} s"
            + (f"; kept {result.root}" if result.root else "")
            + (f"; violations in {result.report}" if result.violations and result.report else "")
        )
        results.append(result)
    return results


def summary(results: list[Result], seed: int) -> dict[str, object]:
    faults: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    violations: list[Violation] = []
    for result in results:
        faults.update(result.faults)
        outcomes.update(result.outcomes)
        violations += result.violations
    return {
        "schedules": len(results),
        "seed": seed,
        "faults_injected": sum(faults.values()),
        "faults_by_kind": dict(sorted(faults.items())),
        "calls_placed": sum(r.calls_placed for r in results),
        "calls_refused": sum(r.calls_refused for r in results),
        "outcomes": dict(sorted(outcomes.items())),
        "violations": count(violations),
        "violations_total": len(violations),
        "failing_seeds": [r.seed for r in results if r.violations],
        "registry_equal_after_s": [r.converged_after_s for r in results],
        "registry_bound_s": REGISTRY_BOUND_S,
        "cut_mechanism": sorted({r.cut_mechanism for r in results}),
        "quiet": all(r.quiet for r in results),
        "checked": dict(sum((Counter(r.checked) for r in results), Counter())),
    }
