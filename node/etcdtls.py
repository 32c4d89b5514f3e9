"""aetcd over TLS: the etcd client dials plain gRPC only, so this client makes the same connection
with a TLS channel and a client certificate (etcd's --client-cert-auth). node/etcd.py uses it for
https:// endpoints. It repeats aetcd.Client.connect (aetcd 1.x) with one change: the channel."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import aetcd
import grpc
from aetcd import rpc, watcher


class TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd has no type hints
    def __init__(
        self, host: str, port: int, credentials: grpc.ChannelCredentials, **kwargs: Any
    ) -> None:
        super().__init__(host, port, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(
                target, self._credentials, options=list(self._options.items())
            )
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


Credentials: TypeAlias = grpc.ChannelCredentials
"""What Etcd(tls=...) takes: the site's etcd CA, this node's client certificate and key."""


def credentials(ca: bytes, cert: bytes, key: bytes) -> Credentials:
    made: Credentials = grpc.ssl_channel_credentials(ca, key, cert)
    return made
