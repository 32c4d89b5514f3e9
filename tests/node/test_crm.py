"""Customer records: the scope cut (I5), the SQLite directory and the operator's script."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.crm import (
    MAX_FIELDS,
    RESERVED_NAMES,
    SAMPLE_CUSTOMERS,
    Customer,
    Field,
    InvalidCustomer,
    Scope,
    ScriptDirectory,
    Service,
    SqliteDirectory,
    customer_from_json,
    directory_from,
    normalise_phone,
    visible,
)
from registry.records import Trust

ANNA = SAMPLE_CUSTOMERS[0]

# -- values and the scope cut ------------------------------------------------------------------

field_names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(
    lambda name: name not in RESERVED_NAMES
)
field_values = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
services = st.builds(
    Service,
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._+/&-]{0,20}", fullmatch=True),
    since=st.dates().map(lambda day: day.isoformat()),
    status=st.sampled_from(["active", "suspended", "cancelled"]),
)


@st.composite
def customers(draw: st.DrawFn) -> Customer:
    items = draw(
        st.lists(
            st.tuples(field_names, field_values, st.sampled_from(Scope)),
            max_size=12,
            unique_by=lambda item: item[0],
        )
    )
    return Customer(
        customer_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True)),
        phone=draw(st.from_regex(r"\+?[0-9]{1,15}", fullmatch=True)),
        fields=tuple(Field(name, value, scope) for name, value, scope in items),
        services=tuple(draw(st.lists(services, max_size=4))),
    )


def test_an_inhouse_agent_sees_the_whole_record() -> None:
    view = visible(ANNA, Trust.INHOUSE)
    assert view["customer_id"] == "c-1001"
    assert (
        view["services"] == "broadband (active since 2019-04-01), mobile (active since 2021-09-15)"
    )
    assert view["name"] == "Anna Schmidt"
    assert view["date_of_birth"] == "1984-03-12"
    assert view["credit_score"] == "A"
    assert set(view) == {"customer_id", "services"} | {item.name for item in ANNA.fields}


def test_a_partner_agent_sees_partner_fields_only() -> None:
    assert visible(ANNA, Trust.PARTNER) == {
        "customer_id": "c-1001",
        "services": "broadband (active since 2019-04-01), mobile (active since 2021-09-15)",
        "name": "Anna Schmidt",
        "account": "DE-100-2001",
        "segment": "residential",
        "open_tickets": "T-5521 router drops the line at night",
    }


@given(customers())
def test_a_partner_view_never_holds_an_inhouse_field(customer: Customer) -> None:
    partner = visible(customer, Trust.PARTNER)
    inhouse = visible(customer, Trust.INHOUSE)
    for item in customer.fields:
        if item.scope is Scope.INHOUSE:
            assert item.name not in partner
        else:
            assert partner[item.name] == item.value
        assert inhouse[item.name] == item.value
    shown = {item.name for item in customer.fields if item.scope is Scope.PARTNER}
    assert set(partner) == {"customer_id", "services"} | shown
    assert all(isinstance(value, str) for value in partner.values())
    assert {key: inhouse[key] for key in partner} == partner


@given(customers())
def test_a_script_answer_holding_a_customer_reads_back_the_same(customer: Customer) -> None:
    assert customer_from_json(answer(customer).encode()) == customer


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("+49 (30) 123", "+4930123"),
        ("0049-30-123", "004930123"),
        (" +44 20 7123 0 ", "+442071230"),
        ("anonymous", ""),
        ("", ""),
        ("1" * 33, ""),
        ("tel:+4930123", "4930123"),
    ],
)
def test_numbers_are_normalised_to_digits_and_a_leading_plus(raw: str, number: str) -> None:
    assert normalise_phone(raw) == number


def many_fields(count: int) -> tuple[Field, ...]:
    return tuple(Field(f"f{i}", "v", Scope.PARTNER) for i in range(count))


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: Field("has space", "v", Scope.PARTNER), "field name"),
        (lambda: Field("x" * 65, "v", Scope.PARTNER), "field name"),
        (lambda: Field("name", "v" * 1025, Scope.PARTNER), "at most 1024"),
        (lambda: Field("name", "bell\x07", Scope.PARTNER), "control"),
        (lambda: Field("name", "v", "partner"), "scope"),  # type: ignore[arg-type]
        (lambda: Service("tv, premium", "2020-01-01", "active"), "service name"),
        (lambda: Service("tv", "2020-13-01", "active"), "month"),
        (lambda: Service("tv", "yesterday", "active"), "YYYY-MM-DD"),
        (lambda: Service("tv", "2020-01-01", "Active!"), "status"),
        (lambda: Customer("", "+1", (), ()), "customer_id"),
        (lambda: Customer("c-1", "+49 30", (), ()), "phone"),
        (lambda: Customer("c-1", "+1", many_fields(MAX_FIELDS + 1), ()), "at most 100 fields"),
        (lambda: Customer("c-1", "+1", many_fields(2) + many_fields(1), ()), "repeated"),
        (lambda: Customer("c-1", "+1", (Field("services", "x", Scope.PARTNER),), ()), "reserved"),
        (lambda: Customer("c-1", "+1", [], ()), "tuple"),  # type: ignore[arg-type]
    ],
)
def test_invalid_values_are_refused_with_what_was_wrong(build: Any, words: str) -> None:
    with pytest.raises(InvalidCustomer, match=words):
        build()


def test_a_hundred_fields_of_1024_characters_are_fine() -> None:
    fields = tuple(Field(f"f{i}", "v" * 1024, Scope.INHOUSE) for i in range(MAX_FIELDS))
    assert len(visible(Customer("c-1", "+1", fields, ()), Trust.INHOUSE)) == MAX_FIELDS + 2


def test_the_samples_mix_scopes_and_services_and_include_the_readme_caller() -> None:
    assert 5 <= len(SAMPLE_CUSTOMERS) <= 8
    assert len({customer.phone for customer in SAMPLE_CUSTOMERS}) == len(SAMPLE_CUSTOMERS)
    assert "+4930123" in {customer.phone for customer in SAMPLE_CUSTOMERS}
    for customer in SAMPLE_CUSTOMERS:
        assert {item.scope for item in customer.fields} == set(Scope)
        assert customer.services


# -- script answers (pure) ---------------------------------------------------------------------


def answer(customer: Customer) -> str:
    return json.dumps(
        {
            "customer_id": customer.customer_id,
            "phone": customer.phone,
            "fields": [
                {"name": f.name, "value": f.value, "scope": f.scope.value} for f in customer.fields
            ],
            "services": [
                {"name": s.name, "since": s.since, "status": s.status} for s in customer.services
            ],
        }
    )


@pytest.mark.parametrize("text", ["{}", "null", " null\n"])
def test_an_empty_answer_means_an_unknown_caller(text: str) -> None:
    assert customer_from_json(text.encode()) is None


def test_an_answer_may_leave_out_fields_and_services_and_format_the_phone() -> None:
    customer = customer_from_json(b'{"customer_id": "x-1", "phone": "+49 30 999"}')
    assert customer == Customer("x-1", "+4930999", (), ())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"", "not JSON"),
        (b"customer x-1", "not JSON"),
        (b"\xff\xfe\xfd", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[]", "JSON object"),
        (b'{"customer_id": "x-1"}', "lacks"),
        (b'{"customer_id": "x-1", "phone": "+1", "feilds": []}', "unknown keys"),
        (b'{"customer_id": "x-1", "phone": "+1", "fields": {}}', "JSON array"),
        (b'{"customer_id": 7, "phone": "+1"}', "customer_id"),
        (b'{"customer_id": "x-1", "phone": "none"}', "phone"),
        (
            b'{"customer_id": "x-1", "phone": "+1", '
            b'"fields": [{"name": "dob", "value": "1990-01-01", "scope": "secret"}]}',
            "scope must be partner or inhouse",
        ),
        (
            b'{"customer_id": "x-1", "phone": "+1", '
            b'"fields": [{"name": "dob", "value": 1990, "scope": "inhouse"}]}',
            "field dob",
        ),
        (
            json.dumps(
                {
                    "customer_id": "x-1",
                    "phone": "+1",
                    "fields": [
                        {"name": f"f{i}", "value": "", "scope": "partner"} for i in range(101)
                    ],
                }
            ).encode(),
            "at most 100 fields",
        ),
    ],
)
def test_a_bad_answer_is_refused_with_what_was_wrong(text: bytes, words: str) -> None:
    with pytest.raises(InvalidCustomer, match=words):
        customer_from_json(text)


# -- the SQLite directory ----------------------------------------------------------------------


async def test_a_sample_customer_is_found_by_the_normalised_number() -> None:
    directory = SqliteDirectory(":memory:")
    try:
        assert await directory.lookup("+49 (30) 123") == ANNA
        for customer in SAMPLE_CUSTOMERS:
            assert await directory.lookup(customer.phone) == customer
    finally:
        directory.close()


@pytest.mark.parametrize("caller", ["+4930999", "4930123", "anonymous", ""])
async def test_an_unknown_number_finds_nobody(caller: str) -> None:
    directory = SqliteDirectory(":memory:")
    try:
        assert await directory.lookup(caller) is None
    finally:
        directory.close()


async def test_the_directory_keeps_its_customers_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "customers.db"
    directory = SqliteDirectory(path)
    new = Customer("c-2001", "+4930777", (Field("name", "Lena Koch", Scope.PARTNER),), ())
    directory.put(new)
    changed = Customer(ANNA.customer_id, ANNA.phone, ANNA.fields[:1], ())
    directory.put(changed)
    directory.close()

    again = SqliteDirectory(path)  # not seeded again: the edit of a sample stays
    try:
        assert await again.lookup("+4930777") == new
        assert await again.lookup(ANNA.phone) == changed
        assert await again.lookup(SAMPLE_CUSTOMERS[1].phone) == SAMPLE_CUSTOMERS[1]
    finally:
        again.close()


async def test_a_phone_belongs_to_one_customer() -> None:
    directory = SqliteDirectory(":memory:")
    try:
        with pytest.raises(InvalidCustomer, match="belongs to c-1001"):
            directory.put(Customer("c-9", ANNA.phone, (), ()))
        assert await directory.lookup(ANNA.phone) == ANNA
    finally:
        directory.close()


async def test_a_broken_row_costs_the_screen_pop_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "customers.db"
    SqliteDirectory(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE fields SET scope = 'secret' WHERE customer_id = 'c-1001'")
    db.close()
    directory = SqliteDirectory(path)
    try:
        with caplog.at_level(logging.WARNING, logger="node.crm"):
            assert await directory.lookup(ANNA.phone) is None
        assert "lookup of +4930123 failed" in caplog.text
        assert await directory.lookup(SAMPLE_CUSTOMERS[1].phone) == SAMPLE_CUSTOMERS[1]
    finally:
        directory.close()


# -- the operator's script ---------------------------------------------------------------------

KNOWN = Customer(
    "x-1",
    "+4930999",
    (Field("name", "Max Mustermann", Scope.PARTNER), Field("iban", "DE02 ...", Scope.INHOUSE)),
    (Service("broadband", "2020-02-02", "active"),),
)


def program(tmp_path: Path, body: str, *args: str) -> list[str]:
    path = tmp_path / "lookup.py"
    path.write_text(body)
    return [sys.executable, str(path), *args]


GOOD = f"""
import json, sys
request = json.load(sys.stdin)
if request == {{"caller": "+4930999"}}:
    print({answer(KNOWN)!r})
