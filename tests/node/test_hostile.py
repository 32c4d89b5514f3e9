"""Hostile input: fuzzed HTTP requests against a running node's own OpenAPI document find no
server error (schemathesis), and hypothesis throws malformed config files and gRPC messages at
the parsers: every bad input gets a clear, typed error."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode

from node.calls_rpc import CallsServicer
from node.config import ConfigError, NodeConfig
from node.exchange import AgentAction, CallInfo, ReleaseReason, Reservation, Verdict
from node.gossip import Gossip
from node.localcluster import LocalCluster, SitePlan
from node.transport import PLAIN
from node.users import UsersFileError, users_from_toml
from protos import calls_pb2 as cpb
from protos import calls_pb2_grpc as cpb_grpc
from protos import registry_pb2 as rpb
from protos import registry_pb2_grpc as rpb_grpc
from registry.registry import Registry
from tests.node.test_cluster import Client

EXAMPLES_PER_OPERATION = 6
"""The short run of the default suite; `-m slow` runs test_fuzz_long with more."""


def fuzz(
    document: dict[str, Any], base_url: str, headers: dict[str, str], examples: int
) -> list[str]:
    """Every operation of the document with generated requests (valid and invalid ones): the
    5xx answers, as 'METHOD /path -> status body'."""
    schema = schemathesis.openapi.from_dict(document)
    found: list[str] = []
    sent: list[int] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"the served document is invalid: {result.err()}")
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode))
            def check(case: Any) -> None:
                response = case.call(base_url=base_url, headers=headers, timeout=10)
                sent.append(response.status_code)
                if response.status_code >= 500:
                    found.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} "
                        f"{response.text[:200]}"
                    )

            with contextlib.suppress(Unsatisfiable):  # nothing invalid to make for it
                check()
    assert len(sent) >= len(document["paths"]) * examples, "schemathesis sent too few requests"
    return found


async def _fuzz_node(tmp_path: Path, examples: int) -> None:
    async with (
        LocalCluster([SitePlan("site-a", "inhouse", 1)], tmp_path, fast=True) as cluster,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        client = Client(cluster, http)
        await client.all_ready(20)
        await client.login("site-a-n1", "ann")
        status, document = await client.get("site-a-n1", "/openapi.json")
        assert status == 200
        base = f"http://{cluster.plans['site-a-n1'].http}"
        admin = {"Authorization": f"Bearer {client.token}"}
        errors = await asyncio.to_thread(fuzz, document, base, admin, examples)
        errors += await asyncio.to_thread(fuzz, document, base, {}, max(2, examples // 3))
        assert errors == []
        assert await client.ready("site-a-n1"), "the node is still serving"


async def test_fuzzed_requests_get_no_server_error(tmp_path: Path) -> None:
    await _fuzz_node(tmp_path, EXAMPLES_PER_OPERATION)


@pytest.mark.slow
async def test_fuzz_long(tmp_path: Path) -> None:
    await _fuzz_node(tmp_path, 60)


# -- config files ---------------------------------------------------------------------------------

toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.dictionaries(
        st.sampled_from(
            [
                "node_id",
                "site",
                "etcd_endpoints",
                "trust",
                "http_port",
                "lease_ttl_s",
                "remote_gateways",
                "users_file",
                "site_key",
                "site_keys_file",
                "tls_cert",
                "partner_scopes",
                "caller_rate_per_s",
                "etcd_ca",
                "unknown_key",
            ]
        ),
        toml_values,
        max_size=8,
    )
)
def test_any_config_mapping_loads_or_fails_with_a_config_error(raw: dict[str, Any]) -> None:
    assert _refusal(NodeConfig.from_mapping, raw) != ""


def _refusal(load: Callable[[Any], object], raw: Any) -> str | None:
    """None when `load` takes `raw`; the message of its ConfigError when not (anything else
    raised fails the test)."""
    try:
        load(raw)
    except ConfigError as error:  # UsersFileError is one
        return str(error)
    return None


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_any_users_file_text_parses_or_fails_with_a_users_file_error(text: str) -> None:
    assert _refusal(users_from_toml, text) != ""


@settings(max_examples=100, deadline=None)
@given(
    table=st.dictionaries(
        st.sampled_from(["role", "password", "tier", "capacity", "skills", "shell"]),
        toml_values,
        max_size=5,
    )
)
def test_any_user_table_is_a_user_or_a_users_file_error(table: dict[str, Any]) -> None:
    assert _refusal(users_from_toml, _toml({"users": {"bob": table}})) != ""
    assert issubclass(UsersFileError, ConfigError)


def _toml(value: dict[str, Any]) -> str:
    """A tiny TOML writer for the generated tables (inline tables and arrays only)."""

    def one(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return '""'
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return tomllib_string(v)
        if isinstance(v, list):
            return "[" + ", ".join(one(x) for x in v) + "]"
        return "{" + ", ".join(f"{tomllib_string(k)} = {one(x)}" for k, x in v.items()) + "}"

    lines = []
    for section, tables in value.items():
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{tomllib_string(k)} = {one(v)}" for k, v in table.items()]
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return ""  # floats like inf: skip rather than test the writer
    return text


def tomllib_string(text: str) -> str:
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in text)
    return f'"{escaped}"'


# -- gRPC messages --------------------------------------------------------------------------------


class NoDesk:
    async def reserve(
        self, call: CallInfo, agent_id: str, ring_timeout_s: float, wrap_up_s: float
    ) -> Reservation:
        return Reservation(False, "not_here", 0)

    async def release(self, call_id: str, agent_id: str, reason: ReleaseReason) -> None:
        pass

    async def holds(self, call_id: str, agent_id: str, epoch: int) -> Verdict:
        return Verdict(False, "no_session")


class NoOwner:
    async def report(
        self,
        call_id: str,
        agent_id: str,
        action: AgentAction,
        epoch: int,
        *,
        queue: str = "",
        notes: str = "",
    ) -> Verdict:
        return Verdict(False, "call_gone")

    async def pull(self, agent_id: str, home_node: str, queue: str) -> bool:
        return False


METHODS: dict[str, Any] = {
    "/callmesh.registry.v1.Gossip/Push": rpb.Ack,
    "/callmesh.registry.v1.Gossip/Reconcile": rpb.Reconciliation,
    "/callmesh.calls.v1.Calls/Reserve": cpb.ReserveReply,
    "/callmesh.calls.v1.Calls/Release": cpb.Empty,
    "/callmesh.calls.v1.Calls/Report": cpb.AgentEventReply,
    "/callmesh.calls.v1.Calls/Pull": cpb.PullReply,
    "/callmesh.calls.v1.Calls/Holds": cpb.HoldsReply,
}
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INTERNAL,  # protobuf could not parse the bytes at all (gRPC's own answer)
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # larger than the message limit
}


def _raw(message: bytes) -> bytes:
    return message


async def test_malformed_and_unknown_grpc_messages_get_errors_and_the_node_keeps_serving() -> None:
    registry = Registry("n1")

    def calls(server: grpc.aio.Server) -> None:
        cpb_grpc.add_CallsServicer_to_server(CallsServicer(NoDesk, NoOwner), server)

    valid_delta = rpb.Delta(sender="x", agents=[rpb.AgentRecord(agent_id="a", home_node="h")])
    unknown_fields = valid_delta.SerializeToString() + bytes([0xF8, 0x07, 0x01])  # field 127
    payloads = [
        b"",
        b"\x00" * 64,
        b"\xff" * 64,
        unknown_fields,
        rpb.Delta(sender="x" * 100_000).SerializeToString(),
        cpb.ReserveRequest(agent_id="../../x", call=cpb.CallInfo(call_id="")).SerializeToString(),
        cpb.ReserveRequest(
            agent_id="a",
            call=cpb.CallInfo(call_id="c", owner_node="o", queue="q", notes="n" * 10_000),
        ).SerializeToString(),
        cpb.AgentEvent(
            call_id="c", agent_id="a", action=cpb.AgentAction.ValueType(99)
        ).SerializeToString(),
        b"\x0a" + b"\xff" * 10,  # a length prefix past the end
    ]
    answers: list[tuple[str, bytes, grpc.StatusCode, str]] = []
    async with (
        Gossip(registry, "127.0.0.1", 0, services=[calls], transport=PLAIN) as gossip,
        grpc.aio.insecure_channel(gossip.address) as channel,
    ):
        for method, reply in METHODS.items():
            call = channel.unary_unary(
                method, request_serializer=_raw, response_deserializer=reply.FromString
            )
            for payload in payloads:
                try:
                    await call(payload, timeout=2)
                except grpc.aio.AioRpcError as error:
                    answers.append((method, payload[:20], error.code(), str(error.details())))
        for method, payload, code, details in answers:
            # gRPC answers bytes that are no protobuf message itself, with UNKNOWN
            undecodable = code == grpc.StatusCode.UNKNOWN and "Error parsing message" in details
            assert code in ANSWERS or undecodable, (method, payload, code, details)
        oversized = channel.unary_unary(
            "/callmesh.registry.v1.Gossip/Push",
            request_serializer=_raw,
            response_deserializer=rpb.Ack.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await oversized(b"\x0a\x05hello" * 2_500_000, timeout=5)  # 17.5 MB > the limit
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub = rpb_grpc.GossipStub(channel)
        request = rpb.FullStateRequest(requester="probe")
        chunks = [c async for c in stub.FullState(request, timeout=2)]
        assert chunks, "the node still answers"
