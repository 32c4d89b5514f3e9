"""Running a hook: a program (as a web server runs a CGI script) or a webhook, for one event.

A run never raises (but for cancellation): whatever goes wrong, a program that cannot start,
exits non-zero, runs past its timeout (it is killed, with its children), prints more than its
bound (cut, killed) or prints anything but valid actions, becomes a `HookResult` with `error`
set, and the caller applies the entry point's fallback.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from node.entries import EntryPoint
from node.hooks import Action, HookEvent, HookOutputError, parse_actions
from node.program import LATE, run_program

MAX_RUNNING = 64
"""Hook programs and webhook calls one node runs at once; more wait (within their timeout)."""
_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class HookResult:
    actions: tuple[Action, ...] = ()
    error: str = ""
    """Why the run failed ("" when it did not): the fallback applies."""
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def result(self) -> str:
        """ok, failed or timeout (the `result` label of the hook metrics)."""
        return "timeout" if self.timed_out else "failed" if self.error else "ok"


class Hook(Protocol):
    """One entry point's hook. `run` takes up to the entry point's timeout; it never raises."""

    async def run(self, event: HookEvent) -> HookResult: ...


class ProgramHook:
    """Runs `entry.program` with no shell, in a session of its own (the kill reaches its
    children), with the event on stdin and in its environment (only PATH, LANG and the
    CALLMESH_* variables: the node's own environment is not passed on)."""

    def __init__(self, entry: EntryPoint, gate: asyncio.Semaphore) -> None:
        self.entry = entry
        self._gate = gate

    async def run(self, event: HookEvent) -> HookResult:
        started = time.monotonic()
        deadline = started + self.entry.timeout_s
        try:
            error, output = await self._run(event, deadline)
        except asyncio.CancelledError:
            raise
        except Exception as unexpected:  # a hook never takes the call down with it
            error, output = f"run failed: {unexpected!r}", b""
        seconds = time.monotonic() - started
        if error:
            return HookResult(error=error, seconds=seconds, timed_out=error.startswith(LATE))
        try:
            return HookResult(parse_actions(output), seconds=seconds)
        except HookOutputError as bad:
            return HookResult(error=f"bad answer: {bad}", seconds=seconds)

    async def _run(self, event: HookEvent, deadline: float) -> tuple[str, bytes]:
        entry = self.entry
        try:
            await asyncio.wait_for(self._gate.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return f"{LATE} {entry.timeout_s:g} s: {MAX_RUNNING} hooks were running", b""
        try:
            env = {"PATH": os.environ.get("PATH", _PATH), "LANG": "C.UTF-8"}
            env.update(event.environment())
            run = await run_program(
                entry.program,
                event.payload(),
                deadline=deadline,
                timeout_s=entry.timeout_s,
                max_output=entry.max_output_bytes,
                env=env,
            )
            return run.error, run.output
        finally:
            self._gate.release()


class WebHook:
    """POSTs the event as JSON to `entry.url`; a 2xx answer's body (JSON lines or a JSON array,
    at most `max_output_bytes`) is the actions."""

    def __init__(self, entry: EntryPoint, gate: asyncio.Semaphore, session: aiohttp.ClientSession):
        self.entry = entry
        self._gate = gate
        self._session = session

    async def run(self, event: HookEvent) -> HookResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.entry.timeout_s), self._gate:
                body = await self._post(event)
        except TimeoutError:
            error = f"{LATE} {self.entry.timeout_s:g} s"
            return HookResult(error=error, seconds=time.monotonic() - started, timed_out=True)
        except (aiohttp.ClientError, OSError, ValueError) as failure:
            return HookResult(
                error=f"webhook failed: {failure!r:.200}", seconds=time.monotonic() - started
            )
        seconds = time.monotonic() - started
        if isinstance(body, str):
            return HookResult(error=body, seconds=seconds)
        try:
            return HookResult(parse_actions(body), seconds=seconds)
        except HookOutputError as bad:
            return HookResult(error=f"bad answer: {bad}", seconds=seconds)

    async def _post(self, event: HookEvent) -> bytes | str:
        """The answer's body, or why there is none (a str)."""
        limit = self.entry.max_output_bytes
        async with self._session.post(
            self.entry.url,
            data=event.payload(),
            headers={"Content-Type": "application/json"},
            allow_redirects=False,
        ) as response:
            if not 200 <= response.status < 300:
                return f"webhook answered HTTP {response.status}"
            body = await response.content.read(limit + 1)
            if len(body) > limit:
                return f"answered more than {limit} bytes; cut"
            return body


class HookMaker(Protocol):
    """Makes the hook of an entry point (tests give fakes)."""

    def hook(self, entry: EntryPoint) -> Hook: ...

    async def close(self) -> None: ...


class HookRunners:
    """Makes the hook of each entry point, sharing one bound on hooks running at once and one
    HTTP client for webhooks (closed by `close`)."""

    def __init__(self, max_running: int = MAX_RUNNING) -> None:
        self._gate = asyncio.Semaphore(max_running)
        self._http: aiohttp.ClientSession | None = None

    def hook(self, entry: EntryPoint) -> Hook:
        if entry.program:
            return ProgramHook(entry, self._gate)
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return WebHook(entry, self._gate, self._http)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
