"""`callmesh bench media`: bridged two-leg calls with audio both ways, and what they cost the node.

One node process (a LocalCluster of one site: etcd and the node as child processes) bridges the
calls; this process plays every caller and agent as WebRTC clients (aiortc for ICE and DTLS, the
lean RTP path of media/peer.py to send a pre-encoded Opus tone every 20 ms and count what comes
back). Agents log in, open their peer connection once, and answer offers from their event
websocket. For each step of concurrent calls: place the calls (each caller's offer in POST
/calls), wait for audio both ways, then measure the node process's CPU (from /proc) and the loss
at the clients over HOLD_S seconds; hang up.

The node runs three times, one per `media_mode`: forward (the lean path), transcode (Opus decoded
and encoded again for every packet), stock (aiortc's tracks relayed as aiortc does it). Calls per
core at 80 % are extrapolated linearly from the largest step without loss: on a shared 2-core
machine the clients need more CPU than the node, so the node cannot be driven to 80 % itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from media.peer import PeerLeg, encode_tone
from media.rtp import Outbound, Receiving, parse
from node.localcluster import LocalCluster, SitePlan

PASSTHROUGH_STEPS: tuple[int, ...] = (50, 100, 150, 200)
TRANSCODE_STEPS: tuple[int, ...] = (8, 16, 24, 32)
STOCK_STEPS: tuple[int, ...] = (2, 4, 6)
HOLD_S = 5.0
PROBE_LOAD = 100  # calls streaming while the setup probes are placed
PROBES = 50
JANUS = True  # also relay the same calls through Janus's VideoRoom, when janus is installed
SETUP_CONCURRENCY = 8
MAX_LOSS = 0.01
HOST = "127.0.0.1"
NODE = "bench-n1"
QUEUES = """
[queues.bench]
skills = { sales = 1 }
ring_timeout_s = 60
wrap_up_s = 0.1
max_wait_s = 600
"""
TARGETS = {
    "bridged_calls_per_core_passthrough": (">=", 100.0),
    "bridged_calls_per_core_transcode": (">=", 16.0),
    "setup_ms_p99": ("<=", 500.0),
}


class ClientLeg:
    """One caller or agent: a WebRTC leg sending a tone, counting what it receives."""

    def __init__(self, leg: PeerLeg) -> None:
        self.leg = leg
        self.out = Outbound(leg.ssrc, leg.payload_type, first_sequence=1000)
        self.receiving = Receiving()
        self.first_ms = 0.0
        self.heard = asyncio.Event()
        leg.on_rtp = self._rtp

    @classmethod
    async def make(cls, host: str = HOST) -> ClientLeg:
        return cls(await PeerLeg.offering(host))

    def _rtp(self, packet: bytes) -> None:
        now = time.monotonic() * 1000
        if not self.first_ms:
            self.first_ms = now
            self.heard.set()
        self.receiving.update(parse(packet), len(packet), now)


class Ticker:
    """Sends the next 20 ms of tone on every live leg, paced in real time."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.legs: set[ClientLeg] = set()
        self._payloads = payloads

    async def run(self) -> None:
        due, n = time.monotonic(), 0
        while True:
            payload = self._payloads[n % len(self._payloads)]
            now_ms = int(time.monotonic() * 1000)
            for leg in list(self.legs):
                leg.leg.send(leg.out.next_packet(payload, now_ms))
            n += 1
            due += 0.02
            await asyncio.sleep(max(0.0, due - time.monotonic()))


