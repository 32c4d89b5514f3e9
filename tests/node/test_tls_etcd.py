"""A site's etcd over TLS with client certificates (per-site credentials): the node's etcd
adapter talks to a real etcd that demands a certificate of the site's etcd CA."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.ca import init_ca, issue
from node.etcd import Etcd, EtcdUnavailable
from node.etcd_server import free_port
from node.etcdtls import credentials
from registry.records import Trust

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd binary")


@contextlib.asynccontextmanager
async def tls_etcd(root: Path) -> AsyncIterator[str]:
    """One etcd member whose clients need a certificate from root/site-a-etcd's CA."""
    ca = root / "site-a-etcd"
    init_ca(ca, name="site-a etcd CA")
    cert, key = issue(ca, "etcd-0", "site-a", Trust.INHOUSE)
    client_port, peer_port = free_port(), free_port()
    url, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    process = await asyncio.create_subprocess_exec(
        "etcd",
        "--name=e0",
        f"--data-dir={root / 'etcd-data'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=e0={peer}",
        f"--cert-file={cert}",
        f"--key-file={key}",
        "--client-cert-auth",
        f"--trusted-ca-file={ca / 'ca.pem'}",
        "--log-level=error",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(root / "etcd.log").open("ab"),
    )
    try:
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_the_adapter_reaches_a_tls_etcd_only_with_the_sites_client_certificate(
    tmp_path: Path,
) -> None:
    async with tls_etcd(tmp_path) as url:
        ca = tmp_path / "site-a-etcd"
        cert, key = issue(ca, "callmesh-0", "site-a", Trust.INHOUSE)
        good = credentials((ca / "ca.pem").read_bytes(), cert.read_bytes(), key.read_bytes())
        async with Etcd([url], lease_ttl_s=2, connect_timeout_s=10, tls=good) as etcd:
            await etcd.put("/callmesh/test", b"over tls")
            got = await etcd.get("/callmesh/test")
            assert got is not None
            assert got.value == b"over tls"
        other = tmp_path / "site-b-etcd"  # another site's credentials
        init_ca(other)
        cert_b, key_b = issue(other, "callmesh-0", "site-b", Trust.INHOUSE)
        wrong = credentials((ca / "ca.pem").read_bytes(), cert_b.read_bytes(), key_b.read_bytes())
        with pytest.raises(EtcdUnavailable):
            async with Etcd([url], lease_ttl_s=2, connect_timeout_s=2, tls=wrong):
                pass
