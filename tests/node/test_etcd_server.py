"""The embedded etcd: a real etcd child process, started healthy and stopped without a trace."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from node.etcd_server import EtcdError, EtcdServer


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_starts_healthy_serves_and_stops(tmp_path: Path) -> None:
    async with EtcdServer("t1", tmp_path / "t1") as etcd:
        pid = etcd.pid
        assert pid is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{etcd.client_url}/version") as response,
        ):
            assert response.status == 200
            assert "etcdserver" in await response.text()
    assert not alive(pid)


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EtcdError, match="no 'etcd-missing' on PATH"):
        async with EtcdServer("t2", tmp_path / "t2", binary="etcd-missing"):
            pass


async def test_a_member_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    with pytest.raises(EtcdError, match="t3 exited with code 1"):
        async with EtcdServer("t3", tmp_path / "t3", binary="false"):
            pass
