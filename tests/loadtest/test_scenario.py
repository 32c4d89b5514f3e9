"""Scenario files: the shipped ones parse; bad ones fail with the field named."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadtest.scenario import (
    Arrivals,
    Distribution,
    ScenarioError,
    load_scenario,
    parse_scenario,
    queue_for,
    queues_toml,
)
from node.queues import parse_queues

SCENARIOS = Path(__file__).parents[2] / "loadtest" / "scenarios"

MINIMAL = """
[scenario]
name = "tiny"
duration_s = 10
seed = 1

[[sites]]
name = "site-a"
trust = "inhouse"

[[agents]]
site = "site-a"
count = 2
skills = { support = 3 }

[queues.support]
skills = { support = 1 }

[[arrivals]]
queue = "support"
site = "site-a"
rate_per_s = 1

[handle]
distribution = "exponential"
mean_s = 5
"""


def test_shipped_scenarios_parse() -> None:
    three = load_scenario(SCENARIOS / "three-sites.toml")
    assert three.total_agents >= 300
    assert three.total_rate >= 20
    assert three.duration_s - three.warmup_s >= 120
    assert len(three.sites) == 3
    wan = load_scenario(SCENARIOS / "three-sites-wan.toml")
    assert wan.wan_delay_ms == 40
    assert [(e.island, e.for_s) for e in wan.events] == [(("partner-c",), 20.0)]
    assert wan.agents == three.agents
    assert wan.arrivals == three.arrivals
    smoke = load_scenario(SCENARIOS / "smoke.toml")
    assert smoke.duration_s <= 20


def test_minimal_defaults() -> None:
    scenario = parse_scenario(MINIMAL)
    assert scenario.patience == Distribution("none")
    assert scenario.warmup_s == 0
    assert scenario.wan_delay_ms == 0
    assert scenario.events == ()
    assert scenario.agents[0].tier == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("duration_s = 10", "duration_s = -1"), "scenario.duration_s"),
        (("duration_s = 10", 'duration_s = "ten"'), "scenario.duration_s"),
        (("seed = 1", "seed = 1\nwarmup_s = 10"), "scenario.warmup_s"),
        (("seed = 1", "seed = 1\nspeed = 3"), "scenario.speed"),
        (('trust = "inhouse"', 'trust = "friendly"'), "sites[0].trust"),
        (("count = 2", "count = 0"), "agents[0].count"),
        (('site = "site-a"\ncount', 'site = "site-z"\ncount'), "agents[0].site"),
        (("skills = { support = 3 }", "skills = { support = 11 }"), "agents[0].skills.support"),
        (('queue = "support"', 'queue = "sales"'), "arrivals[0].queue"),
        (("rate_per_s = 1", "rate_per_s = 0"), "arrivals[0].rate_per_s"),
        (('distribution = "exponential"', 'distribution = "gamma"'), "handle.distribution"),
        (('distribution = "exponential"', 'distribution = "lognormal"'), "handle.sigma"),
        (("mean_s = 5", "mean_s = 5\nsigma = 1"), "handle.sigma"),
        (("[handle]", "[wan]\ndelay_ms = -4\n[handle]"), "wan.delay_ms"),
        (
            ("[handle]", '[[events]]\nkind = "partition"\nisland = ["site-a"]\nat_s = 1\n[handle]'),
            "events[0].island",
        ),
        (
            ("[handle]", '[[events]]\nkind = "flood"\nisland = ["site-a"]\nat_s = 1\n[handle]'),
            "events[0].kind",
        ),
        (
            ("[handle]", '[patience]\ndistribution = "none"\nmean_s = 3\n[handle]'),
            "patience.mean_s",
        ),
    ],
)
def test_errors_name_the_field(change: tuple[str, str], field: str) -> None:
    old, new = change
    assert old in MINIMAL
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(MINIMAL.replace(old, new, 1))
    assert raised.value.field == field
    assert str(raised.value).startswith(field)


def test_missing_sections_and_bad_toml() -> None:
    with pytest.raises(ScenarioError, match="handle: missing"):
        parse_scenario(MINIMAL.split("[handle]")[0])
    with pytest.raises(ScenarioError, match="not valid TOML"):
        parse_scenario("[scenario")
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        load_scenario(Path("/nonexistent/scenario.toml"))


def test_lognormal_keeps_its_mean() -> None:
    rng = random.Random(3)
    lognormal = Distribution("lognormal", 10.0, 0.8)
    samples = [lognormal.sample(rng) for _ in range(40_000)]
    assert sum(samples) / len(samples) == pytest.approx(10.0, rel=0.03)


def test_queue_files_pooled_and_siloed() -> None:
    scenario = load_scenario(SCENARIOS / "three-sites.toml")
    pooled = parse_queues(queues_toml(scenario, siloed=False))
    assert set(pooled) == {"support"}
    assert pooled["support"].steps[0].sites is None
    siloed = parse_queues(queues_toml(scenario, siloed=True))
    assert set(siloed) == {f"support-{s.name}" for s in scenario.sites}
    assert siloed["support-site-b"].steps[0].sites == frozenset({"site-b"})
    arrival = Arrivals("support", "site-b", 1.0)
    assert queue_for(arrival, siloed=True) == "support-site-b"
    assert queue_for(arrival, siloed=False) == "support"