else:
    print(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in ("{{}}", "null") else "{{}}")
"""


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def test_a_script_finds_the_customer_from_the_caller_on_stdin(tmp_path: Path) -> None:
    directory = ScriptDirectory(program(tmp_path, GOOD))
    assert await directory.lookup("+49 30 999") == KNOWN


@pytest.mark.parametrize("empty", ["{}", "null"])
async def test_a_script_answering_empty_means_an_unknown_caller(
    tmp_path: Path, empty: str, caplog: pytest.LogCaptureFixture
) -> None:
    directory = ScriptDirectory(program(tmp_path, GOOD, empty))
    with caplog.at_level(logging.WARNING, logger="node.crm"):
        assert await directory.lookup("+4930111") is None
    assert caplog.text == ""


async def test_an_anonymous_caller_runs_no_script(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    directory = ScriptDirectory(program(tmp_path, f"open({str(marker)!r}, 'w')\nprint('{{}}')"))
    assert await directory.lookup("anonymous") is None
    assert not marker.exists()
    assert await directory.lookup("+1") is None
    assert marker.exists()


FAILING = f"""
import sys
print({answer(KNOWN)!r})
sys.stderr.write("Traceback...\\nKeyError: 'crm_token'\\n")
sys.exit(3)
"""
HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1] + ".tmp", "w") as pids:
    pids.write(f"{os.getpid()} {child.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""
PADDED = f"""
import sys
sys.stdout.write({answer(KNOWN)!r} + " " * 70_000)
"""
ENDLESS = """
import sys
while True:
    sys.stdout.write("x" * 65536)
