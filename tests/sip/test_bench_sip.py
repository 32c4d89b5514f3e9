"""`callmesh bench sip --quick` runs SIPp against a node and ends with its JSON figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.sip.sipp import SIPP


@pytest.mark.slow
@pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")
def test_bench_sip_ends_with_calls_per_second_setup_p99_and_calls_per_core() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "node", "--log-level", "ERROR", "bench", "sip", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {
        "sip_calls_per_s",
        "sip_setup_ms_p99",
        "concurrent_sip_calls_per_core",
    }
    assert figures["sip_calls_per_s"] > 0
    # > 0 only when G.711 flowed both ways through the node (trunk leg <-> phone leg) unlost
    assert figures["concurrent_sip_calls_per_core"] > 0
    assert "flowing both ways" in result.stdout