@dataclass(frozen=True, slots=True)
class Step:
    calls: int
    cpu_cores: float  # the node process's CPU over the window, in cores
    client_cores: float
    loss: float
    jitter_ms: float
    setup_ms: list[float]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.http = http
        self.base = f"http://{cluster.plans[NODE].http}"
        self.headers = cluster.credentials.headers()
        self.ticker = Ticker(encode_tone(1000.0, 1.0))
        self.agents: dict[str, ClientLeg] = {}
        self._sockets: list[asyncio.Task[None]] = []

    async def post(self, path: str, body: object = None) -> Any:
        async with self.http.post(self.base + path, json=body or {}, headers=self.headers) as r:
            reply = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"POST {path}: {r.status} {reply}")
            return reply

    async def add_agents(self, count: int) -> None:
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(agent: str) -> None:
            async with gate:
                await self.post(f"/agents/{agent}/login", {"skills": {"sales": 5}, "tier": 1})
                leg = await ClientLeg.make()
                reply = await self.post(f"/agents/{agent}/media", {"sdp": leg.leg.local_sdp})
                await leg.leg.accept(reply["sdp"])
                self.agents[agent] = leg
                self.ticker.legs.add(leg)
                self._sockets.append(asyncio.create_task(self._answer(agent)))

        await asyncio.gather(*(one(f"a{i:04}") for i in range(len(self.agents), count)))

    async def _answer(self, agent: str) -> None:
        """The agent's page: answer every offer as it comes."""
        url = f"{self.base}/agents/{agent}/events"
        async with self.http.ws_connect(url, headers=self.headers) as socket:
            async for message in socket:
                event = message.json()
                offers = event.get("offers", []) if event["type"] == "hello" else []
                if event["type"] == "offer":
                    offers = [event["offer"]]
                for offer in offers:
                    if not offer.get("answered"):
                        await self.post(f"/agents/{agent}/calls/{offer['call_id']}/answer")

    async def place(self, calls: int, concurrency: int) -> list[tuple[str, ClientLeg, float]]:
        """`calls` callers, `concurrency` at a time: each offers, posts, accepts the answer;
        then wait (up to 30 s) until every one hears its agent."""
        gate = asyncio.Semaphore(concurrency)
        placed: list[tuple[str, ClientLeg, float]] = []

        async def one() -> None:
            async with gate:
                leg = await ClientLeg.make()
                started = time.monotonic() * 1000
                reply = await self.post(
                    "/calls", {"queue": "bench", "caller": "+bench", "sdp": leg.leg.local_sdp}
                )
                await leg.leg.accept(reply["sdp"])
                self.ticker.legs.add(leg)
                placed.append((reply["call_id"], leg, started))

        await asyncio.gather(*(one() for _ in range(calls)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(leg.heard.wait() for _, leg, _ in placed)), 30)
        return placed

    async def hang_up(self, placed: list[tuple[str, ClientLeg, float]]) -> None:
        for call_id, leg, _ in placed:
            self.ticker.legs.discard(leg)
            with contextlib.suppress(RuntimeError):
                await self.post(f"/calls/{call_id}/hangup")
            await leg.leg.close()
        await asyncio.sleep(0.5)  # wrap-up

    async def probe_setup(self, load: int, probes: int) -> list[float]:
        """Offer to first audio of `probes` calls placed one after another while `load` calls
        stream: what one caller waits, rather than a burst from one client process."""
        await self.add_agents(load + 1)
        streaming = await self.place(load, SETUP_CONCURRENCY)
        await asyncio.sleep(1.0)
        setup = []
        for _ in range(probes):
            [(call_id, leg, started)] = await self.place(1, 1)
            if leg.first_ms:
                setup.append(leg.first_ms - started)
            await self.hang_up([(call_id, leg, started)])
        await self.hang_up(streaming)
        return setup

    async def step(self, calls: int) -> Step:
        await self.add_agents(calls)
        placed = await self.place(calls, SETUP_CONCURRENCY)
        setup = [leg.first_ms - started for _, leg, started in placed if leg.first_ms]
        await asyncio.sleep(1.0)  # settle
        legs = [leg for _, leg, _ in placed] + list(self.agents.values())[:calls]
        before = [(leg.receiving.expected, leg.receiving.packets) for leg in legs]
        pid = self.cluster.pid(NODE)
        node0, me0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.sleep(HOLD_S)
        node1, me1, t1 = cpu_seconds(pid), time.process_time(), time.monotonic()
        # loss from sequence gaps; a leg that heard nothing at all lost the whole window
        expected = got = 0
        for leg, (expected_before, packets_before) in zip(legs, before, strict=True):
            packets = leg.receiving.packets - packets_before
            got += packets
            expected += leg.receiving.expected - expected_before if packets else round(HOLD_S * 50)

        jitter = statistics.fmean(leg.receiving.jitter / 48 for leg in legs)
        await self.hang_up(placed)
        return Step(
            calls,
            (node1 - node0) / (t1 - t0),
            (me1 - me0) / (t1 - t0),
            max(0.0, 1 - got / expected),
            jitter,
            setup,
        )

    async def close(self) -> None:
        for task in self._sockets:
            task.cancel()
        await asyncio.gather(*self._sockets, return_exceptions=True)
        for leg in self.agents.values():
            await leg.leg.close()


