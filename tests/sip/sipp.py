"""Running SIPp (Debian sip-tester) from the tests: one scenario, its exit code and its log."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import sip
from node.etcd_server import free_port

SCENARIOS = Path(sip.__file__).parent / "scenarios"
SIPP = shutil.which("sipp")
BIND_FAILED = 254  # SIPp's exit code when it cannot bind a socket


@dataclass(frozen=True, slots=True)
class SippRun:
    code: int  # 0: every call succeeded; 1: some failed; 97/99: SIPp itself failed
    output: str
    messages: str  # the SIP messages SIPp sent and received (-trace_msg)


async def run_sipp(
    scenario: str,
    target: str,
    work: Path,
    *,
    service: str = "+4930100",
    pause_ms: int = 500,
    calls: int = 1,
    timeout_s: float = 30,
    local_ip: str = "127.0.0.1",
    local_port: int = 0,
    extra: tuple[str, ...] = (),
) -> SippRun:
    """Run `sip/scenarios/<scenario>.xml` against `target` (host:port) until it ends; with
    `target` "" SIPp is the server (UAS) and `local_port` is where it listens."""
    for _ in range(3):
        run = await _run_once(
            scenario,
            target,
            work,
            service=service,
            pause_ms=pause_ms,
            calls=calls,
            timeout_s=timeout_s,
            local_ip=local_ip,
            local_port=local_port,
            extra=extra,
        )
        if run.code != BIND_FAILED or local_port:
            return run  # 254: a port picked as free was taken meanwhile; pick others
    return run


async def _run_once(
    scenario: str,
    target: str,
    work: Path,
    *,
    service: str,
    pause_ms: int,
    calls: int,
    timeout_s: float,
    local_ip: str,
    local_port: int,
    extra: tuple[str, ...],
) -> SippRun:
    assert SIPP is not None, "sipp is not installed (Debian package sip-tester, scripts/setup.sh)"
    log = work / f"{scenario}-{free_port()}.msg"
    args = [
        SIPP,
        "-sf",
        str(SCENARIOS / f"{scenario}.xml"),
        *([target] if target else []),
        "-m",
        str(calls),
        "-i",
        local_ip,
        "-p",
        str(local_port or free_port()),
        "-mi",
        local_ip,
        "-mp",
        str(free_port()),
        "-s",
        service,
        "-d",
        str(pause_ms),
        "-timeout",
        f"{int(timeout_s)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_msg",
        "-message_file",
        str(log),
        *extra,
    ]
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=work,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout_s + 10)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    messages = log.read_text(errors="replace") if log.exists() else ""
    assert process.returncode is not None
    return SippRun(process.returncode, out.decode(errors="replace")[-3000:], messages)
