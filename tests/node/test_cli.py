"""The `callmesh` command, run as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

CALLMESH = [sys.executable, "-c", "from node.cli import main; main()"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_starts_an_etcd_per_site_and_ctrl_c_stops_everything() -> None:
    process = subprocess.Popen(
        [*CALLMESH, "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("cluster up"):
            break
    text = "".join(lines)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
    assert [line.split(":")[0] for line in lines[:3]] == ["site-a", "site-b", "partner-c"]
    nodes = re.findall(r"^node (\S+) site (\S+) http ", text, re.MULTILINE)
    assert [site for _, site in nodes] == ["site-a", "site-a", "site-b", "site-b", "partner-c"]
    assert len(pids) == 3 + 5
    assert all(alive(pid) for pid in pids)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in pids)


def test_bad_arguments_get_a_clear_error() -> None:
    result = subprocess.run([*CALLMESH, "bench", "nope"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr


EXPECTED_FIGURES = {
    "registry": {"merges_per_s", "decode_merge_per_s", "bytes_per_update", "full_sync_10k_ms"},
    "gossip": {
        "converge_site_ms_p50",
        "converge_site_ms_p99",
        "converge_cross_site_ms_p50",
        "converge_cross_site_ms_p99",
        "heal_converge_ms",
        "gossip_bytes_per_s_per_node",
    },
    "routing": {
        "decision_us_p50",
        "decision_us_p99",
        "reserve_ms_p50_site",
        "reserve_ms_p99_site",
        "reserve_ms_p50_cross",
        "reserve_ms_p99_cross",
        "calls_routed_per_s",
    },
    "media": {
        "bridged_calls_per_core_passthrough",
        "bridged_calls_per_core_transcode",
        "bridged_calls_per_core_stock_aiortc",
        "cpu_ms_per_call_second",
        "setup_ms_p50",
        "setup_ms_p99",
        "setup_ms_p99_burst",
        "passthrough_calls_measured",
        "passthrough_node_cpu_percent",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_each_benchmark_ends_with_one_json_line_of_its_figures(name: str) -> None:
    result = subprocess.run(
        [*CALLMESH, "--log-level", "ERROR", "bench", name, "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == EXPECTED_FIGURES[name]
    assert all(isinstance(v, int | float) and v > 0 for v in figures.values())
