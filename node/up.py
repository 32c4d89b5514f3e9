"""`callmesh up`: the local cluster of node/localcluster.py, run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

from node.localcluster import LocalCluster, local_trunk_toml, plan_sites
from node.sampleusers import credential_lines


async def _main(sites: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="callmesh-up-") as root:
        plans = plan_sites(sites)
        trunk = {f"{plans[0].name}-n1": local_trunk_toml()}  # SIP on the first node (banner)
        async with LocalCluster(plans, Path(root), extra_toml=trunk) as cluster:
            for name, members in cluster.etcds.items():
                for etcd in members:
                    print(f"{name}: etcd {etcd.client_url} (pid {etcd.pid})", flush=True)
            for node_id, banner in cluster.banners.items():
                print(f"{banner} (pid {cluster.pid(node_id)})", flush=True)
            http_by_site: dict[str, str] = {}
            for plan in cluster.plans.values():
                http_by_site.setdefault(plan.site.name, plan.http)
            for line in credential_lines(cluster.credentials, http_by_site):
                print(line, flush=True)
            print(f"logs and configs in {root}", flush=True)
            print("cluster up; Ctrl-C stops it", flush=True)
            await stop.wait()
            print("stopping", flush=True)


def run_up(sites: int) -> int:
    plan_sites(sites)  # a bad count fails before anything starts
    asyncio.run(_main(sites))
    return 0
