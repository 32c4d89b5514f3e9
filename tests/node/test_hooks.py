"""The hook contract (node/hooks.py) and running hooks (node/hookrunner.py): the action parser,
entry points in the queue file, real programs that answer, hang, crash, print garbage or too
much, and the same contract over a webhook on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from node.entries import EntryPoint, HookConfigError
from node.hookrunner import HookResult, ProgramHook, WebHook
from node.hooks import (
    Announce,
    Collect,
    Hangup,
    HookEvent,
    HookOutputError,
    Play,
    Queue,
    Record,
    Set,
    Voicemail,
    parse_actions,
)
from node.queues import QueueConfigError, QueueFile, parse_deployment

MENU = Path(__file__).resolve().parents[2] / "hooks" / "menu.awk"


# -- the parser ---------------------------------------------------------------------------------


def test_every_action_parses_from_json_lines() -> None:
    output = b"""
{"action": "play", "prompt": "welcome"}
{"action": "collect", "max": 4, "timeout_s": 6, "prompt": "menu", "end": "#"}

{"action": "queue", "queue": "billing"}
{"action": "transfer", "queue": "escalations"}
{"action": "set", "skills": {"english": 2, "billing": 3}, "priority": 7, "customer": {"t": "gold"}}
{"action": "announce"}
{"action": "record", "on": false}
{"action": "voicemail"}
{"action": "hangup", "reason": "closed"}
"""
    assert parse_actions(output) == (
        Play("welcome"),
        Collect(4, 6.0, "menu", "#"),
        Queue("billing"),
        Queue("escalations", transfer=True),
        Set((("billing", 3), ("english", 2)), 7, (("t", "gold"),)),
        Announce(),
        Record(False),
        Voicemail(),
        Hangup("closed"),
    )


def test_a_json_array_is_the_same_answer() -> None:
    lines = b'{"action": "play", "prompt": "menu"}\n{"action": "queue", "queue": "sales"}\n'
    array = b'[{"action": "play", "prompt": "menu"}, {"action": "queue", "queue": "sales"}]'
    assert parse_actions(lines) == parse_actions(array) == (Play("menu"), Queue("sales"))
    assert parse_actions(b"") == ()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b"hello", "line 1 is not JSON"),
        (b'{"action": "dance"}', "unknown action 'dance'"),
        (b'{"action": "play"}', "prompt must be a name"),
        (b'{"action": "play", "prompt": "../etc/passwd"}', "prompt must be a name"),
        (b'{"action": "queue", "queue": "bad queue"}', "queue: queue must be"),
        (b'{"action": "queue", "queue": "x", "colour": 1}', "unknown keys ['colour']"),
        (b'{"action": "collect", "max": 0}', "collect: max must be an integer in 1-32"),
        (b'{"action": "collect", "timeout_s": 1e999}', "collect: timeout_s"),
        (b'{"action": "set", "skills": {"billing": 11}}', "level"),
        (b'{"action": "set", "priority": true}', "set: priority"),
        (b'{"action": "set"}', "name at least one"),
        (b'{"action": "record", "on": "yes"}', "on must be true or false"),
        (b'["not an object"]', "action 1: must be a JSON object"),
        (b'{"action": "announce"}\n[1]', "action 2"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"action": "announce"}\n' * 51, "at most 50 actions"),
    ],
)
def test_a_bad_answer_says_what_is_wrong(output: bytes, message: str) -> None:
    with pytest.raises(HookOutputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_actions(output)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_ACTIONISH = st.fixed_dictionaries(
    {"action": st.sampled_from(["play", "collect", "queue", "transfer", "set", "hangup", "x"])},
    optional={
        "prompt": _JSON,
        "max": _JSON,
        "timeout_s": _JSON,
        "end": _JSON,
        "queue": _JSON,
        "skills": _JSON | st.dictionaries(st.text(max_size=8), st.integers()),
        "priority": _JSON,
        "customer": _JSON | st.dictionaries(st.text(max_size=8), st.text(max_size=8)),
        "reason": _JSON,
        "on": _JSON,
    },
)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_the_parse_error(output: bytes) -> None:
    with contextlib.suppress(HookOutputError):  # and nothing else
        parse_actions(output)


@given(st.lists(_ACTIONISH | _JSON, max_size=5), st.booleans())
def test_any_json_parses_or_raises_the_parse_error(items: list[object], as_array: bool) -> None:
    text = json.dumps(items) if as_array else "\n".join(json.dumps(item) for item in items)
    try:
        actions = parse_actions(text.encode())
    except HookOutputError:
        return
    if as_array:
        assert len(actions) == len(items)


# -- entry points -----------------------------------------------------------------------------

QUEUES = """
[queues.support]
skills = {}
"""


def test_entry_points_come_with_the_queues() -> None:
    _, entries = parse_deployment(
        QUEUES
        + """
