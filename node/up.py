"""`callmesh up`: the local cluster of node/localcluster.py, run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

from node.localcluster import LocalCluster, plan_sites


async def _main(sites: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="callmesh-up-") as root:
        async with LocalCluster(plan_sites(sites), Path(root)) as cluster:
            for name, members in cluster.etcds.items():
                for etcd in members:
                    print(f"{name}: etcd {etcd.client_url} (pid {etcd.pid})", flush=True)
            for node_id, banner in cluster.banners.items():
                print(f"{banner} (pid {cluster.pid(node_id)})", flush=True)
            print(f"logs and configs in {root}", flush=True)
            print("cluster up; Ctrl-C stops it", flush=True)
            await stop.wait()
            print("stopping", flush=True)


def run_up(sites: int) -> int:
    plan_sites(sites)  # a bad count fails before anything starts
    asyncio.run(_main(sites))
    return 0
