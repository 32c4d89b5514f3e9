"""The peer to beat in `callmesh bench media`: Janus (Debian `janus`) relaying the same two-leg
calls through its VideoRoom plugin, measured with the same clients and the same load.

Each call is one audio-only room: the caller and the agent each publish their tone and subscribe
to the other's feed (four peer connections per call at the clients, two publishers and two
subscribers in Janus). Janus runs as a child process with a configuration made for the run
(loopback only, HTTP API, only the VideoRoom plugin); the client talks to its HTTP API with one
long poll per session. Skipped (no figure) when the `janus` program is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench_media import (
    HOLD_S,
    MAX_LOSS,
    ClientLeg,
    Step,
    Ticker,
    cpu_seconds,
    per_core,
)
from media.peer import PeerLeg, encode_tone, host_addresses
from node.etcd_server import free_port

JANUS_STEPS: tuple[int, ...] = (25, 50, 100)
_PLUGINS = ["audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip"]
_PLUGINS += ["streaming", "textroom", "videocall", "voicemail"]
PLUGINS_OFF = ",".join(f"libjanus_{name}.so" for name in _PLUGINS)
TRANSPORTS_OFF = ",".join(
    f"libjanus_{name}.so" for name in ["mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets"]
)


def _config(folder: Path, port: int, host: str) -> None:
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    debug_level = 3
}}
media: {{ rtp_port_range = "30000-39999" }}
nat: {{ ice_enforce_list = "{host}" ignore_mdns = true }}
plugins: {{ disable = "{PLUGINS_OFF}" }}
transports: {{ disable = "{TRANSPORTS_OFF}" }}
events: {{ broadcast = false }}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{ json = "compact" base_path = "/janus" http = true port = {port}
    ip = "127.0.0.1" https = false }}
admin: {{ admin_http = false }}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {}\n")


class Session:
    """One Janus session over HTTP: requests, and events from a long poll by transaction."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.id = 0
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poll: asyncio.Task[None] | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.base + path, json=body) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus: {reply.get('error')}")
        return reply

    async def open(self) -> None:
        reply = await self._post("", {"janus": "create", "transaction": "create"})
        self.id = reply["data"]["id"]
        self._poll = asyncio.create_task(self._long_poll())

    async def _long_poll(self) -> None:
        while True:
            url = f"{self.base}/{self.id}?maxev=10"
            try:
                async with self.http.get(url) as response:
                    events = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            for event in events if isinstance(events, list) else [events]:
                future = self._waiting.pop(str(event.get("transaction", "")), None)
                if future is not None and not future.done() and event.get("janus") == "event":
                    future.set_result(event)

    async def attach(self) -> int:
        reply = await self._post(
            f"/{self.id}",
            {"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "attach"},
        )
        return int(reply["data"]["id"])

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A plugin request; the answer (synchronous, or the event that follows an ack)."""
        transaction = f"t{next(self._ids)}"
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            request["jsep"] = jsep
        future = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        reply = await self._post(f"/{self.id}/{handle}", request)
        if reply.get("janus") == "success":
            self._waiting.pop(transaction, None)
            return reply
        return await asyncio.wait_for(future, 20)

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll


class JanusBench:
    def __init__(self, http: aiohttp.ClientSession, base: str, pid: int, host: str) -> None:
        self.host = host
        self.http = http
        self.base = base
        self.pid = pid
        self.ticker = Ticker(encode_tone(1000.0, 1.0))
        self._rooms = itertools.count(1000)

    async def call(self, session: Session) -> tuple[list[ClientLeg], list[ClientLeg]]:
        """One room: two publishers (sending) and two subscribers (receiving the other)."""
        room = next(self._rooms)
        admin = await session.attach()
        await session.message(
            admin, {"request": "create", "room": room, "publishers": 2, "audiocodec": "opus"}
        )
        senders, feeds = [], []
        for name in ("caller", "agent"):
            handle = await session.attach()
            leg = await ClientLeg.make(self.host)
            event = await session.message(
                handle,
                {
                    "request": "joinandconfigure",
                    "room": room,
                    "ptype": "publisher",
                    "display": name,
                    "audio": True,
                    "video": False,
                },
                {"type": "offer", "sdp": leg.leg.local_sdp},
            )
            await leg.leg.accept(event["jsep"]["sdp"])
            senders.append(leg)
            feeds.append(int(event["plugindata"]["data"]["id"]))
        receivers = []
        for feed in reversed(feeds):  # each side hears the other
            handle = await session.attach()
            join = {
                "request": "join",
                "room": room,
                "ptype": "subscriber",
                "streams": [{"feed": feed}],
            }
            for _ in range(100):  # a feed is there once its publisher's media is up
                event = await session.message(handle, join)
                if "jsep" in event:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"janus subscriber: {event}")
            leg = ClientLeg(await PeerLeg.answering(event["jsep"]["sdp"], self.host))
            await session.message(
                handle,
                {"request": "start", "room": room},
                {"type": "answer", "sdp": leg.leg.local_sdp},
            )
            receivers.append(leg)
        return senders, receivers

    async def step(self, calls: int) -> Step:
        session = Session(self.http, self.base)
        await session.open()
        gate = asyncio.Semaphore(4)
        placed: list[tuple[list[ClientLeg], list[ClientLeg]]] = []

        async def one() -> None:
            async with gate:
                senders, receivers = await self.call(session)
                self.ticker.legs.update(senders)
                placed.append((senders, receivers))

        try:
            await asyncio.gather(*(one() for _ in range(calls)))
            receivers = [leg for _, legs in placed for leg in legs]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(r.heard.wait() for r in receivers)), 30)
            await asyncio.sleep(1.0)
            before = [(leg.receiving.expected, leg.receiving.packets) for leg in receivers]
            node0, me0, t0 = cpu_seconds(self.pid), time.process_time(), time.monotonic()
            await asyncio.sleep(HOLD_S)
            node1, me1, t1 = cpu_seconds(self.pid), time.process_time(), time.monotonic()
            expected = got = 0
            for leg, (expected_before, packets_before) in zip(receivers, before, strict=True):
                packets = leg.receiving.packets - packets_before
                got += packets
                expected += (
                    leg.receiving.expected - expected_before if packets else round(HOLD_S * 50)
                )
        finally:
            for senders, receivers in placed:
                self.ticker.legs.difference_update(senders)
                for leg in [*senders, *receivers]:
                    await leg.leg.close()
            await session.close()
        return Step(
            calls,
            (node1 - node0) / (t1 - t0),
            (me1 - me0) / (t1 - t0),
            max(0.0, 1 - got / expected) if expected else 1.0,
            0.0,
            [],
        )


@contextlib.asynccontextmanager
async def janus(folder: Path, host: str) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    _config(folder, port, host)
    with (folder / "janus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            "janus",
            "-F",
            str(folder),
            "-C",
            str(folder / "janus.jcfg"),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
        )
    try:
        base = f"http://127.0.0.1:{port}/janus"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(base + "/info") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def measure(out: Callable[[str], None]) -> dict[str, float]:
    hosts = host_addresses()
    if shutil.which("janus") is None or not hosts:
        out("  janus: not installed (Debian package janus), or no non-loopback address")
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-janus-") as root:
        async with (
            janus(Path(root), hosts[0]) as (base, pid),
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(limit=0),
            ) as http,
        ):
            # libnice leaves loopback out: Janus and these clients meet on the machine's address
            bench = JanusBench(http, base, pid, hosts[0])
            ticker = asyncio.create_task(bench.ticker.run())
            steps = []
            try:
                for calls in JANUS_STEPS:
                    step = await bench.step(calls)
                    steps.append(step)
                    out(
                        f"  janus    {calls:4} calls: janus {step.cpu_cores * 100:5.1f} % of a "
                        f"core, clients {step.client_cores * 100:5.1f} %, loss "
                        f"{step.loss * 100:.2f} %"
                    )
                    if step.loss > MAX_LOSS:
                        break
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
    calls_per_core, _ = per_core(steps)
    return {"janus_calls_per_core": calls_per_core} if calls_per_core else {}
