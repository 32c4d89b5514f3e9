"""`callmesh bench cluster`: the three-site load-test scenario, pooled and siloed, against a local
cluster it starts (loadtest/run.py), through the public API only; its figures beside the Erlang
prediction. About 12 minutes (two runs of 240 s of traffic plus the drain and start-up).

The yardstick for "within 3 points" is the prediction corrected for the busy time's variability
(loadtest/erlang.py, general_prediction: ring and wrap-up are constant, so the busy time varies
less than the exponential that plain Erlang A/C assume); the plain figures are kept beside."""

from __future__ import annotations

import asyncio
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.run import Options
from loadtest.run import run as run_scenario
from loadtest.scenario import load_scenario

SCENARIOS = Path(__file__).parent / "scenarios"
SCENARIO = "three-sites.toml"
SILOED = True
"""Also run the siloed form (each site serves only its own callers) to measure the gain."""
TARGETS = {
    "cluster_lost_calls": ("<=", 0),
    "cluster_double_bookings": ("<=", 0),
    "cluster_sl_error_pts": ("<=", 3.0),
    "cluster_sl_error_pts_max": ("<=", 3.0),
    "cluster_pooling_gain_pts": (">=", 5.0),
}


def figures(pooled: dict[str, Any], siloed: dict[str, Any] | None) -> dict[str, float]:
    """The benchmark's figures from the pooled report (and the siloed one, when run)."""
    measured, system, yardstick = pooled["measured"], pooled["system"], pooled["yardstick"]
    level = measured["service_level"] or 0.0
    plain = yardstick["pooled"]["service_level"]
    predicted = yardstick["pooled"]["corrected_service_level"]
    curve = [c for c in yardstick.get("curve", []) if c["measured"] is not None]

    def largest_gap(key: str) -> float:
        # the largest gap over the curve (T from 1 s up, the scenario's T among them)
        return round(max((abs(100 * (c["measured"] - c[key])) for c in curve), default=0.0), 2)

    out: dict[str, float] = {
        "cluster_calls_per_s": pooled["scenario"]["calls_per_s"],
        "cluster_agents": pooled["scenario"]["agents"],
        "cluster_service_level_pct": round(100 * level, 2),
        "cluster_predicted_service_level_pct": round(100 * predicted, 2),
        "cluster_predicted_plain_service_level_pct": round(100 * plain, 2),
        "cluster_sl_error_pts": round(abs(100 * (level - predicted)), 2),
        "cluster_sl_error_pts_max": largest_gap("pooled_corrected"),
        "cluster_sl_error_plain_pts": round(abs(100 * (level - plain)), 2),
        "cluster_sl_error_plain_pts_max": largest_gap("pooled"),
        "cluster_asa_s": measured["asa_s"] or 0.0,
        "cluster_abandonment_pct": round(100 * (measured["abandonment"] or 0.0), 2),
        "cluster_occupancy_pct": round(100 * (measured["occupancy"] or 0.0), 2),
        "cluster_routing_decision_ms_p99": system["routing_decision_ms"]["p99_ms"] or 0.0,
        "cluster_offer_to_answer_ms_p50": system["offer_to_answer_ms"]["p50"] or 0.0,
        "cluster_arrival_to_offer_ms_p50": system["arrival_to_offer_ms"]["p50"] or 0.0,
        "cluster_cross_site_pct": round(100 * (system["cross_site_share"] or 0.0), 2),
        "cluster_refused_offers": system["refused_offers"],
        "cluster_lost_calls": system["lost_calls"],
        "cluster_double_bookings": system["double_bookings"],
    }
    if siloed is not None:
        alone = siloed["measured"]["service_level"] or 0.0
        out["cluster_siloed_service_level_pct"] = round(100 * alone, 2)
        out["cluster_pooling_gain_pts"] = round(100 * (level - alone), 2)
        out["cluster_siloed_abandonment_pct"] = round(
            100 * (siloed["measured"]["abandonment"] or 0.0), 2
        )
        out["cluster_lost_calls"] += siloed["system"]["lost_calls"]
        out["cluster_double_bookings"] += siloed["system"]["double_bookings"]
    return out


def _quiet(line: str) -> None:
    """The reports' text is left out: the benchmark prints its figures."""


