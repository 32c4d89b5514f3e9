"""`callmesh loadtest` end to end against a real LocalCluster: the smoke scenario (short), and the
same with a WAN delay and a partition (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from loadtest.run import LoadTestError, Options, check_loopback, command, run
from loadtest.scenario import Partition, load_scenario

SMOKE = Path(__file__).parents[2] / "loadtest" / "scenarios" / "smoke.toml"
KEYS = {
    "scenario",
    "window_s",
    "measured",
    "per_site",
    "system",
    "yardstick",
    "islands",
    "timeline",
    "definitions",
    "checks",
}


def _check_report(report: dict[str, object], out: Path) -> None:
    assert set(report) == KEYS
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.txt").read_text()
    for name in ("service level", "ASA", "AHT", "abandonment", "occupancy", "longest wait"):
        assert name in text
    assert "lost calls             0" in text


async def test_smoke_scenario(tmp_path: Path) -> None:
    scenario = load_scenario(SMOKE)
    report = await run(scenario, Options(out=tmp_path, progress=False), out=lambda _: None)
    _check_report(report, tmp_path)
    checks = report["checks"]
    assert checks == {"lost_calls": 0, "double_bookings": 0, "passed": True}
    measured, system = report["measured"], report["system"]
    assert measured["offered"] > 10
    assert measured["answered"] + measured["abandoned"] == measured["offered"]
    assert 0 <= measured["service_level"] <= 1
    assert 0 < measured["occupancy"] <= 1
    assert system["routing_decision_ms"]["count"] > 0
    assert system["offer_to_answer_ms"]["mean"] >= scenario.ring_delay_s * 1000
    assert system["calls_refused"] == 0
    yardstick = report["yardstick"]
    assert yardstick["model"] == "Erlang A"
    # beside plain Erlang A, the prediction corrected for the busy time's variability (Cs^2 < 1:
    # the ring and the wrap-up are constant), never below plain at the scenario's T
    assert 0 < yardstick["handle_scv"] < 1
    pooled = yardstick["pooled"]
    assert pooled["corrected_service_level"] >= pooled["service_level"] - 1e-4
    assert {"pooled_corrected", "siloed_corrected"} <= set(yardstick["curve"][0])
    assert "corrected for Cs^2" in (tmp_path / "report.txt").read_text()
    assert set(yardstick["siloed"]) == {"site-a", "partner-c"}
    assert set(report["per_site"]) == {"site-a", "partner-c"}


@pytest.mark.slow
async def test_smoke_with_wan_and_a_partition(tmp_path: Path) -> None:
    scenario = dataclasses.replace(
        load_scenario(SMOKE),
        wan_delay_ms=30.0,
        events=(Partition(("partner-c",), 5.0, 4.0),),
    )
    report = await run(scenario, Options(out=tmp_path, progress=False), out=lambda _: None)
    _check_report(report, tmp_path)
    assert report["checks"]["passed"]
    (island,) = report["islands"]
    assert island["island"] == ["partner-c"]
    assert island["to_s"] - island["from_s"] == pytest.approx(4.0, abs=0.5)
    assert report["scenario"]["wan_delay_ms"] == 30.0


def test_loopback_only() -> None:
    assert check_loopback("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert check_loopback("localhost:81") == "http://localhost:81"
    for url in ("http://10.1.2.3:8080", "http://example.org:80", "http://127.0.0.1"):
        with pytest.raises(LoadTestError):
            check_loopback(url)


def test_command_refuses_a_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\nduration_s = 0\nseed = 1\n')
    assert command(bad) == 2
    assert "agents: missing" in capsys.readouterr().err
    assert command(SMOKE, url="http://192.0.2.1:80") == 2
