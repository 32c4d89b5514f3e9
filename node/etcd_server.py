"""An etcd member run as a child process: the embedded etcd of a development or test site.

Production sites run an etcd StatefulSet (k8s/); `callmesh up` and the tests start one member per
site from the `etcd` binary on PATH (Debian's etcd-server), with its data in a folder they own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import aiohttp

log = logging.getLogger(__name__)


PLANNED_PORTS = range(20_000, 32_768)
"""Where planned ports come from: below Linux's ephemeral range (32768-60999), so no outgoing
connection on the machine takes one between the planning and the child's bind."""
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for child processes that cannot report theirs),
    never the same twice in this process."""
    for _ in range(1000):
        port = random.choice(PLANNED_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port in {PLANNED_PORTS.start}-{PLANNED_PORTS.stop - 1} on {host}")


class EtcdError(RuntimeError):
    code = "etcd_unavailable"


class EtcdServer:
    """One etcd member; `async with` starts it, waits until healthy, and stops it on exit."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        cluster: Mapping[str, str] | None = None,
        binary: str = "etcd",
        start_timeout_s: float = 20.0,
        prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.cluster = dict(cluster or {name: self.peer_url})
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.prefix = list(prefix)
        """Run before the binary (e.g. `ip netns exec NS`: it execs, so the pid is etcd's)."""
        self._process: asyncio.subprocess.Process | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        path = shutil.which(self.binary)
        if path is None:
            raise EtcdError(
                f"no {self.binary!r} on PATH: run scripts/setup.sh (installs Debian etcd-server)"
            )
        initial = ",".join(f"{n}={url}" for n, url in sorted(self.cluster.items()))
        return [
            *self.prefix,
            path,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token=callmesh-{'-'.join(sorted(self.cluster))}",
            "--logger=zap",
            "--log-level=error",
        ]

    async def start(self) -> None:
        if self._process is not None:
            raise EtcdError(f"etcd {self.name} is already running (pid {self._process.pid})")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_file = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self._process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdout=log_file,
            stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the parent, which stops etcd in order
        )
        log_file.close()
        log.info("etcd %s starting (pid %d) at %s", self.name, self._process.pid, self.client_url)

    async def wait_healthy(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.start_timeout_s
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                if self._process is not None and self._process.returncode is not None:
                    raise EtcdError(
                        f"etcd {self.name} exited with code {self._process.returncode}; "
                        f"see {self.data_dir}.log"
                    )
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{self.client_url}/health") as response:
                        body = await response.text()  # etcd says text/plain
                        if response.status == 200 and '"health":"true"' in body.replace(" ", ""):
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise EtcdError(
                        f"etcd {self.name} not healthy at {self.client_url} after "
                        f"{self.start_timeout_s:.0f} s; see {self.data_dir}.log"
                    )
                await asyncio.sleep(0.1)

    async def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("etcd %s stopped", self.name)

    async def __aenter__(self) -> EtcdServer:
        await self.start()
        try:
            await self.wait_healthy()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
