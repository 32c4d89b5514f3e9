"""docs/BENCHMARKS.md rewriting after `callmesh bench` (pure), and the cluster figures."""

from __future__ import annotations

from pathlib import Path

from loadtest.bench_cluster import figures
from loadtest.benchdoc import CLUSTER, SUMMARY, BenchResult, fmt, rewrite

PAGE = """# Benchmarks

Intro line one.
Intro line two.

## Registry

Command: `.venv/bin/callmesh bench registry` (2026-01-02)

| figure | measured | target | what it is |
|---|---|---|---|
| merges_per_s | 465,163 | >= 200,000 | entries merged per second |
| bytes_per_update | 116.9 | <= 128 | mean size |

Prose about the registry stays.
"""


def test_rewrite_keeps_the_text_and_updates_figures() -> None:
    results = [
        BenchResult("registry", {"merges_per_s": 500_000.0}, {"merges_per_s": (">=", 200_000)}),
        BenchResult("sip", {}, {}, error="RuntimeError: sipp not found"),
    ]
    page = rewrite(PAGE, results, "2026-11-28", "A note.", "## Cluster scenario\n\nFigures.")
    assert "Prose about the registry stays." in page
    assert "| merges_per_s | 500,000 | >= 200,000 | entries merged per second |" in page
    assert "| bytes_per_update | 116.9 | <= 128 | mean size |" in page  # not run: unchanged
    assert "Command: `.venv/bin/callmesh bench registry` (2026-11-28)" in page
    summary = page.split(SUMMARY[0])[1].split(SUMMARY[1])[0]
    assert "| registry | merges_per_s | 500,000 | >= 200,000 | yes |" in summary
    assert "| sip | (failed) | RuntimeError: sipp not found |" in summary
    assert page.index(SUMMARY[0]) > page.index("Intro line two.")
    assert page.index(SUMMARY[0]) < page.index("## Registry")
    assert CLUSTER[0] + "\n## Cluster scenario" in page
    # a second run replaces the generated blocks instead of adding more
    again = rewrite(page, results, "2026-11-29", "A note.", "## Cluster scenario\n\nNew.")
    assert again.count(SUMMARY[0]) == 1
    assert again.count(CLUSTER[0]) == 1
    assert "New." in again
    assert "Figures." not in again


def test_fmt() -> None:
    assert fmt(465163.0) == "465,163"
    assert fmt(116.9) == "116.9"
    assert fmt(0.25) == "0.25"
    assert fmt(0) == "0"
    assert fmt(1234.56) == "1,234.6"


def test_the_page_keeps_its_shape() -> None:
    page = Path(__file__).parents[2] / "docs" / "BENCHMARKS.md"
    text = page.read_text()
    assert rewrite(text, [], "2026-11-28", "A note.").count("## ") >= text.count("## ")


def _report(level: float, lost: int = 0) -> dict[str, object]:
    return {
        "scenario": {"calls_per_s": 21.0, "agents": 300},
        "measured": {"service_level": level, "asa_s": 0.5, "abandonment": 0.01, "occupancy": 0.95},
        "system": {
            "routing_decision_ms": {"p99_ms": 2.0},
            "offer_to_answer_ms": {"p50": 300.0},
            "arrival_to_offer_ms": {"p50": 40.0},
            "cross_site_share": 0.6,
            "refused_offers": 10,
            "lost_calls": lost,
            "double_bookings": 0,
        },
        "yardstick": {
            "pooled": {"service_level": 0.95, "corrected_service_level": 0.99},
            "curve": [
                {"t_s": 1.0, "measured": 0.9, "pooled": 0.8, "pooled_corrected": 0.88},
                {"t_s": 2.0, "measured": 0.97, "pooled": 0.9, "pooled_corrected": 0.99},
                {"t_s": 3.0, "measured": None, "pooled": 0.1, "pooled_corrected": 0.1},
            ],
        },
    }


def test_cluster_figures() -> None:
    found = figures(_report(0.97), _report(0.6, lost=1))
    # "within 3 points" is measured against the corrected prediction; plain Erlang beside it
    assert found["cluster_predicted_service_level_pct"] == 99.0
    assert found["cluster_sl_error_pts"] == 2.0
    assert found["cluster_sl_error_pts_max"] == 2.0
    assert found["cluster_predicted_plain_service_level_pct"] == 95.0
    assert found["cluster_sl_error_plain_pts"] == 2.0
    assert found["cluster_sl_error_plain_pts_max"] == 10.0
    assert found["cluster_pooling_gain_pts"] == 37.0
    assert found["cluster_lost_calls"] == 1
    assert "cluster_pooling_gain_pts" not in figures(_report(0.97), None)


TARGETS = {"fake_per_s": (">=", 10.0)}


def fake_bench() -> dict[str, float]:
    return {"fake_per_s": 12.5}


def broken_bench() -> dict[str, float]:
    raise RuntimeError("no such tool")


def test_run_all_goes_on_past_a_failure_and_rewrites_the_page(tmp_path: Path) -> None:
    from loadtest.benchall import run_all

    page = tmp_path / "BENCHMARKS.md"
    page.write_text(PAGE)
    here = "tests.loadtest.test_benchdoc"
    benchmarks = {"fake": [(here, "fake_bench")], "broken": [(here, "broken_bench")]}
    lines: list[str] = []
    results = run_all(benchmarks, page=page, out=lines.append)
    assert [(r.name, bool(r.error)) for r in results] == [("broken", True), ("fake", False)]
    text = page.read_text()
    assert "| fake | fake_per_s | 12.5 | >= 10 | yes | `.venv/bin/callmesh bench fake` |" in text
    assert "| broken | (failed) | RuntimeError: no such tool |" in text
    assert "Prose about the registry stays." in text
    # --quick never rewrites the page
    page.write_text(PAGE)
    run_all(benchmarks, {}, page=page, out=lines.append)
    assert page.read_text() == PAGE