@contextlib.asynccontextmanager
async def bench_node(root: Path, mode: str) -> AsyncIterator[Bench]:
    sites = [SitePlan("bench", "inhouse", 1)]
    # admission control off: the ramp measures what the node carries past its limit
    extra = {NODE: f'media_mode = "{mode}"\nmax_cpu_share = 0\n'}
    async with (
        LocalCluster(sites, root, queues_toml=QUEUES, extra_toml=extra) as cluster,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=0),  # an event websocket per agent
        ) as http,
    ):
        bench = Bench(cluster, http)
        ticker = asyncio.create_task(bench.ticker.run())
        try:
            yield bench
        finally:
            ticker.cancel()
            await bench.close()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def ramp(
    mode: str, steps: tuple[int, ...], out: Callable[[str], None], setup: list[float] | None = None
) -> list[Step]:
    """The steps in one node of `mode`; with `setup`, then the setup probes into it."""
    with tempfile.TemporaryDirectory(prefix=f"bench-media-{mode}-") as root:
        async with bench_node(Path(root), mode) as bench:
            done = []
            for calls in steps:
                step = await bench.step(calls)
                done.append(step)
                out(
                    f"  {mode:9} {calls:4} calls: node {step.cpu_cores * 100:5.1f} % of a core, "
                    f"clients {step.client_cores * 100:5.1f} %, loss {step.loss * 100:.2f} %, "
                    f"jitter {step.jitter_ms:.1f} ms, setup p50 "
                    f"{_percentile(step.setup_ms, 50):.0f} ms"
                )
                if step.loss > MAX_LOSS:
                    break
            if setup is not None:
                setup += await bench.probe_setup(PROBE_LOAD, PROBES)
                out(
                    f"  setup of {PROBES} calls one at a time while {PROBE_LOAD} stream: p50 "
                    f"{_percentile(setup, 50):.0f} ms, p99 {_percentile(setup, 99):.0f} ms; "
                    f"slowest {', '.join(f'{ms:.0f}' for ms in sorted(setup)[-3:])} ms"
                )
            return done


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def per_core(steps: list[Step]) -> tuple[float, Step | None]:
    """Calls per core at 80 %, from the largest step without loss."""
    clean = [s for s in steps if s.loss <= MAX_LOSS and s.cpu_cores > 0]
    if not clean:
        return 0.0, None
    best = clean[-1]
    return round(0.8 * best.calls / best.cpu_cores, 1), best


async def measure(out: Callable[[str], None]) -> dict[str, float]:
    figures: dict[str, float] = {}
    setup: list[float] = []
    forward = await ramp("forward", PASSTHROUGH_STEPS, out, setup)
    figures["bridged_calls_per_core_passthrough"], best = per_core(forward)
    if best is not None:
        figures["cpu_ms_per_call_second"] = round(best.cpu_cores * 1000 / best.calls, 3)
        figures["passthrough_calls_measured"] = float(best.calls)
        figures["passthrough_node_cpu_percent"] = round(best.cpu_cores * 100, 1)
    figures["setup_ms_p50"] = round(_percentile(setup, 50), 1)
    figures["setup_ms_p99"] = round(_percentile(setup, 99), 1)
    burst = [ms for step in forward for ms in step.setup_ms]
    figures["setup_ms_p99_burst"] = round(_percentile(burst, 99), 1)
    transcode = await ramp("transcode", TRANSCODE_STEPS, out)
    figures["bridged_calls_per_core_transcode"], _ = per_core(transcode)
    stock = await ramp("stock", STOCK_STEPS, out)
    figures["bridged_calls_per_core_stock_aiortc"], _ = per_core(stock)
    if JANUS:
        from loadtest import bench_janus  # it builds on this module

        figures |= await bench_janus.measure(out)
    return figures


def run(out: Callable[[str], None] = print) -> dict[str, float]:
    out(
        "media: one node process bridging two-leg calls, audio both ways; callers and agents "
        f"in this process; {HOLD_S:g} s per step; calls per core at 80 % extrapolated from the "
        "largest step without loss (the machine is shared: figures move with other load)"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        import uvloop

        figures = uvloop.run(measure(out))
    except ImportError:
        figures = asyncio.run(measure(out))
    for name, (op, target) in TARGETS.items():
        value = figures.get(name, 0.0)
        met = value >= target if op == ">=" else value <= target
        out(f"  {name:36} {value:>10,}   target {op} {target:,}  {'ok' if met else 'MISSED'}")
    if "janus_calls_per_core" not in figures:
        out("  janus_calls_per_core: not measured")
    return figures