"""
BAD_SCOPE = f"""
print({answer(KNOWN).replace('"inhouse"', '"secret"')!r})
"""


@pytest.mark.parametrize(
    ("body", "timeout_s", "words"),
    [
        (FAILING, 10.0, "exited with code 3: KeyError: 'crm_token'"),
        ("print('customer x-1: Max Mustermann')", 10.0, "not a customer: not JSON"),
        ("pass", 10.0, "not a customer: not JSON"),
        (PADDED, 10.0, "printed more than 65536 bytes; cut and killed"),
        (ENDLESS, 30.0, "printed more than 65536 bytes; cut and killed"),
        (BAD_SCOPE, 10.0, "scope must be partner or inhouse, got 'secret'"),
        ("import sys; sys.stdin.close(); import os; os.kill(os.getpid(), 9)", 10.0, "code -9"),
    ],
)
async def test_a_failing_script_costs_the_screen_pop_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str, timeout_s: float, words: str
) -> None:
    directory = ScriptDirectory(program(tmp_path, body), timeout_s=timeout_s)
    with caplog.at_level(logging.WARNING, logger="node.crm"):
        async with asyncio.timeout(20):
            assert await directory.lookup("+4930999") is None
    assert words in caplog.text
    assert "lookup.py: caller +4930999:" in caplog.text


async def test_a_script_that_hangs_is_killed_with_its_children(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pids = tmp_path / "pids"
    directory = ScriptDirectory(program(tmp_path, HANG, str(pids)), timeout_s=1.0)
    with caplog.at_level(logging.WARNING, logger="node.crm"):
        async with asyncio.timeout(10):  # the child holds stdout open: unkilled, this hangs
            assert await directory.lookup("+4930999") is None
    assert "did not answer within 1 s; killed" in caplog.text
    script, child = (int(pid) for pid in pids.read_text().split())
    assert gone(script)
    await eventually(lambda: gone(child))  # the orphaned child waits for its new parent's reaping


async def test_a_cancelled_lookup_kills_the_script(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    directory = ScriptDirectory(program(tmp_path, HANG, str(pids)), timeout_s=30.0)
    lookup = asyncio.create_task(directory.lookup("+4930999"))
    await eventually(pids.exists)
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup
    script, child = (int(pid) for pid in pids.read_text().split())
    await eventually(lambda: gone(script) and gone(child))


async def test_a_missing_program_costs_the_screen_pop_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = ScriptDirectory([str(tmp_path / "no-such-program")])
    with caplog.at_level(logging.WARNING, logger="node.crm"):
        assert await directory.lookup("+4930999") is None
    assert "could not start" in caplog.text


async def test_no_shell_runs_the_script(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    hostile = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]
    directory = ScriptDirectory(program(tmp_path, GOOD, *hostile))
    assert await directory.lookup("+4930999") == KNOWN
    argv = " ".join(shlex.quote(arg) for arg in program(tmp_path, GOOD))
    configured = directory_from(f"script:{argv} ; touch {marker} && touch {marker}", tmp_path)
    assert await configured.lookup("+4930999") == KNOWN
    assert not marker.exists()


# -- configuration -----------------------------------------------------------------------------


async def test_an_empty_spec_is_the_embedded_directory_in_the_data_dir(tmp_path: Path) -> None:
    directory = directory_from("", tmp_path)
    try:
        assert isinstance(directory, SqliteDirectory)
        assert (tmp_path / "customers.db").exists()
        assert await directory.lookup("+4930123") == ANNA
    finally:
        assert isinstance(directory, SqliteDirectory)
        directory.close()


def test_a_script_spec_is_split_like_a_command_line(tmp_path: Path) -> None:
    directory = directory_from("script:/opt/crm/lookup --region 'eu west' -v", tmp_path)
    assert isinstance(directory, ScriptDirectory)
    assert directory.argv == ("/opt/crm/lookup", "--region", "eu west", "-v")
    assert directory.timeout_s == 2.0
    assert directory.max_output == 64 * 1024


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("http://crm.example/lookup", "must be"),
        ("sqlite", "must be"),
        ("script:", "name a program"),
        ("script:   ", "name a program"),
        ("script:/opt/lookup 'unbalanced", "cannot split"),
    ],
)
def test_a_bad_spec_is_refused_clearly(tmp_path: Path, spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        directory_from(spec, tmp_path)


@pytest.mark.parametrize(
    ("argv", "options"),
    [([], {}), ([""], {}), (["/bin/x"], {"timeout_s": 0}), (["/bin/x"], {"max_output": 0})],
)
def test_a_script_directory_needs_a_program_and_positive_bounds(
    argv: list[str], options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="crm script"):
        ScriptDirectory(argv, **options)
