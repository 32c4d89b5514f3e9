"""The WAN delay interceptor on node-to-node gRPC: delayed peers only, both ways."""

from __future__ import annotations

import time

import grpc
import pytest

from node.transport import Transport
from node.wan import WanDelay


def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
    for _ in range(3):
        yield request


async def _round_trip(transport: Transport, address: str) -> tuple[float, list[bytes]]:
    async with transport.channel(address) as channel:
        unary = channel.unary_unary("/test.Echo/Echo")
        stream = channel.unary_stream("/test.Echo/Stream")
        start = time.perf_counter()
        answer = await unary(b"ping")
        elapsed = time.perf_counter() - start
        assert answer == b"ping"
        streamed = [message async for message in stream(b"x")]
    return elapsed, streamed


async def test_delay_applies_to_the_named_peers_only() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        delayed = Transport(wan=WanDelay(60.0, frozenset({address})))
        elapsed, streamed = await _round_trip(delayed, address)
        assert elapsed >= 0.12  # 60 ms out and 60 ms back
        assert streamed == [b"x", b"x", b"x"]
        elsewhere = Transport(wan=WanDelay(60.0, frozenset({"127.0.0.1:1"})))
        assert WanDelay(60.0, frozenset({"127.0.0.1:1"})).interceptors(address) == []
        _, streamed = await _round_trip(elsewhere, address)
        assert streamed == [b"x", b"x", b"x"]
    finally:
        await server.stop(None)


def test_wan_delay_is_checked() -> None:
    with pytest.raises(ValueError, match="wan_delay_ms"):
        WanDelay(-1, frozenset())


def test_config_fields() -> None:
    from node.config import ConfigError, NodeConfig

    base = {"node_id": "n1", "site": "site-a", "etcd_endpoints": ["http://127.0.0.1:2379"]}
    config = NodeConfig.from_mapping(
        {**base, "wan_delay_ms": 40, "wan_peers": ["127.0.0.1:7071", "127.0.0.1:7072"]}
    )
    assert config.wan_delay_ms == 40.0
    assert config.wan_peers == ("127.0.0.1:7071", "127.0.0.1:7072")
    assert NodeConfig.from_mapping(base).wan_delay_ms == 0
    with pytest.raises(ConfigError, match="wan_peers"):
        NodeConfig.from_mapping({**base, "wan_peers": ["not an address"]})
    with pytest.raises(ConfigError, match="wan_delay_ms"):
        NodeConfig.from_mapping({**base, "wan_delay_ms": 20_000})
