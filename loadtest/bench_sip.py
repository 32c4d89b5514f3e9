"""`callmesh bench sip`: SIPp places calls through the SIP trunk at a rising rate.

One node runs in this process (real etcd child process, real sockets) with SIP on loopback and
`AGENTS` simulated agents logged in, who answer every offer at once (an observer on the
switchboard calls the desk's answer, as the agent page's POST would). SIPp (Debian sip-tester)
runs `sip/scenarios/bench.xml` for `STEP_S` seconds at each rate of `RATES`: INVITE, 180, 200
(timed from the INVITE: the setup time), ACK, `HOLD_MS` of call, the caller's BYE.

Figures: `sip_calls_per_s`, the highest rate sustained: every call succeeded (SIPp counted no
failed call and timed every setup) and the setup p99 stayed under `SUSTAINED_P99_MS` (beyond,
a backlog builds up); `sip_setup_ms_p99`, INVITE to 200 at that rate (SIPp's
response-time trace). RTP is not sent: the G.711 figure (`concurrent_sip_calls_per_core`) needs
the media plane's bridge and is not measured here. SIPp shares the machine's cores with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import sip
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
TARGETS = {"sip_calls_per_s": (">=", 50.0), "sip_setup_ms_p99": ("<=", 200.0)}
QUEUES = """
[queues.bench]
skills = { sales = 1 }
ring_timeout_s = 30
wrap_up_s = 0
max_wait_s = 60
"""

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def sip_node(root: Path) -> AsyncIterator[Node]:
    (root / "queues.toml").write_text(QUEUES)
    rtp = free_port() & ~1
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
                "rtp_port_min": min(rtp, 64000),
                "rtp_port_max": min(rtp, 64000) + 2 * (AGENTS + 50),
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
    """Every offer is answered at once by its agent (the simulated agent pages)."""
    desk, board = node.desk, node.switchboard
    assert desk is not None
    assert board is not None
    tasks: set[asyncio.Task[object]] = set()

    def offered(before: Call, event: CallEvent, after: Call) -> None:
        if event is CallEvent.OFFER:
            task: asyncio.Task[object] = asyncio.create_task(
                desk.act(after.agent_id, after.call_id, AgentAction.ANSWER)
            )
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
            stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=work,
        )
        await asyncio.wait_for(process.wait(), STEP_S + 60)
        if process.returncode != BIND_FAILED:
            break
    setups = [
        float(row["response_time_ms"] if "response_time_ms" in row else row["response_time"])
        for path in work.glob("*_rtt.csv")
        for row in csv.DictReader(path.read_text().splitlines(), delimiter=";")
    ]
    failed = calls if process.returncode not in (0, 1) else _failed(work)
    return calls, failed, setups


def _failed(work: Path) -> int:
    """Failed calls from SIPp's statistics file (its last line)."""
    for path in work.glob("*_.csv"):
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter=";"))
        if rows:
            return int(rows[-1].get("FailedCall(C)", "0") or 0)
    return 0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


async def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="callmesh-bench-sip-") as name:
        root = Path(name)
        async with sip_node(root) as node:
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
            for task in list(tasks):
                task.cancel()
    return {"sip_calls_per_s": best, "sip_setup_ms_p99": best_p99}


def run() -> dict[str, float]:
    logging.getLogger().setLevel(logging.WARNING)
    return asyncio.run(measure())
