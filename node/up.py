"""`callmesh up`: a local cluster on loopback that runs until Ctrl-C.

Today it starts what exists: one embedded etcd per site, each a child process with its data in a
temporary folder. Node processes join with the cluster fabric (issue 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path

from node.etcd_server import EtcdServer

SITE_NAMES = ["site-a", "site-b", "partner-c"]


def site_names(count: int) -> list[str]:
    if count < 1:
        raise ValueError(f"--sites must be at least 1, got {count}")
    return [SITE_NAMES[i] if i < len(SITE_NAMES) else f"site-{i + 1}" for i in range(count)]


async def serve(sites: int, root: Path, stop: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for name in site_names(sites):
            etcd = await stack.enter_async_context(EtcdServer(name, root / name))
            print(f"{name}: etcd {etcd.client_url} (pid {etcd.pid})", flush=True)
        print("cluster up; Ctrl-C stops it", flush=True)
        await stop.wait()
        print("stopping", flush=True)


async def _main(sites: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="callmesh-up-") as root:
        await serve(sites, Path(root), stop)


def run_up(sites: int) -> int:
    site_names(sites)
    asyncio.run(_main(sites))
    return 0
