"""Customer records for the screen pop: values, the scope cut, and two directories that find them.

A customer is found by the caller's number. Each field of the record has a scope: PARTNER fields
(name, account number, products, open tickets) may be shown to any agent; INHOUSE fields (date of
birth, address, payment details, internal notes, credit score) only to agents of in-house sites.
`visible()` cuts a record to a site's trust; it is the only way a record becomes a screen pop,
and the node applies it before the record leaves the node (DESIGN.md I5).

Directories (`Directory`):
- `SqliteDirectory`, the embedded default: a SQLite file, created and seeded with
  `SAMPLE_CUSTOMERS` when it is first opened, so a local cluster pops customers out of the box.
- `ScriptDirectory`: an operator's program, run as a web server runs CGI: no shell, the caller as
  JSON on stdin, one JSON object on stdout, with a timeout and bounded output.

Neither ever raises for a broken source: a failed look-up logs a warning and answers None, and the
call goes on without a screen pop.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import logging
import re
import shlex
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.program import run_program
from registry.records import Trust

log = logging.getLogger(__name__)

MAX_FIELDS = 100
MAX_SERVICES = 100
MAX_NAME_LENGTH = 64
MAX_VALUE_LENGTH = 1024
MAX_PHONE_DIGITS = 32
RESERVED_NAMES = frozenset({"customer_id", "services"})
"""Keys `visible()` fills itself, so no field may take them."""

_FIELD_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_PHONE = re.compile(r"\+?[0-9]{1,32}")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+/&-]{0,63}")  # no , ( ): see services
_STATUS = re.compile(r"[a-z][a-z_-]{0,31}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")  # controls but tab, newline


class InvalidCustomer(ValueError):
    """A customer record, field or service that breaks a rule of its type."""

    code = "invalid_customer"


class Scope(enum.Enum):
    PARTNER = "partner"
    """Any agent may see it: name, account number, products, open tickets."""
    INHOUSE = "inhouse"
    """Only agents of in-house sites: date of birth, address, payment, notes, credit score."""


_SCOPES_SEEN_BY: dict[Trust, frozenset[Scope]] = {
    Trust.INHOUSE: frozenset({Scope.PARTNER, Scope.INHOUSE}),
    Trust.PARTNER: frozenset({Scope.PARTNER}),
}
_LEAST_SCOPES = frozenset({Scope.PARTNER})
"""What a trust missing from the table sees: the cut fails closed."""


def _check_text(kind: str, value: object, max_length: int) -> None:
    if type(value) is not str or len(value) > max_length or _BAD_TEXT.search(value):
        raise InvalidCustomer(
            f"{kind} must be text of at most {max_length} characters without control "
            f"characters (tab and newline allowed), got {value!r:.80}"
        )


def _check_match(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> None:
    if type(value) is not str or not pattern.fullmatch(value):
        raise InvalidCustomer(f"{kind} must be {rule}, got {value!r:.80}")


@dataclass(frozen=True, slots=True)
class Field:
    """One item of a customer record: a name, its value and who may see it."""

    name: str
    value: str
    scope: Scope

    def __post_init__(self) -> None:
        _check_match(
            "field name", self.name, _FIELD_NAME, "1-64 letters, digits and the characters ._-"
        )
        _check_text(f"field {self.name}", self.value, MAX_VALUE_LENGTH)
        if not isinstance(self.scope, Scope):
            raise InvalidCustomer(
                f"field {self.name}: scope must be partner or inhouse, got {self.scope!r:.40}"
            )


@dataclass(frozen=True, slots=True)
class Service:
    """A product or contract the customer has, e.g. broadband since 2019-04-01, active."""

    name: str
    since: str
    status: str

    def __post_init__(self) -> None:
        _check_match(
            "service name",
            self.name,
            _SERVICE_NAME,
            "1-64 letters, digits, spaces and ._+/&- starting with a letter or digit",
        )
        _check_match(
            f"service {self.name}: status",
            self.status,
            _STATUS,
            "1-32 lower-case letters, _ and -, e.g. active",
        )
        try:
            _check_match(f"service {self.name}: since", self.since, _DATE, "a date YYYY-MM-DD")
            datetime.date.fromisoformat(self.since)
        except ValueError as error:
            raise InvalidCustomer(str(error)) from None


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer record: found by `phone` (normalised: digits with an optional leading +)."""

    customer_id: str
    phone: str
    fields: tuple[Field, ...]
    services: tuple[Service, ...]

    def __post_init__(self) -> None:
        _check_match(
            "customer_id",
            self.customer_id,
            _CUSTOMER_ID,
            "1-64 letters, digits and ._:@- starting with a letter or digit",
        )
        _check_match(
            f"customer {self.customer_id}: phone",
            self.phone,
            _PHONE,
            f"1-{MAX_PHONE_DIGITS} digits with an optional leading +",
        )
        _check_items(self.customer_id, "fields", self.fields, Field, MAX_FIELDS)
        _check_items(self.customer_id, "services", self.services, Service, MAX_SERVICES)
        names: set[str] = set()
        for item in self.fields:
            if item.name in RESERVED_NAMES or item.name in names:
                raise InvalidCustomer(
                    f"customer {self.customer_id}: field name {item.name} is "
                    + ("reserved" if item.name in RESERVED_NAMES else "repeated")
                )
            names.add(item.name)