[entries.main]
program = ["awk", "-f", "menu.awk"]
timeout_s = 3
fallback = "queue:support"

[entries.web]
url = "http://127.0.0.1:9000/hook"
fallback = "voicemail"
"""
    )
    assert entries["main"] == EntryPoint(
        "main", program=("awk", "-f", "menu.awk"), timeout_s=3.0, fallback="queue:support"
    )
    assert entries["main"].fallback_action == Queue("support")
    assert entries["web"].fallback_action == Voicemail()
    assert parse_deployment(QUEUES)[1] == {}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('program = ["x"]\nfallback = "queue:nope"', "entries.main.fallback: falls back to queue"),
        ('program = ["x"]\nurl = "http://a:1/"', "entries.main: name either program"),
        ('program = "awk -f x"', "entries.main.program: must be a list"),
        ('program = ["x"]\ntimeout_s = 0', "entries.main.timeout_s: must be seconds"),
        ('program = ["x"]\nmax_output_bytes = 10', "entries.main.max_output_bytes"),
        ('program = ["x"]\nfallback = "later"', "entries.main.fallback: must be queue:NAME"),
        ('url = "ftp://x"', "entries.main.url"),
        ('program = ["x"]\ncolour = 1', "entries.main: unknown keys colour"),
    ],
)
def test_a_bad_entry_point_refuses_the_file(table: str, message: str) -> None:
    with pytest.raises(QueueConfigError, match=message):
        parse_deployment(QUEUES + "[entries.main]\n" + table + "\n")
    with pytest.raises(HookConfigError):
        EntryPoint("main")


# -- running programs -------------------------------------------------------------------------


def event(kind: str = "arrived", digits: str = "") -> HookEvent:
    return HookEvent(kind, "n1-1", "main", "+4930123", "n1", "arriving", digits=digits)


async def run(program: list[str], *, timeout_s: float = 2.0, max_output: int = 1024) -> HookResult:
    entry = EntryPoint(
        "main", program=tuple(program), timeout_s=timeout_s, max_output_bytes=max_output
    )
    return await ProgramHook(entry, asyncio.Semaphore(4)).run(event())


async def test_the_menu_in_awk_answers_each_event() -> None:
    hook = ProgramHook(EntryPoint("main", program=("awk", "-f", str(MENU))), asyncio.Semaphore(1))
    arrived = await hook.run(event())
    assert arrived.actions == (Play("welcome"), Collect(1, 8.0, "menu", "#"))
    chose = await hook.run(
        HookEvent("digits", "n1-1", "main", "+1", "n1", "ivr", digits="2", source="caller")
    )
    assert chose.actions[-1] == Queue("billing")
    assert (await hook.run(event("queued"))).actions == ()


async def test_the_event_reaches_the_program_on_stdin_and_in_its_environment(
    tmp_path: Path,
) -> None:
    dump = tmp_path / "event"
    result = await run(["sh", "-c", 'cat > "$0"; env > "$0.env"', str(dump)])
    assert result == HookResult(seconds=result.seconds)
    assert json.loads(dump.read_text())["caller"] == "+4930123"
    env = dict(line.split("=", 1) for line in (tmp_path / "event.env").read_text().splitlines())
    assert env["CALLMESH_EVENT"] == "arrived"
    assert env["CALLMESH_CALL_ID"] == "n1-1"
    assert env["CALLMESH_CALLER"] == "+4930123"
    assert "CALLMESH_DIGITS" in env
    assert not {"HOME", "USER", "CALLMESH_NODE_ID"} & env.keys()  # the node's own stay home


async def test_a_hanging_program_is_killed_at_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "child-lived"
    started = time.monotonic()
    result = await run(["sh", "-c", f"(sleep 1; touch {marker}) & sleep 30"], timeout_s=0.3)
    assert result.timed_out
    assert result.result == "timeout"
    assert "did not answer within 0.3 s; killed" in result.error
    assert time.monotonic() - started < 2
    await asyncio.sleep(1.3)
    assert not marker.exists()  # the whole session was killed, children too


@pytest.mark.parametrize(
    ("program", "error"),
    [
        (["sh", "-c", "echo boom >&2; exit 1"], "exited with code 1: boom"),
        (["echo", "hello there"], "bad answer: line 1 is not JSON"),
        (["yes", '{"action": "announce"}'], "printed more than 1024 bytes; cut and killed"),
        (["head", "-c", "5000", "/dev/zero"], "printed more than 1024 bytes"),
        (["/nonexistent/hook"], "could not start"),
        (["echo", '{"action": "queue"}'], "bad answer: action 1: queue: queue must be"),
    ],
)
async def test_a_failing_program_is_a_result_with_an_error(program: list[str], error: str) -> None:
    result = await run(program)
    assert result.failed
    assert result.result == "failed"
    assert error in result.error


async def test_a_program_that_ignores_its_input_still_answers() -> None:
    result = await run(["echo", '{"action": "voicemail"}'])
    assert result.actions == (Voicemail(),)


# -- webhooks -----------------------------------------------------------------------------------


@pytest.fixture
async def webhook_server() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response([{"action": "queue", "queue": "billing"}])

    async def lines(request: web.Request) -> web.Response:
        return web.Response(text='{"action": "play", "prompt": "menu"}\n{"action": "announce"}\n')

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response([])

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    async def huge(request: web.Request) -> web.Response:
        return web.Response(text='{"action": "announce"}\n' * 1000)

    app = web.Application()
    for path, handler in (
        ("/hook", answer),
        ("/lines", lines),
        ("/slow", slow),
        ("/broken", broken),
        ("/huge", huge),
    ):
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


async def test_a_webhook_gets_the_event_and_answers_actions(
    webhook_server: tuple[str, list[dict[str, object]]],
) -> None:
    base, seen = webhook_server
    async with aiohttp.ClientSession() as http:
        gate = asyncio.Semaphore(4)

        async def call(path: str, timeout_s: float = 1.0) -> HookResult:
            entry = EntryPoint("web", url=base + path, timeout_s=timeout_s, max_output_bytes=1024)
            return await WebHook(entry, gate, http).run(event("digits", "2"))

        assert (await call("/hook")).actions == (Queue("billing"),)
        assert seen[0]["event"] == "digits"
        assert seen[0]["digits"] == "2"
        assert (await call("/lines")).actions == (Play("menu"), Announce())
        slow = await call("/slow", timeout_s=0.3)
        assert slow.timed_out
        assert "did not answer within 0.3 s" in slow.error
        assert "HTTP 500" in (await call("/broken")).error
        assert "more than 1024 bytes" in (await call("/huge")).error
        entry = EntryPoint("web", url="http://127.0.0.1:1/none", timeout_s=1.0)
        assert "webhook failed" in (await WebHook(entry, gate, http).run(event())).error


def test_entry_points_reload_with_the_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    path.write_text(QUEUES)
    deployed = QueueFile(path)
    assert deployed.entries() == {}
    path.write_text(QUEUES + '[entries.main]\nprogram = ["true"]\n')
    assert set(deployed.entries()) == {"main"}
    path.write_text(QUEUES + '[entries.main]\nprogram = ["true"]\nfallback = "queue:gone"\n')
    assert set(deployed.entries()) == {"main"}  # the last good file stays in force
    assert deployed.last_error is not None
    assert "entries.main.fallback" in str(deployed.last_error)


async def test_a_caller_id_with_a_nul_byte_does_not_break_the_run(tmp_path: Path) -> None:
    dump = tmp_path / "env"
    hostile = HookEvent("arrived", "n1-1", "main", "+1\x00; rm -rf /", "n1", "arriving")
    assert hostile.environment()["CALLMESH_CALLER"] == "+1; rm -rf /"
    entry = EntryPoint("main", program=("sh", "-c", 'printenv CALLMESH_CALLER > "$0"', str(dump)))
    result = await ProgramHook(entry, asyncio.Semaphore(1)).run(hostile)
    assert not result.failed, result.error
    assert dump.read_text() == "+1; rm -rf /\n"  # a value, never a command: no shell runs it


def test_programs_that_exit_without_reading_stdin_answer_under_uvloop() -> None:
    """The node runs on uvloop, which raises RuntimeError (not BrokenPipeError) when the event
    is written to a program that has already exited."""

    async def main() -> list[HookResult]:
        entry = EntryPoint("main", program=("echo", '{"action": "announce"}'))
        hook = ProgramHook(entry, asyncio.Semaphore(8))
        return await asyncio.gather(*(hook.run(event()) for _ in range(24)))

    results = uvloop.run(main())
    assert [r.error for r in results if r.failed] == []
    assert all(r.actions == (Announce(),) for r in results)
