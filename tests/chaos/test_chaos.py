"""Chaos schedules end to end: a short one by default, longer ones marked slow. The checker must
find no violation of I1-I4 and a quiet end. Where network namespaces can be built (root: CI),
the links are cut there; elsewhere through the nodes' fault injection."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.runner import VIOLATIONS_FILE, Options, choose_netns, run_schedule, violations_report
from node.netns import unavailable

NETNS = unavailable() is None


async def test_a_short_schedule_of_every_fault_kind_breaks_no_invariant(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await run_schedule(
        7, Options(duration_s=30, faults=5, root=tmp_path, say=lines.append)
    )
    assert result.violations == (), "\n".join(lines)
    assert sum(result.faults.values()) >= 4, lines
    assert result.calls_placed > 10
    assert result.checked["reservations"] > 0  # the reservation logs were written and read
    assert result.checked["slot_events"] > 0  # and the etcd history of the slots
    assert result.converged_after_s is not None
    assert result.converged_after_s <= 10.0
    assert lines[0].startswith("schedule seed=7")
    assert result.cut_mechanism == ("netns" if NETNS else "faults")
    report = (tmp_path / "seed-7" / VIOLATIONS_FILE).read_text()
    assert result.report == str(tmp_path / "seed-7" / VIOLATIONS_FILE)
    assert report.startswith("seed 7: 0 violations\nviolations: none\n"), report
    assert "schedule seed=7" in report
    assert lines[1].startswith("cuts: network namespaces" if NETNS else "cuts: fault injection")
    assert result.faults.get("CutLink", 0) >= 1, lines  # a cut ran, by that mechanism


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_longer_schedules_break_no_invariant(tmp_path: Path, seed: int) -> None:
    lines: list[str] = []
    result = await run_schedule(seed, Options(duration_s=90, root=tmp_path, say=lines.append))
    assert result.violations == (), "\n".join(lines)


def test_the_violations_file_names_each_violation_before_the_schedule() -> None:
    from chaos.checker import Violation

    found = (
        Violation("END", "site-b-agent1", "left reserved with 1 calls (as site-a-n1 sees it)"),
    )
    text = violations_report(13, ["schedule seed=13 duration=90s 11 faults", "  5.3s pause"], found)
    lines = text.splitlines()
    assert lines[0] == "seed 13: 1 violations"
    assert lines[1] == (
        "VIOLATION END site-b-agent1: left reserved with 1 calls (as site-a-n1 sees it)"
    )
    assert lines.index("schedule seed=13 duration=90s 11 faults") > 1
    assert "violations: none" in violations_report(13, [], ())


def test_a_run_falls_back_to_fault_injection_or_refuses_when_namespaces_are_insisted_on() -> None:
    assert choose_netns(False) == (
        False,
        "cuts: fault injection (POST /debug/faults), since namespaces: not asked for",
    )
    if NETNS:
        assert choose_netns(None)[0]
        assert choose_netns(True)[0]
    else:
        assert choose_netns(None)[0] is False
        with pytest.raises(ValueError, match="network namespaces unavailable"):
            choose_netns(True)


def test_the_command_refuses_a_run_without_schedules_or_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from node.cli import parser

    for argv in (["chaos", "--schedules", "0"], ["chaos", "--duration", "5"]):
        args = parser().parse_args(argv)
        assert args.run(args) == 2
    assert "--schedules must be >= 1" in capsys.readouterr().err
