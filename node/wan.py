"""Test-only wide-area delay on node-to-node gRPC: `WanDelay` adds a one-way delay to the calls to
chosen peers (the other sites' nodes), e.g. 40 ms each way between sites.

`Transport` gives every channel to a delayed peer these client interceptors: a request leaves
`delay_ms` late and its answer arrives `delay_ms` late again; a streamed answer (a gossip full
state) is delayed once. Gossip and the call exchange share the channels, so both feel the WAN.
Cut links (partitions) are fault injection's business (node/faults.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True, slots=True)
class WanDelay:
    delay_ms: float
    """One-way delay added to every call to one of `peers`."""
    peers: frozenset[str]
    """gRPC addresses (host:port) behind the emulated WAN."""

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= 10_000:
            raise ValueError(f"wan_delay_ms must be in 0-10000, got {self.delay_ms}")

    def interceptors(self, address: str) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors of a channel to `address`: none unless it is behind the WAN."""
        if self.delay_ms == 0 or address not in self.peers:
            return []
        delay_s = self.delay_ms / 1000
        return [_UnaryUnary(delay_s), _UnaryStream(delay_s)]


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        await asyncio.sleep(self._delay_s)
        call = await continuation(details, request)
        response = await call
        await asyncio.sleep(self._delay_s)
        return response


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        await asyncio.sleep(self._delay_s)
        call = await continuation(details, request)
        return _delayed(call, self._delay_s)


async def _delayed(call: AsyncIterator[Any], delay_s: float) -> AsyncIterator[Any]:
    first = True
    async for message in call:
        if first:
            await asyncio.sleep(delay_s)
            first = False
        yield message
