"""`callmesh bench sip`: SIPp places calls through the SIP trunk at a rising rate.

One node runs in this process (real etcd child process, real sockets) with SIP on loopback and
`AGENTS` simulated agents logged in, who answer every offer at once (an observer on the
switchboard calls the desk's answer, as the agent page's POST would). SIPp (Debian sip-tester)
runs `sip/scenarios/bench.xml` for `STEP_S` seconds at each rate of `RATES`: INVITE, 180, 200
(timed from the INVITE: the setup time), ACK, `HOLD_MS` of call, the caller's BYE.

Figures: `sip_calls_per_s`, the highest rate sustained: every call succeeded (SIPp counted no
failed call and timed every setup) and the setup p99 stayed under `SUSTAINED_P99_MS` (beyond,
a backlog builds up); `sip_setup_ms_p99`, INVITE to 200 at that rate (SIPp's
response-time trace).

Then `concurrent_sip_calls_per_core`: G.711 audio both ways through the node's forwarding path.
Every agent registers an external phone (POST /agents/ID/phone does the same); a second SIPp
plays the phones (`sip/scenarios/bench_phone.xml`, picked up at once, `-rtp_echo`), so each call
is two plain RTP legs on the node bridged by media/forward.py: the caller's PCMU (SIPp's
`rtp_stream`, a 1 kHz tone looped) goes to the agent's phone, which echoes it, and back to the
caller. At each step of `CONCURRENT_STEPS` calls (placed at `SETUP_RATE` per second): wait until
every call is bridged with packets flowing on both legs (the node's per-leg statistics), then
read this process's CPU (the node; SIPp runs in its own processes) and the legs' packet counts
over `RTP_HOLD_S`, then hang up from the node. Calls per core at 80 % are extrapolated as
loadtest/bench_media.py does, from the largest step below `MAX_CORE` of a core without loss.
SIPp shares the machine's cores with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import sip
from loadtest.bench_media import MAX_LOSS, Step, cpu_seconds, per_core
from media.forward import Port
from media.peer import encode_tone
from node.app import Node
from node.callstate import Call, CallEvent
from node.config import NodeConfig
from node.etcd_server import EtcdServer, free_port
from node.exchange import AgentAction
from node.sessions import Profile

RATES = (10, 25, 50, 100, 150, 200, 300)
STEP_S = 5.0
HOLD_MS = 1000
AGENTS = 400
SUSTAINED_P99_MS = 1000.0  # setups slower than this mean a backlog building: not sustained
WARM_UP_CALLS = 5  # placed first and not counted: the first routing and SQLite warm up
BIND_FAILED = 254  # SIPp's exit code when it cannot bind a socket
CONCURRENT_STEPS: tuple[int, ...] = (100, 200, 300, 400)
SETUP_RATE = 50  # calls per second while a step's calls are placed
RTP_HOLD_S = 5.0  # the measured window, every call streaming
MAX_CORE = 0.8  # steps above this share of a core are not extrapolated from
TARGETS = {
    "sip_calls_per_s": (">=", 50.0),
    "sip_setup_ms_p99": ("<=", 200.0),
    "concurrent_sip_calls_per_core": (">=", 100.0),
}
QUEUES = """
[queues.bench]
skills = { sales = 1 }
ring_timeout_s = 30
wrap_up_s = 0
max_wait_s = 60
"""

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def sip_node(root: Path, phones: int) -> AsyncIterator[Node]:
    """A node with SIP on loopback; calls out to agents' phones go to 127.0.0.1:`phones`."""
    (root / "queues.toml").write_text(QUEUES)
    rtp = free_port() & ~1
    rtp_ports = 4 * (max(AGENTS, *CONCURRENT_STEPS, 0) + 50)  # a trunk leg and a phone leg a call
    async with EtcdServer("site-a", root / "etcd") as etcd:
        config = NodeConfig.for_tests("site-a-n1", "site-a", (etcd.client_url,))
        config = NodeConfig.from_mapping(
            {
                "node_id": config.node_id,
                "site": config.site,
                "etcd_endpoints": list(config.etcd_endpoints),
                "http_port": 0,
                "grpc_port": 0,
                "lease_ttl_s": 5,
                "data_dir": str(root / "data"),
                "queues_file": str(root / "queues.toml"),
                "drain_timeout_s": 0,
                "sip_port": free_port(),
                "sip_trunks": ["127.0.0.1"],
                "sip_queue": "bench",
                "sip_outbound": f"127.0.0.1:{phones}",
                "rtp_port_min": min(rtp, 65534 - rtp_ports),
                "rtp_port_max": min(rtp, 65534 - rtp_ports) + rtp_ports,
            }
        )
        node = Node(config)
        stop, ready = asyncio.Event(), asyncio.Event()
        run = asyncio.create_task(node.run(stop, ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            yield node
        finally:
            stop.set()
            await asyncio.gather(run, return_exceptions=True)


def auto_answer(node: Node) -> set[asyncio.Task[object]]:
    """Every offer is answered at once by its agent (the simulated agent pages); an agent with
    an external phone answers once the phone is picked up."""
    desk, board = node.desk, node.switchboard
    assert desk is not None
    assert board is not None
    phones = node.sip.phones if node.sip is not None else None
    tasks: set[asyncio.Task[object]] = set()

    async def answer(agent_id: str, call_id: str) -> object:
        if phones is not None and agent_id in phones.numbers:
            for _ in range(1000):  # bounded: 10 s
                leg = phones.leg(call_id, agent_id)
                if leg is not None and leg.remote is not None:
                    break
                await asyncio.sleep(0.01)
        return await desk.act(agent_id, call_id, AgentAction.ANSWER)

    def offered(before: Call, event: CallEvent, after: Call) -> None:
        if event is CallEvent.OFFER:
            task: asyncio.Task[object] = asyncio.create_task(answer(after.agent_id, after.call_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    board.observers.append(offered)
    return tasks


async def step(node: Node, root: Path, rate: int, calls: int = 0) -> tuple[int, int, list[float]]:
    """SIPp at `rate` calls/s for STEP_S (or `calls`): (calls placed, failed, setup times in
    ms)."""
    sipp = shutil.which("sipp")
    assert sipp is not None, "sipp is not installed (Debian sip-tester, scripts/setup.sh)"
    assert node.sip is not None
    calls = calls or max(1, int(rate * STEP_S))
    work = root / f"rate-{rate}-{calls}"
    work.mkdir()
    for _ in range(3):  # 254: SIPp could not bind a port picked as free; pick others
        process = await asyncio.create_subprocess_exec(
            sipp,
            "-sf",
            str(Path(sip.__file__).parent / "scenarios" / "bench.xml"),
            node.sip.address,
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_port()),
            "-s",
            "+4930100",
            "-r",
            str(rate),
            "-m",
            str(calls),
            "-l",
            str(AGENTS),
            "-d",
            str(HOLD_MS),
            "-timeout",
            f"{int(STEP_S + 30)}s",
            "-timeout_error",
            "-nostdin",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-trace_stat",
            "-fd",
            "1",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=work,
        )
        _, errors = await asyncio.wait_for(process.communicate(), STEP_S + 60)
        if process.returncode != BIND_FAILED:
            break
    setups = [
        float(row["response_time_ms"] if "response_time_ms" in row else row["response_time"])
        for path in work.glob("*_rtt.csv")
        for row in csv.DictReader(path.read_text().splitlines(), delimiter=";")
    ]
    failed = calls if process.returncode not in (0, 1) else _failed(work)
    if process.returncode not in (0, 1):
        print(f"sipp exited {process.returncode}: {errors.decode(errors='replace')[-300:]}")
    return calls, failed, setups


def _failed(work: Path) -> int:
    """Failed calls from SIPp's statistics file (its last line)."""
    for path in work.glob("*_.csv"):
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter=";"))
        if rows:
            return int(rows[-1].get("FailedCall(C)", "0") or 0)
    return 0


@dataclass(frozen=True, slots=True)
class Flow:
    """What the node's bridged SIP legs carried over a window."""

    from_callers: int  # packets the trunk legs received (the callers' audio)
    from_phones: int  # packets the phone legs received (the phones' echo)
    to_callers: int  # packets the bridges sent on the trunk legs
    expected: int  # packets the legs should have received (sequence numbers; silence: all)


def _bridged(node: Node) -> list[tuple[Port, Port]]:
    """(trunk leg, phone leg) of every bridged call with packets received on both."""
    assert node.media is not None
    return [
        (b.caller, b.agent)
        for b in list(node.media.bridges.values())
        if b.caller.kind == "trunk" and b.agent.kind == "phone"
    ]


def _flowing(node: Node) -> int:
    return sum(1 for t, p in _bridged(node) if t.receiving.packets and p.receiving.packets)


async def _spawn(work: Path, name: str, *args: str) -> asyncio.subprocess.Process:
    """SIPp in `work`, its errors in `name`.log there."""
    sipp = shutil.which("sipp")
    assert sipp is not None, "sipp is not installed (Debian sip-tester, scripts/setup.sh)"
    with (work / f"{name}.log").open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            sipp,
            *args,
            "-trace_err",
            "-error_file",
            str(work / f"{name}-errors.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=work,
        )


def _cpu(process: asyncio.subprocess.Process) -> float:
    try:
        return cpu_seconds(process.pid)
    except FileNotFoundError:
        return 0.0  # it ended (its calls failed)


async def _end(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def concurrent_step(node: Node, root: Path, calls: int, phones: int) -> Step:
    """`calls` SIP calls at once with G.711 both ways: the node's CPU and the legs' loss over
    RTP_HOLD_S (a step whose calls never all flowed counts as all lost)."""
    assert node.sip is not None
    assert node.switchboard is not None
    work = root / f"concurrent-{calls}"
    work.mkdir()
    write_tone(work / "tone.ulaw")  # what bench_rtp.xml streams
    scenarios = Path(sip.__file__).parent / "scenarios"
    timeout_s = int(calls / SETUP_RATE + RTP_HOLD_S + 60)
    local = ("-i", "127.0.0.1", "-mi", "127.0.0.1")
    bounds = ("-m", str(calls), "-timeout", f"{timeout_s}s", "-nostdin")
    phone = await _spawn(
        work, "phones", "-sf", str(scenarios / "bench_phone.xml"), "-p", str(phones),
        "-rtp_echo", "-mp", str(free_port()), *local, *bounds,
    )  # fmt: skip
    await asyncio.sleep(0.3)  # the phones listen
    caller = await _spawn(
        work, "callers", "-sf", str(scenarios / "bench_rtp.xml"), node.sip.address,
        "-p", str(free_port()), "-mp", str(free_port()), "-s", "+4930100",
        "-r", str(SETUP_RATE), "-l", str(calls), *local, *bounds,
    )  # fmt: skip
    try:
        for _ in range(int(calls / SETUP_RATE + 30) * 5):  # bounded: placed, then 30 s
            if _flowing(node) >= calls:
                break
            await asyncio.sleep(0.2)
        flowing = _flowing(node)
        await asyncio.sleep(1.0)  # settle
        legs = [leg for pair in _bridged(node) for leg in pair]
        before = [(leg.receiving.expected, leg.receiving.packets, leg.sent) for leg in legs]
        sipp0 = sum(_cpu(p) for p in (phone, caller))
        node0, t0 = cpu_seconds(os.getpid()), time.monotonic()
        await asyncio.sleep(RTP_HOLD_S)
        node1, t1 = cpu_seconds(os.getpid()), time.monotonic()
        sipp1 = sum(_cpu(p) for p in (phone, caller))
        flow = _flow(legs, before, calls - flowing)
        jitter = [leg.receiving.jitter / 8 for leg in legs if leg.kind == "trunk"]
    finally:
        board = node.switchboard
        for call_id in list(board.calls):
            with contextlib.suppress(Exception):  # ended meanwhile
                await board.hangup_caller(call_id)
        await asyncio.gather(_end(caller, 30), _end(phone, 30))
    loss = max(0.0, 1 - (flow.from_callers + flow.from_phones) / max(1, flow.expected))
    print(
        f"concurrent {calls}: {flowing} flowing both ways; node {(node1 - node0) / (t1 - t0):.1%}"
        f" of a core, sipp {(sipp1 - sipp0) / (t1 - t0):.1%}; packets from callers "
        f"{flow.from_callers}, from phones {flow.from_phones}, to callers {flow.to_callers} "
        f"in {t1 - t0:.1f} s; loss {loss:.2%}",
        flush=True,
    )
    for _ in range(100):  # bounded: the legs close, the agents are free again
        if not node.media or not node.media.bridges:
            break
        await asyncio.sleep(0.1)
    return Step(
        calls,
        (node1 - node0) / (t1 - t0),
        (sipp1 - sipp0) / (t1 - t0),
        loss,
        sum(jitter) / len(jitter) if jitter else 0.0,
        [],
    )


def _flow(legs: list[Port], before: list[tuple[int, int, int]], missing: int) -> Flow:
    """Packets over the window from the counts `before` it; a leg that received nothing lost
    the whole window, and so did each call that never flowed (`missing`)."""
    got = {"trunk": 0, "phone": 0}
    expected = 2 * missing * round(RTP_HOLD_S * 50)
    to_callers = 0
    for leg, (expected_before, packets_before, sent_before) in zip(legs, before, strict=True):
        packets = leg.receiving.packets - packets_before
        got[leg.kind] = got.get(leg.kind, 0) + packets
        expected += leg.receiving.expected - expected_before if packets else round(RTP_HOLD_S * 50)
        if leg.kind == "trunk":
            to_callers += leg.sent - sent_before
    return Flow(got["trunk"], got["phone"], to_callers, expected)


def write_tone(path: Path) -> None:
    """One second of a 1 kHz tone as raw G.711 u-law, what SIPp's rtp_stream loops."""
    path.write_bytes(b"".join(encode_tone(1000.0, 1.0, 0.2, payload_type=0)))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


async def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="callmesh-bench-sip-") as name:
        root = Path(name)
        phones = free_port()
        async with sip_node(root, phones) as node:
            sessions = node.sessions
            assert sessions is not None
            for i in range(AGENTS):
                await sessions.login(f"sip-{i:04d}", Profile(tier=1, skills=(("sales", 5),)))
            tasks = auto_answer(node)
            await step(node, root, WARM_UP_CALLS, calls=WARM_UP_CALLS)
            best, best_p99 = 0.0, 0.0
            for rate in RATES:
                started = time.monotonic()
                calls, failed, setups = await step(node, root, rate)
                p99 = pct(setups, 0.99) if setups else 0.0
                print(
                    f"rate {rate}/s: {calls} calls, {failed} failed, setup p50 "
                    f"{pct(setups, 0.5) if setups else 0} ms p99 {p99} ms "
                    f"({time.monotonic() - started:.1f} s)",
                    flush=True,
                )
                if failed or len(setups) < calls or p99 > SUSTAINED_P99_MS:
                    break
                best, best_p99 = float(rate), p99
                await asyncio.sleep(HOLD_MS / 1000 + 0.5)  # the last calls end
            await asyncio.sleep(1.0)
            per_core_figure = await concurrent(node, root, phones)
            for task in list(tasks):
                task.cancel()
    return {
        "sip_calls_per_s": best,
        "sip_setup_ms_p99": best_p99,
        "concurrent_sip_calls_per_core": per_core_figure,
    }


async def concurrent(node: Node, root: Path, phones: int) -> float:
    """Every agent on an external phone; the steps of CONCURRENT_STEPS; calls per core."""
    assert node.sip is not None
    assert node.sip.phones is not None
    for i in range(AGENTS):  # every agent: routing picks any of them
        node.sip.phones.register(f"sip-{i:04d}", f"+49301{i:04d}")
    await asyncio.sleep(0.1)  # the phone lines subscribe to their agents' events
    steps: list[Step] = []
    for calls in [c for c in CONCURRENT_STEPS if c <= AGENTS]:
        step = await concurrent_step(node, root, calls, phones)
        steps.append(step)
        if step.loss > MAX_LOSS or step.cpu_cores > MAX_CORE:
            break
    figure, _ = per_core([s for s in steps if s.cpu_cores <= MAX_CORE])
    return figure


def run() -> dict[str, float]:
    logging.getLogger().setLevel(logging.WARNING)
    try:
        import uvloop  # the node's own event loop (config event_loop)

        return uvloop.run(measure())
    except ImportError:
        return asyncio.run(measure())