async def _measure(root: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    scenario = load_scenario(SCENARIOS / SCENARIO)
    pooled = await run_scenario(scenario, Options(out=root / "pooled", progress=False), _quiet)
    siloed = None
    if SILOED:
        options = Options(siloed=True, out=root / "siloed", progress=False)
        siloed = await run_scenario(scenario, options, _quiet)
    return pooled, siloed


last: tuple[dict[str, Any], dict[str, Any] | None] | None = None
"""The last run's reports (pooled, siloed), for the page's section (loadtest/benchall.py)."""


def run(out: Callable[[str], None] = print) -> dict[str, float]:
    global last
    with tempfile.TemporaryDirectory(prefix="callmesh-bench-cluster-") as root:
        pooled, siloed = asyncio.run(_measure(Path(root)))
    last = (pooled, siloed)
    found = figures(pooled, siloed)
    scenario = pooled["scenario"]
    out(
        f"cluster scenario {scenario['name']}: {scenario['agents']} agents at "
        f"{len(scenario['sites'])} sites, {scenario['calls_per_s']:g} calls/s for "
        f"{scenario['duration_s']:g} s, T = {scenario['service_level_s']:g} s, pooled"
        + (" and siloed" if siloed is not None else "")
    )
    for name, value in found.items():
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            op, bound = target
            met = value >= bound if op == ">=" else value <= bound
            verdict = f"   target {op} {bound:g}  {'ok' if met else 'MISSED'}"
        out(f"  {name:36} {value:>10,}{verdict}")
    return found


def section(pooled: dict[str, Any], siloed: dict[str, Any] | None, date: str) -> str:
    """The page's section about the cluster scenario, from the run's reports."""
    s, y = pooled["scenario"], pooled["yardstick"]
    found = figures(pooled, siloed)
    lines = [
        "## Cluster scenario",
        "",
        f"Command: `.venv/bin/callmesh bench cluster` ({date}); one run by hand: "
        f"`.venv/bin/callmesh loadtest loadtest/scenarios/{SCENARIO} [--siloed]`",
        "",
        f"{s['agents']} agents at {len(s['sites'])} sites on {s['nodes']} node processes (an etcd "
        f"per site), {s['calls_per_s']:g} calls/s (Poisson) for {s['duration_s']:g} s, the first "
        f"{s['warmup_s']:g} s not measured; talk {s['handle']['kind']}, mean "
        f"{s['handle']['mean_s']:g} s; ring {s['ring_delay_s']:g} s; wrap-up {s['wrap_up_s']:g} s; "
        f"patience {s['patience']['kind']}, mean {s['patience']['mean_s']:g} s; T = "
        f"{s['service_level_s']:g} s. Everything through the "
        "public HTTP API, the load generator in one process on the same machine. Siloed: the same "
        "traffic, each site serving only its own callers (a queue per site whose one step names "
        "only that site).",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
    ]
    for name, value in found.items():
        target = TARGETS.get(name)
        lines.append(f"| {name} | {value:,} | {f'{target[0]} {target[1]:g}' if target else ''} |")
    lines += [
        "",
        f"{y['model']} yardstick: arrival rate {y.get('rate_per_s', 0):g}/s as measured in the "
        f"window (planned {y.get('planned_rate_per_s', 0):g}/s; near full occupancy a 2 % busier "
        "Poisson draw moves the predicted service level at T = 1 s by 4-10 points), "
        f"h = {y['handle_s']:g} s (measured agent busy time per offer that reached an agent, "
        f"offer to free), T shortened by the offer-to-answer time ({y['offer_to_answer_s']:g}"
        " s). Corrected: the same model for a busy time whose squared coefficient of variation is "
        f"Cs^2 = {y['handle_scv']:g} (the talk's variance over h^2; ring and wrap-up are constant; "
        f"the agents' own busy times gave {_num(y.get('measured_handle_scv'))}): P(wait) kept, "
        "waits scaled by (1 + Cs^2) / 2 (Allen-Cunneen / Koellerstroem heavy traffic; with "
        "abandonment, Erlang A at patience / z and T / z; loadtest/erlang.py). The figures "
        "`cluster_sl_error_pts(_max)` compare with the corrected prediction, `_plain_` with "
        f"{y['model']}. Service level against T:",
        "",
        f"| T | measured (pooled) | corrected pooled | {y['model']} pooled | Erlang C pooled | "
        "corrected siloed |" + (" measured siloed |" if siloed else ""),
        "|---|---|---|---|---|---|" + ("---|" if siloed else ""),
    ]
    siloed_curve = {c["t_s"]: c["measured"] for c in siloed["yardstick"]["curve"]} if siloed else {}
    for c in y["curve"]:
        row = (
            f"| {c['t_s']:g} s | {_pct(c['measured'])} | {_pct(c['pooled_corrected'])} | "
            f"{_pct(c['pooled'])} | {_pct(c['pooled_erlang_c'])} | {_pct(c['siloed_corrected'])} |"
        )
        if siloed:
            row += f" {_pct(siloed_curve.get(c['t_s']))} |"
        lines.append(row)
    return "\n".join(_wrap(line) for line in lines) + "\n"


def _wrap(line: str) -> str:
    """Prose lines at the page's width; table rows as they are."""
    return line if line.startswith("|") else textwrap.fill(line, 100, break_on_hyphens=False)


def _pct(value: object) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else "-"


def _num(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"