def _check_items(customer_id: str, kind: str, items: object, cls: type, limit: int) -> None:
    if type(items) is not tuple or not all(isinstance(item, cls) for item in items):
        raise InvalidCustomer(f"customer {customer_id}: {kind} must be a tuple of {cls.__name__}")
    if len(items) > limit:
        raise InvalidCustomer(f"customer {customer_id}: at most {limit} {kind}, got {len(items)}")


def normalise_phone(raw: str) -> str:
    """The number to look up: the digits of `raw`, after a + when `raw` starts with one. Empty
    when `raw` holds no digits (an anonymous caller) or more than MAX_PHONE_DIGITS."""
    text = raw.strip()
    digits = "".join(char for char in text if char in "0123456789")
    if not digits or len(digits) > MAX_PHONE_DIGITS:
        return ""
    return ("+" if text.startswith("+") else "") + digits


def services_summary(services: Sequence[Service]) -> str:
    """One line: "broadband (active since 2019-04-01), mobile (cancelled since 2023-01-31)"."""
    return ", ".join(f"{s.name} ({s.status} since {s.since})" for s in services)


def visible(customer: Customer, trust: Trust) -> dict[str, str]:
    """The screen pop for an agent of a site with `trust`: a flat map (it travels in a protobuf
    map<string, string>) of "customer_id", "services" (`services_summary`, empty when none) and
    every field the trust may see. INHOUSE sees every field; PARTNER only PARTNER fields; a trust
    missing from the table sees what PARTNER sees.

    I5, the customer part: a record leaves its node only as the output of this function for the
    receiving agent's site trust. Services (the products) are visible to both.
    """
    scopes = _SCOPES_SEEN_BY.get(trust, _LEAST_SCOPES)
    view = {"customer_id": customer.customer_id, "services": services_summary(customer.services)}
    for item in customer.fields:
        if item.scope in scopes:
            view[item.name] = item.value
    return view


def customer_from_json(data: bytes) -> Customer | None:
    """A program's answer: one JSON object {"customer_id", "phone", "fields": [{"name", "value",
    "scope"}], "services": [{"name", "since", "status"}]} ("fields" and "services" may be left
    out), or {} or null for an unknown caller. Anything else raises InvalidCustomer saying what
    was wrong; unknown keys are refused, so a misspelt key is not silently dropped."""
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidCustomer(f"not JSON ({str(error)[:80]}): {data[:60]!r}") from None
    if answer is None or answer == {}:
        return None
    record = _object(answer, "the answer", {"customer_id", "phone", "fields", "services"})
    fields = _list(record.get("fields", []), "fields", MAX_FIELDS)
    services = _list(record.get("services", []), "services", MAX_SERVICES)
    phone = record["phone"]
    if type(phone) is str and normalise_phone(phone):
        phone = normalise_phone(phone)
    return Customer(
        customer_id=record["customer_id"],
        phone=phone,
        fields=tuple(_field(item) for item in fields),
        services=tuple(_service(item) for item in services),
    )


