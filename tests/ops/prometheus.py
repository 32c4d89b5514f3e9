"""A real Prometheus (Debian's `prometheus`) as a child process on loopback, for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from node.etcd_server import free_port
from tests.ops.tools import tool


class Prometheus:
    """`async with Prometheus(folder, targets)`: scrapes `targets` (host:port) every second as
    job "callmesh", with `rule_files` loaded; stopped by its PID on exit."""

    def __init__(self, folder: Path, targets: Sequence[str], rule_files: Sequence[Path]) -> None:
        self.folder = folder
        self.targets = list(targets)
        self.rule_files = [str(path) for path in rule_files]
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def __aenter__(self) -> Prometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": self.rule_files,
            "scrape_configs": [
                {"job_name": "callmesh", "static_configs": [{"targets": self.targets}]}
            ],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (self.folder / "prometheus.log").open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                tool("prometheus"),
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            await self._wait_ready(20)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.close()
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()  # this PID only
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _wait_ready(self, within_s: float) -> None:
        assert self._http is not None
        assert self._process is not None
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise RuntimeError(f"prometheus exited; see {self.folder / 'prometheus.log'}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"{self.url}/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"prometheus not ready in {within_s} s; see {self.folder}")

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH: the `data` of a successful answer."""
        assert self._http is not None
        async with self._http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: labels (sorted pairs) -> value."""
        data = await self.api("query", query=promql)
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in data["result"]
        }
