"""Running an operator's program for the node (hook scripts, the CRM script), as a web server
runs a CGI script: no shell, a session of its own (a kill reaches its children), the input on
stdin, bounded output, a deadline. A run never raises but for cancellation: whatever goes wrong
becomes a `ProgramRun` whose `error` says what."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_CHUNK = 16 * 1024
_STDERR_TAIL = 4096
_REAP_S = 1.0
LATE = "did not answer within"
"""How every timed-out run's error starts."""


@dataclass(frozen=True, slots=True)
class ProgramRun:
    output: bytes = b""
    """Everything the program printed on stdout (at most the bound), when it succeeded."""
    error: str = ""
    """Why the run failed, "" when it exited 0 within its deadline and bound."""
    timed_out: bool = False


async def run_program(
    argv: Sequence[str],
    payload: bytes,
    *,
    deadline: float,
    timeout_s: float,
    max_output: int,
    env: Mapping[str, str] | None = None,
) -> ProgramRun:
    """Run `argv` until `deadline` (time.monotonic()); `timeout_s` is only how the error names
    the limit. The program is killed, children included, when it runs late or prints more than
    `max_output` bytes."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except (OSError, ValueError) as error:
        return ProgramRun(error=f"could not start {argv[0]!r}: {error}")
    run = asyncio.ensure_future(_exchange(process, payload, max_output))
    try:
        try:
            code, stdout, overflow, stderr = await asyncio.wait_for(
                asyncio.shield(run), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            _kill_group(process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run, _REAP_S)
            run.cancel()
            return ProgramRun(error=f"{LATE} {timeout_s:g} s; killed", timed_out=True)
    except asyncio.CancelledError:
        _kill_group(process)
        run.cancel()
        raise
    if overflow:
        return ProgramRun(error=f"printed more than {max_output} bytes; cut and killed")
    if code != 0:
        return ProgramRun(error=f"exited with code {code}{_last_line(stderr)}")
    return ProgramRun(output=stdout)


async def _exchange(
    process: asyncio.subprocess.Process, payload: bytes, max_output: int
) -> tuple[int, bytes, bool, bytes]:
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    _, (stdout, overflow), stderr = await asyncio.gather(
        _feed(process.stdin, payload),
        _read_head(process.stdout, max_output, lambda: _kill_group(process)),
        _read_tail(process.stderr, _STDERR_TAIL),
    )
    return await process.wait(), stdout, overflow, stderr


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the program's session (its pid is the group's id), children included."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _feed(stdin: asyncio.StreamWriter, payload: bytes) -> None:
    """Write the input and close stdin. A program that does not read it (it may read its
    environment only) and has exited is no error: asyncio then raises BrokenPipeError or
    ConnectionResetError, uvloop RuntimeError ("the handler is closed")."""
    try:
        if not stdin.is_closing():
            stdin.write(payload)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass
    finally:
        with contextlib.suppress(RuntimeError):
            stdin.close()


async def _read_head(
    stream: asyncio.StreamReader, limit: int, on_overflow: Callable[[], None]
) -> tuple[bytes, bool]:
    """The first `limit` bytes and whether more came; reads to the end so the pipe closes."""
    data = bytearray()
    overflow = False
    while chunk := await stream.read(_CHUNK):
        if overflow:
            continue
        data += chunk
        if len(data) > limit:
            overflow = True
            del data[limit:]
            on_overflow()
    return bytes(data), overflow


async def _read_tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    data = b""
    while chunk := await stream.read(_CHUNK):
        data = (data + chunk)[-limit:]
    return data


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return f": {lines[-1][:200]}" if lines else ""