def _object(value: object, kind: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidCustomer(f"{kind} must be a JSON object, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in keys)
    if unknown:
        raise InvalidCustomer(f"{kind} has unknown keys {unknown[:5]}; known: {sorted(keys)}")
    missing = sorted(keys - value.keys() - {"fields", "services"})
    if missing:
        raise InvalidCustomer(f"{kind} lacks {missing}")
    return value


def _list(value: object, kind: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidCustomer(f"{kind} must be a JSON array, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidCustomer(f"at most {limit} {kind}, got {len(value)}")
    return value


def _field(item: object) -> Field:
    record = _object(item, "a field", {"name", "value", "scope"})
    scope = record["scope"]
    if scope not in ("partner", "inhouse"):
        raise InvalidCustomer(
            f"field {record['name']!r:.70}: scope must be partner or inhouse, got {scope!r:.40}"
        )
    return Field(record["name"], record["value"], Scope(scope))


def _service(item: object) -> Service:
    record = _object(item, "a service", {"name", "since", "status"})
    return Service(record["name"], record["since"], record["status"])


class Directory(Protocol):
    """Where the node finds the customer behind a caller's number.

    `lookup` may take up to the adapter's timeout (a script's run), or an indexed read of a local
    SQLite file (a fraction of a millisecond, done on the event loop). It never raises for an
    unknown caller or a broken source: it logs and answers None.
    """

    async def lookup(self, caller: str) -> Customer | None: ...


_SCHEMA = (
    "CREATE TABLE customers (customer_id TEXT PRIMARY KEY, phone TEXT NOT NULL UNIQUE)",
    "CREATE TABLE fields (customer_id TEXT NOT NULL REFERENCES customers ON DELETE CASCADE, "
    "seq INTEGER NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, scope TEXT NOT NULL, "
    "PRIMARY KEY (customer_id, seq))",
    "CREATE TABLE services (customer_id TEXT NOT NULL REFERENCES customers ON DELETE CASCADE, "
    "seq INTEGER NOT NULL, name TEXT NOT NULL, since TEXT NOT NULL, status TEXT NOT NULL, "
    "PRIMARY KEY (customer_id, seq))",
)
_SCHEMA_VERSION = 1


class SqliteDirectory:
    """The embedded directory: a SQLite file (or ":memory:"). On first open (schema version 0)
    the tables are created and `SAMPLE_CUSTOMERS` written, in one transaction; later opens keep
    what the file holds, so edits and removals stay."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=1.0)
        self._db.execute("PRAGMA foreign_keys=ON")
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            self._db.close()
            raise ValueError(
                f"customer directory {path} has schema version {version}; this callmesh knows "
                f"up to {_SCHEMA_VERSION}"
            )
        if version == 0:
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
                for customer in SAMPLE_CUSTOMERS:
                    self._write(customer)
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def put(self, customer: Customer) -> None:
        """Add or replace a customer. InvalidCustomer when another customer has that phone."""
        with self._transaction():
            self._write(customer)

    async def lookup(self, caller: str) -> Customer | None:
        number = normalise_phone(caller)
        if not number:
            return None
        try:
            return self._read(number)
        except (sqlite3.Error, ValueError) as error:  # InvalidCustomer is a ValueError
            log.warning("customer directory: lookup of %s failed: %s", number, error)
            return None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _write(self, customer: Customer) -> None:
        owner = self._db.execute(
            "SELECT customer_id FROM customers WHERE phone = ?", (customer.phone,)
        ).fetchone()
        if owner is not None and owner[0] != customer.customer_id:
            raise InvalidCustomer(
                f"customer {customer.customer_id}: phone {customer.phone} belongs to {owner[0]}"
            )
        cid = customer.customer_id
        self._db.execute(
            "INSERT INTO customers (customer_id, phone) VALUES (?, ?) "
            "ON CONFLICT (customer_id) DO UPDATE SET phone = excluded.phone",
            (cid, customer.phone),
        )
        self._db.execute("DELETE FROM fields WHERE customer_id = ?", (cid,))
        self._db.execute("DELETE FROM services WHERE customer_id = ?", (cid,))
        self._db.executemany(
            "INSERT INTO fields VALUES (?, ?, ?, ?, ?)",
            [(cid, i, f.name, f.value, f.scope.value) for i, f in enumerate(customer.fields)],
        )
        self._db.executemany(
            "INSERT INTO services VALUES (?, ?, ?, ?, ?)",
            [(cid, i, s.name, s.since, s.status) for i, s in enumerate(customer.services)],
        )

    def _read(self, phone: str) -> Customer | None:
        row = self._db.execute(
            "SELECT customer_id FROM customers WHERE phone = ?", (phone,)
        ).fetchone()
        if row is None:
            return None
        cid = row[0]
        fields = self._db.execute(
            "SELECT name, value, scope FROM fields WHERE customer_id = ? ORDER BY seq", (cid,)
        ).fetchall()
        services = self._db.execute(
            "SELECT name, since, status FROM services WHERE customer_id = ? ORDER BY seq", (cid,)
        ).fetchall()
        return Customer(
            customer_id=cid,
            phone=phone,
            fields=tuple(Field(name, value, Scope(scope)) for name, value, scope in fields),
            services=tuple(Service(*service) for service in services),
        )


class ScriptDirectory:
    """An operator's program as the directory, run as a web server runs CGI.

    Each lookup runs `argv` (never through a shell; in a session of its own, so the kill reaches
    its children too) with {"caller": NUMBER} and a newline on stdin, NUMBER normalised as by
    `normalise_phone`; an anonymous caller runs nothing. The program prints one JSON object
    (`customer_from_json`) and exits 0. A program that cannot start, exits non-zero, runs past
    `timeout_s` (it is killed), prints more than `max_output` bytes (killed) or prints anything
    but a valid answer costs the call its screen pop, never the call: a warning names the program
    and what went wrong (with the last line of its stderr), and lookup answers None.
    """

    def __init__(
        self, argv: Sequence[str], *, timeout_s: float = 2.0, max_output: int = 64 * 1024
    ) -> None:
        if not argv or not all(isinstance(arg, str) for arg in argv) or not argv[0]:
            raise ValueError(f"a crm script needs a program and its arguments, got {argv!r:.80}")
        if not timeout_s > 0 or not max_output > 0:
            raise ValueError(
                f"crm script timeout_s and max_output must be positive, got {timeout_s}, "
                f"{max_output}"
            )
        self.argv = tuple(argv)
        self.timeout_s = timeout_s
        self.max_output = max_output
        self._name = shlex.join(self.argv)[:120]

    async def lookup(self, caller: str) -> Customer | None:
        number = normalise_phone(caller)
        if not number:
            return None
        try:
            output = await self._run(number, json.dumps({"caller": number}).encode() + b"\n")
        except Exception as error:  # a lookup never takes the call down with it
            self._warn(number, f"run failed: {error!r}")
            return None
        if output is None:
            return None
        try:
            return customer_from_json(output)
        except InvalidCustomer as error:
            self._warn(number, f"answered something that is not a customer: {error}")
            return None

    def _warn(self, number: str, what: str) -> None:
        log.warning("crm script %s: caller %s: %s; no screen pop", self._name, number, what)

    async def _run(self, number: str, payload: bytes) -> bytes | None:
        """The program's stdout, or None (warned) when the run failed."""
        run = await run_program(
            self.argv,
            payload,
            deadline=time.monotonic() + self.timeout_s,
            timeout_s=self.timeout_s,
            max_output=self.max_output,
        )
        if run.error:
            self._warn(number, run.error)
            return None
        return run.output


def directory_from(spec: str, data_dir: Path) -> Directory:
    """The directory a node's `crm` setting names: "" for the embedded SQLite directory in
    `data_dir / "customers.db"`, or "script:PROGRAM ARG..." (split as a POSIX shell would split
    it, but never run by one) for an operator's program."""
    text = spec.strip()
    if not text:
        return SqliteDirectory(data_dir / "customers.db")
    kind, _, rest = text.partition(":")
    if kind == "script":
        try:
            argv = shlex.split(rest)
        except ValueError as error:
            raise ValueError(f"crm {spec!r:.120}: cannot split the command: {error}") from None
        if not argv:
            raise ValueError(f'crm {spec!r:.120}: name a program, e.g. "script:/opt/crm/lookup"')
        return ScriptDirectory(argv)
    raise ValueError(
        f'crm must be "" (the embedded SQLite directory) or "script:PROGRAM ARG...", '
        f"got {spec!r:.120}"
    )


def _sample(
    customer_id: str,
    phone: str,
    partner: dict[str, str],
    inhouse: dict[str, str],
    services: Sequence[tuple[str, str, str]],
) -> Customer:
    return Customer(
        customer_id=customer_id,
        phone=phone,
        fields=tuple(Field(k, v, Scope.PARTNER) for k, v in partner.items())
        + tuple(Field(k, v, Scope.INHOUSE) for k, v in inhouse.items()),
        services=tuple(Service(*service) for service in services),
    )


SAMPLE_CUSTOMERS: tuple[Customer, ...] = (
    _sample(
        "c-1001",
        "+4930123",  # the caller of the README's example call
        {
            "name": "Anna Schmidt",
            "account": "DE-100-2001",
            "segment": "residential",
            "open_tickets": "T-5521 router drops the line at night",
        },
        {
            "date_of_birth": "1984-03-12",
            "address": "Kastanienallee 12, 10435 Berlin",
            "payment": "SEPA direct debit, IBAN DE89 **** **** 3000",
            "credit_score": "A",
            "notes": "Asked twice about a fibre upgrade; prefers e-mail follow-up.",
        },
        [("broadband", "2019-04-01", "active"), ("mobile", "2021-09-15", "active")],
    ),
    _sample(
        "c-1002",
        "+4930124",
        {"name": "Jonas Weber", "account": "DE-100-2002", "segment": "residential"},
        {
            "date_of_birth": "1991-11-02",
            "address": "Sonnenallee 88, 12045 Berlin",
            "payment": "credit card, VISA **** 4242",
            "credit_score": "B",
            "notes": "Payment reminder sent 2024-02-03.",
        },
        [("mobile", "2020-01-20", "active"), ("tv", "2022-06-01", "suspended")],
    ),
    _sample(
        "c-1003",
        "+4940555",
        {
            "name": "Fatma Yilmaz",
            "account": "DE-200-3107",
            "segment": "business",
            "open_tickets": "T-6012 second SIM not activated",
        },
        {
            "date_of_birth": "1978-07-30",
            "address": "Osterstraße 5, 20259 Hamburg",
            "payment": "invoice, 30 days",
            "credit_score": "A",
        },
        [("broadband", "2017-03-01", "active"), ("mobile", "2017-03-01", "active")],
    ),
    _sample(
        "c-1004",
        "+33142123",
        {"name": "Marc Dubois", "account": "FR-300-0042", "segment": "residential"},
        {
            "date_of_birth": "1965-01-17",
            "address": "14 rue des Martyrs, 75009 Paris",
            "payment": "SEPA direct debit, IBAN FR76 **** **** 0189",
            "credit_score": "C",
            "notes": "Complained about the last bill; goodwill credit of 20 EUR granted.",
        },
        [("broadband", "2015-10-05", "cancelled")],
    ),
    _sample(
        "c-1005",
        "+390612345",
        {
            "name": "Sofia Rossi",
            "account": "IT-400-7781",
            "segment": "residential",
            "open_tickets": "T-6120 move to a new address",
        },
        {
            "date_of_birth": "1999-05-21",
            "address": "Via dei Coronari 20, 00186 Roma",
            "payment": "credit card, Mastercard **** 5100",
            "credit_score": "B",
        },
        [("mobile", "2023-02-14", "active")],
    ),
    _sample(
        "c-1006",
        "+442071230",
        {"name": "Emma Johnson", "account": "UK-500-1200", "segment": "business"},
        {
            "date_of_birth": "1982-09-09",
            "address": "221 Baker Street, London NW1 6XE",
            "payment": "invoice, 14 days",
            "credit_score": "A",
            "notes": "Key account; escalate outages to the account manager.",
        },
        [
            ("broadband", "2018-08-01", "active"),
            ("mobile", "2018-08-01", "active"),
            ("tv", "2020-12-01", "active"),
        ],
    ),
)
