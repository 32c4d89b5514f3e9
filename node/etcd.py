"""The site's etcd, seen through aetcd: the only module of callmesh that imports aetcd.

aetcd is thin (DESIGN.md section 6), so `Etcd` adds what a node needs:

- endpoint fail-over: a request that fails with a connection error is retried on the next
  endpoint with a small exponential backoff, within `request_timeout_s`; then `EtcdUnavailable`;
- a lease kept alive every TTL/3 by a task the `Etcd` owns; when the lease is lost the node is
  fenced (`lease_id` is None, `on_lease_lost()`) until a new lease is granted
  (`on_lease_granted(id)`);
- watches that resume from the last seen revision + 1 after a disconnect, or raise
  `WatchCompacted` when etcd no longer has that revision.

Mutual exclusion comes from `put_if` (a transaction on a key's mod revision), never from aetcd's
lock(). What aetcd does that this module works around:

- its gRPC channel keeps gRPC's reconnect backoff (up to 2 minutes), so after an outage a channel
  fails for seconds after etcd is back: channels here cap the backoff at 1 s;
- an etcd error it has no class for (such as "requested lease not found") is a bare
  `aetcd.ClientError` carrying only the message;
- `refresh_lease` answers TTL 0, not an error, for a lease etcd no longer has;
- a broken watch stream fails every watch of that client's shared watcher, so each watch here
  gets a client (gRPC channel) of its own, closed when the watch ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc

from node import metrics
from node.etcdtls import TlsClient

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0
_LEASE_SAFE_FRACTION = 0.9  # fence a little before etcd could expire the lease
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,  # etcd refuses pings more often than every 5 s
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
}
# Errors after which the same request may succeed on another endpoint, or later.
_CONNECTION_ERRORS = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, TimeoutError)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int  # 0 when no lease is attached


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: EventKind
    key: str
    value: bytes  # empty for DELETE
    mod_revision: int  # for DELETE, the revision of the deletion


class EtcdUnavailable(Exception):
    """No endpoint answered in time."""

    code = "etcd_unavailable"


class EtcdFenced(Exception):
    """A leased write was asked for while this node holds no live lease."""

    code = "etcd_fenced"


class EtcdRefused(Exception):
    """etcd answered with an error this module does not translate (bad request, quota, ...)."""

    code = "etcd_refused"


class _LeaseNotFound(EtcdRefused):
    pass


class WatchCompacted(Exception):
    """etcd compacted the history the watch needed: re-read with get_prefix and watch again."""

    code = "etcd_watch_compacted"

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(
            f"etcd compacted its history below revision {compact_revision}; "
            f"the watch needed revision {revision}"
        )
        self.revision = revision
        self.compact_revision = compact_revision


def _ignore_lost() -> None:
    pass


def _ignore_granted(lease_id: int) -> None:
    pass


class Etcd:
    """The site's etcd: one client, a lease kept alive, watches that survive disconnects.

    Use as `async with Etcd(endpoints) as etcd:`. The callbacks run on the event loop (mostly
    in the keep-alive task) and must not block: `on_lease_granted(id)` for each lease granted
    (the first during `__aenter__`); `on_lease_lost()` once per lost lease, once `lease_id` is
    already None.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        lease_ttl_s: int = 5,
        request_timeout_s: float = 2.0,
        connect_timeout_s: float = 10.0,
        on_lease_lost: Callable[[], None] = _ignore_lost,
        on_lease_granted: Callable[[int], None] = _ignore_granted,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self._tls = tls  # TLS credentials (node/etcdtls.py) for https endpoints
        for endpoint in endpoints:
            if endpoint.startswith("https://") != (tls is not None):
                raise ValueError(
                    f"etcd endpoint {endpoint!r}: expected http://host:port, or https://host:port "
                    "with TLS credentials"
                )
        if lease_ttl_s < 1 or request_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("etcd lease TTL and timeouts must be positive")
        self._endpoints = tuple(endpoints)
        self._addresses = tuple(_parse_endpoint(e) for e in endpoints)
        self._lease_ttl_s = lease_ttl_s
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._on_lease_lost = on_lease_lost
        self._on_lease_granted = on_lease_granted
        self._clients: dict[int, Any] = {}  # endpoint index -> aetcd.Client, made on first use
        self._current = 0  # the endpoint requests go to first
        self._watch_clients: set[Any] = set()
        self._open = False
        self._closing = False
        self._lease_id: int | None = None
        self._lease_deadline = 0.0  # loop time until which the lease is surely alive
        self._refresh_at = 0.0
        self._stale_lease: int | None = None  # lost, maybe still alive in etcd: revoke it
        self._wake = asyncio.Event()
        self._keep_alive_task: asyncio.Task[None] | None = None

    @property
    def lease_id(self) -> int | None:
        """The live lease, or None while fenced."""
        return self._lease_id

    @property
    def has_lease(self) -> bool:
        """A live lease whose last refresh is recent enough: false at once after a long pause
        (SIGSTOP, a stalled loop), before the keep-alive task has run and noticed."""
        return (
            self._lease_id is not None and asyncio.get_running_loop().time() < self._lease_deadline
        )

    async def __aenter__(self) -> Etcd:
        if self._open or self._closing:
            raise RuntimeError("an Etcd object is entered once")
        self._open = True
        try:
            self._notify_granted(await self._grant(budget_s=self._connect_timeout_s))
        except BaseException:
            await self._close_clients()
            self._open = False
            raise
        self._keep_alive_task = asyncio.create_task(self._keep_alive(), name="etcd keep-alive")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        task, self._keep_alive_task = self._keep_alive_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        for client in list(self._watch_clients):
            await client.close()  # ends the watches
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is not None:
            try:
                gone = await self._revoke(lease_id)
                log.info("etcd lease %d %s", lease_id, "revoked" if gone else "already gone")
            except (EtcdUnavailable, EtcdRefused) as error:
                log.warning(
                    "etcd lease %d not revoked (%s); it expires on its own", lease_id, error
                )
        await self._close_clients()
        self._open = False

    async def get(self, key: str) -> KeyValue | None:
        got = await self._request(f"get {key}", lambda c: c.get(key.encode()))
        return None if got is None else _key_value(got)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """The keys under prefix, in key order, and the revision they were read at."""
        got = await self._request(f"get {prefix}*", lambda c: c.get_prefix(prefix.encode()))
        return [_key_value(kv) for kv in got], int(got.header.revision)

    async def put(self, key: str, value: bytes, *, leased: bool = False) -> int:
        """Write key; with leased=True it vanishes with this node's lease. Returns the revision."""
        what = f"put {key}"
        lease = self._require_lease(what) if leased else None
        put = await self._fenced_if_lost(
            what,
            lease,
            self._request(what, lambda c: c.put(key.encode(), value, lease=lease), lease),
        )
        return int(put.header.revision)

    async def delete(self, key: str) -> None:
        await self._request(f"delete {key}", lambda c: c.delete(key.encode()))

    async def delete_if(self, key: str, *, mod_revision: int) -> bool:
        """In one transaction: delete key if it is at mod_revision; whether it was deleted."""
        what = f"delete {key} if at revision {mod_revision}"

        async def transaction(client: Any) -> bool:
            succeeded, _ = await client.transaction(
                compare=[client.transactions.mod(key.encode()) == mod_revision],
                success=[client.transactions.delete(key.encode())],
                failure=[],
            )
            return bool(succeeded)

        return await self._request(what, transaction)

    async def put_if(
        self,
        key: str,
        value: bytes,
        *,
        mod_revision: int,
        leased: bool = False,
        also: Sequence[tuple[str, bytes, bool]] = (),
        guards: Sequence[tuple[str, int]] = (),
    ) -> bool:
        """In one transaction: if key is at mod_revision (0: absent), and every (key, revision) of
        `guards` too, put it and `also`.

        `also` holds (key, value, leased) triples. Returns whether the transaction applied. When
        an attempt failed in a way that may have applied it, and the retry finds key moved, key
        is read back: holding exactly this value (and this lease) counts as success.
        """
        what = f"put {key} if at revision {mod_revision}"
        keys = [key, *(k for k, _, _ in also)]
        if len(set(keys)) != len(keys):
            raise ValueError(f"etcd {what}: a key appears twice ({', '.join(keys)})")
        needs_lease = leased or any(lease for _, _, lease in also)
        lease = self._require_lease(what) if needs_lease else None
        attempts = 0

        async def transaction(client: Any) -> bool:
            nonlocal attempts
            attempts += 1
            writes = [(key, value, leased), *also]
            succeeded, _ = await client.transaction(
                compare=[
                    client.transactions.mod(k.encode()) == r
                    for k, r in [(key, mod_revision), *guards]
                ],
                success=[
                    client.transactions.put(k.encode(), v, lease if on_lease else None)
                    for k, v, on_lease in writes
                ],
                failure=[],
            )
            return bool(succeeded)

        if await self._fenced_if_lost(what, lease, self._request(what, transaction, lease)):
            return True
        if attempts == 1:
            return False
        now = await self.get(key)
        return (
            now is not None
            and now.value == value
            and now.lease == (lease if leased else 0)
            and now.mod_revision > mod_revision
        )

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events under prefix from start_revision on, in order, across disconnects.

        Ends when the Etcd exits. Close it with `contextlib.aclosing` when done early.
        """
        if start_revision < 1:
            raise ValueError(f"etcd watch {prefix}: start_revision must be >= 1")
        if not self._open or self._closing:
            raise RuntimeError("etcd is not open: use `async with Etcd(...)`")
        next_revision = start_revision
        index = self._current
        delay = _BACKOFF_FIRST_S
        resuming = False
        while not self._closing:
            client = self._new_client(index)
            self._watch_clients.add(client)
            reason = "the stream ended"
            try:
                watch = await client.watch_prefix(prefix.encode(), start_revision=next_revision)
                if resuming:
                    log.info("etcd watch %s re-watching from %d", prefix, next_revision)
                delay = _BACKOFF_FIRST_S
                async for raw in watch:
                    event = _watch_event(raw)
                    next_revision = event.mod_revision + 1
                    yield event
            except aetcd.RevisionCompactedError as error:
                raise WatchCompacted(next_revision, int(error.compacted_revision)) from None
            except aetcd.ClientError as error:
                reason = _describe(error)
            finally:
                self._watch_clients.discard(client)
                await client.close()
            if self._closing:
                return
            log.warning(
                "etcd watch %s lost on %s (%s); re-watching from %d in %.2f s",
                prefix,
                self._endpoints[index],
                reason,
                next_revision,
                delay,
            )
            metrics.ETCD_WATCH_RESTARTS.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
            index = (index + 1) % len(self._addresses)
            resuming = True

    # Requests and fail-over

    @metrics.timed_etcd_request
    async def _request(
        self,
        what: str,
        call: Callable[[Any], Awaitable[_T]],
        lease: int | None = None,
        *,
        budget_s: float | None = None,
    ) -> _T:
        """call(client) on the current endpoint; on a connection error, on the next one."""
        if not self._open:
            raise RuntimeError("etcd is not open: use `async with Etcd(...)`")
        loop = asyncio.get_running_loop()
        budget = self._request_timeout_s if budget_s is None else budget_s
        deadline = loop.time() + budget
        per_attempt = max(self._request_timeout_s / len(self._addresses), 0.2)
        delay = _BACKOFF_FIRST_S
        failures: list[str] = []
        while True:
            index = self._current
            try:
                async with asyncio.timeout(min(per_attempt, max(deadline - loop.time(), 0.01))):
                    return await call(self._client(index))
            except _CONNECTION_ERRORS as error:
                failures.append(f"{self._endpoints[index]}: {_describe(error)}")
                self._fail_over(index, error)
            except aetcd.ClientError as error:
                if lease is not None and "lease not found" in str(error):
                    raise _LeaseNotFound(f"etcd {what}: lease {lease} not found") from error
                raise EtcdRefused(f"etcd {what} refused: {_describe(error)}") from error
            if loop.time() + delay >= deadline:
                raise EtcdUnavailable(
                    f"etcd {what} failed on every endpoint within {budget:.1f} s: "
                    + "; ".join(failures)
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    def _fail_over(self, index: int, error: BaseException) -> None:
        if self._current != index or len(self._addresses) == 1:
            return  # another request moved on already, or there is nowhere to go
        metrics.ETCD_FAILOVERS.inc()
        self._current = (index + 1) % len(self._addresses)
        log.warning(
            "etcd endpoint %s failed (%s); requests go to %s",
            self._endpoints[index],
            _describe(error),
            self._endpoints[self._current],
        )

    def _client(self, index: int) -> Any:
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._new_client(index)
        return client

    def _new_client(self, index: int) -> Any:
        host, port = self._addresses[index]
        if self._tls is not None:  # https endpoints: TLS with this node's client certificate
            return TlsClient(
                host,
                port,
                self._tls,
                timeout=self._request_timeout_s,
                options=dict(_CHANNEL_OPTIONS),
            )
        return aetcd.Client(
            host, port, timeout=self._request_timeout_s, options=dict(_CHANNEL_OPTIONS)
        )

    async def _close_clients(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _require_lease(self, what: str) -> int:
        lease_id = self._lease_id
        if lease_id is None:
            raise EtcdFenced(f"etcd {what} needs a lease; this node is fenced (no live lease)")
        return lease_id

    async def _fenced_if_lost(self, what: str, lease: int | None, request: Awaitable[_T]) -> _T:
        """Await request; if etcd no longer has the lease it used, fence and raise EtcdFenced."""
        try:
            return await request
        except _LeaseNotFound as error:
            if lease is not None:
                self._lose_lease(lease, "etcd no longer has it")
            raise EtcdFenced(f"etcd {what}: lease {lease} is gone; this node is fenced") from error

    # The lease

    async def _keep_alive(self) -> None:
        """Refresh the lease every TTL/3; when it is lost, fence and grant a new one."""
        while not self._closing:  # also ends the loop if a library swallowed our cancel
            try:
                if self._lease_id is None:
                    await self._regain_lease()
                else:
                    await self._wait(self._refresh_at - asyncio.get_running_loop().time())
                    if self._lease_id is not None:
                        await self._refresh(self._lease_id)
            except Exception:
                log.exception("etcd lease keep-alive failed unexpectedly; going on")
                await asyncio.sleep(self._lease_ttl_s / 3)

    async def _wait(self, delay_s: float) -> None:
        """Sleep delay_s, or less if the lease is lost meanwhile."""
        if delay_s > 0:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives as the
            # event is set (gh-86296), and __aexit__ would wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wake.wait()
        self._wake.clear()

    async def _refresh(self, lease_id: int) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        if sent >= self._lease_deadline:
            self._lose_lease(lease_id, "no keep-alive answer before it could expire")
            return

        async def keep_alive_once(client: Any) -> int:
            reply = await client.refresh_lease(lease_id)
            if reply is None:
                raise aetcd.ConnectionFailedError("keep-alive stream closed without an answer")
            return int(reply.TTL)

        what = f"lease {lease_id} keep-alive"
        try:
            ttl = await self._request(what, keep_alive_once, budget_s=self._lease_deadline - sent)
        except EtcdUnavailable as error:
            if loop.time() >= self._lease_deadline - _BACKOFF_FIRST_S:
                self._lose_lease(lease_id, f"no keep-alive answer before it could expire: {error}")
            else:
                log.warning("etcd lease %d keep-alive failed (%s); retrying", lease_id, error)
                await asyncio.sleep(_BACKOFF_FIRST_S)
            return
        if self._lease_id != lease_id:
            return
        if ttl <= 0:
            self._lose_lease(lease_id, "etcd says it expired")
            return
        now, deadline = loop.time(), sent + ttl * _LEASE_SAFE_FRACTION
        if self._lease_deadline <= now < deadline:
            # has_lease was false meanwhile, with no loss declared: the doubt ends in a renewal
            log.warning(
                "etcd lease %d kept alive %.3f s after its deadline (has_lease was false)",
                lease_id,
                now - self._lease_deadline,
            )
        self._lease_deadline = deadline
        self._refresh_at = sent + self._lease_ttl_s / 3

    def _lose_lease(self, lease_id: int, reason: str) -> None:
        if self._lease_id != lease_id:
            return  # already lost
        self._lease_id = None
        self._stale_lease = lease_id
        metrics.ETCD_LEASES_LOST.inc()
        log.warning(
            "etcd lease %d lost (%s); fenced until a new lease is granted", lease_id, reason
        )
        try:
            self._on_lease_lost()
        except Exception:
            log.exception("etcd lease %d on_lease_lost callback failed", lease_id)
        self._wake.set()

    async def _regain_lease(self) -> None:
        delay = _BACKOFF_FIRST_S
        while self._lease_id is None and not self._closing:
            try:
                if self._stale_lease is not None:
                    await self._revoke(self._stale_lease)
                    self._stale_lease = None
                self._notify_granted(await self._grant(budget_s=self._request_timeout_s))
                return
            except (EtcdUnavailable, EtcdRefused) as error:
                log.warning("etcd lease grant failed (%s); retrying in %.2f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _grant(self, *, budget_s: float) -> int:
        sent = asyncio.get_running_loop().time()
        lease = await self._request(
            "lease grant", lambda c: c.lease(self._lease_ttl_s), budget_s=budget_s
        )
        lease_id, ttl = int(lease.id), int(lease.ttl)
        self._lease_deadline = sent + ttl * _LEASE_SAFE_FRACTION
        self._refresh_at = sent + self._lease_ttl_s / 3
        self._lease_id = lease_id
        log.info("etcd lease %d granted (ttl %d s)", lease_id, ttl)
        return lease_id

    def _notify_granted(self, lease_id: int) -> None:
        try:
            self._on_lease_granted(lease_id)
        except Exception:
            log.exception("etcd lease %d on_lease_granted callback failed", lease_id)

    async def _revoke(self, lease_id: int) -> bool:
        """Revoke the lease; False if etcd had no such lease any more."""
        try:
            await self._request(
                f"lease {lease_id} revoke", lambda c: c.revoke_lease(lease_id), lease_id
            )
        except _LeaseNotFound:
            return False
        return True


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"etcd endpoint {endpoint!r}: expected http(s)://host:port")
    return parts.hostname, parts.port


def _key_value(raw: Any) -> KeyValue:
    return KeyValue(
        key=bytes(raw.key).decode(),
        value=bytes(raw.value),
        mod_revision=int(raw.mod_revision),
        lease=int(raw.lease),
    )


def _watch_event(raw: Any) -> WatchEvent:
    kind = EventKind.PUT if raw.kind == "PUT" else EventKind.DELETE
    return WatchEvent(
        kind=kind,
        key=bytes(raw.kv.key).decode(),
        value=bytes(raw.kv.value),
        mod_revision=int(raw.kv.mod_revision),
    )


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, TimeoutError):
        text = "no answer in time"
    return text if len(text) <= 160 else text[:157] + "..."
