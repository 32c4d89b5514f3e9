"""Revoked HTTP tokens: which token ids, and which users' tokens issued before a time. Pure.

A `Revocation` is a fact that only ever takes access away, so merging is a union (per subject,
the later time wins) and order does not matter: every node of every site may learn the same
entries by different ways (its site's etcd, a push from another site) and reach the same set.
An entry is kept until every token it could refuse has expired (`expires_ms`), then dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from registry.errors import InvalidRecord
from registry.records import check_id

MAX_SUBJECT = 100
"""A token id is `SITE~RANDOM` (a site name is at most 64 characters, the random part 22)."""


class Kind(Enum):
    TOKEN = "token"
    """One token, by its id (POST /logout)."""
    USER = "user"
    """Every token of a user issued before `at_ms` (an admin's POST /users/NAME/revoke)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: Kind
    subject: str
    """The token id (`SITE~RANDOM`: the issuing site first), or the user name."""
    at_ms: int
    """When it was revoked; for a user: tokens issued before this are refused."""
    expires_ms: int
    """When no token it refuses can be valid any more (then the entry is dropped)."""

    def __post_init__(self) -> None:
        if not 0 < len(self.subject) <= MAX_SUBJECT or not self.subject.isprintable():
            raise InvalidRecord(
                f"revocation subject {self.subject[:110]!r} is not 1-{MAX_SUBJECT} characters"
            )
        if self.kind is Kind.USER:
            check_id("user", self.subject)
        if not 0 <= self.at_ms <= self.expires_ms < 2**63:
            raise InvalidRecord("revocation times must satisfy 0 <= at_ms <= expires_ms")

    @property
    def key(self) -> tuple[Kind, str]:
        return self.kind, self.subject

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "subject": self.subject,
            "at_ms": self.at_ms,
            "expires_ms": self.expires_ms,
        }

    @classmethod
    def from_json(cls, value: object) -> Revocation:
        """Raise InvalidRecord naming the problem."""
        if not isinstance(value, dict):
            raise InvalidRecord("a revocation must be an object {kind, subject, at_ms, expires_ms}")
        try:
            kind = Kind(value.get("kind"))
        except ValueError:
            raise InvalidRecord("revocation kind must be token or user") from None
        subject, at_ms, expires_ms = (value.get(k) for k in ("subject", "at_ms", "expires_ms"))
        if (
            not isinstance(subject, str)
            or not isinstance(at_ms, int)
            or not isinstance(expires_ms, int)
            or isinstance(at_ms, bool)
            or isinstance(expires_ms, bool)
        ):
            raise InvalidRecord("revocation subject must be a string, times integers (ms)")
        return cls(kind, subject, at_ms, expires_ms)

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def merged(old: Revocation | None, new: Revocation) -> Revocation:
    """The entry that keeps both facts: the later revocation time and the later expiry."""
    if old is None:
        return new
    return Revocation(
        new.kind, new.subject, max(old.at_ms, new.at_ms), max(old.expires_ms, new.expires_ms)
    )


class Revocations:
    """The revocations one node knows (a join-semilattice under `add`)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Kind, str], Revocation] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Revocation) -> Revocation | None:
        """Merge an entry; the merged entry when it changed what is known, else None."""
        old = self._entries.get(entry.key)
        new = merged(old, entry)
        if new == old:
            return None
        self._entries[entry.key] = new
        return new

    def add_all(self, entries: Iterable[Revocation]) -> list[Revocation]:
        return [changed for entry in entries if (changed := self.add(entry)) is not None]

    def refusal(self, user: str, token_id: str, issued_ms: int) -> str | None:
        """Why a token (its user, id and issue time) is revoked, or None."""
        if token_id and (Kind.TOKEN, token_id) in self._entries:
            return "token revoked (logged out): log in again (POST /login)"
        by_user = self._entries.get((Kind.USER, user))
        if by_user is not None and issued_ms <= by_user.at_ms:
            return f"the tokens of {user} were revoked: log in again (POST /login)"
        return None

    def entries(self) -> list[Revocation]:
        return sorted(self._entries.values(), key=lambda e: (e.kind.value, e.subject))

    def prune(self, now_ms: int) -> list[Revocation]:
        """Drop and return the entries no valid token can match any more."""
        gone = [e for e in self._entries.values() if e.expires_ms < now_ms]
        for entry in gone:
            del self._entries[entry.key]
        return gone
