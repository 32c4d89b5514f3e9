"""A last-writer-wins map: the join-semilattice under the agent registry and the queue summaries.

Each key holds one whole value; of two values for a key the one with the higher version wins (a
version tie between different values, which only hostile input makes, is broken by the values'
repr so that merge stays a join). Nothing is ever removed.

Besides the values the map keeps what sync needs: the local change number (`seq`) at which each
key last changed and the peer it came from, so that deltas since a watermark skip what the peer
sent; and one 64-bit hash per bucket of keys, XOR of the hashes of (key, version), kept up to date
on every change, so that two replicas find the buckets in which they differ.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Iterator
from hashlib import blake2b
from typing import Generic, Protocol, TypeVar

from registry.records import Version


class Versioned(Protocol):
    @property
    def version(self) -> Version: ...


K = TypeVar("K")
V = TypeVar("V", bound=Versioned)

LOCAL = ""
"""The source of a change made on this node."""


class _Slot(Generic[V]):
    __slots__ = ("bucket", "hash", "seq", "source", "value", "version")

    def __init__(
        self, value: V, version: Version, seq: int, source: str, bucket: int, hash_: int
    ) -> None:
        self.value = value
        self.version = version
        self.seq = seq
        self.source = source
        self.bucket = bucket
        self.hash = hash_


def entry_hash(key: bytes, version: Version) -> int:
    """A stable 64-bit hash of one key at one version."""
    epoch, clock, node = version
    data = b"%s\0%d\0%d\0%s" % (key, epoch, clock, node.encode())
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class LwwMap(Generic[K, V]):
    """Key -> value, merged by the highest version; see the module docstring."""

    def __init__(self, key_bytes: Callable[[K], bytes], buckets: int) -> None:
        if buckets < 1 or buckets & (buckets - 1):
            raise ValueError(f"buckets must be a power of two, got {buckets}")
        self._key_bytes = key_bytes
        self._slots: dict[K, _Slot[V]] = {}  # in order of change: the last changed is last
        self._buckets = [0] * buckets

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def get(self, key: K) -> V | None:
        slot = self._slots.get(key)
        return None if slot is None else slot.value

    def values(self) -> Iterator[V]:
        return (slot.value for slot in self._slots.values())

    def snapshot(self) -> dict[K, V]:
        return {key: slot.value for key, slot in self._slots.items()}

    def merge(self, key: K, value: V, seq: int, source: str) -> bool:
        """Join `value` into the map; True when it changed the map (then stamped with `seq`)."""
        version = value.version
        slots = self._slots
        slot = slots.get(key)
        if slot is not None:
            if version < slot.version:
                return False
            if version == slot.version and (value == slot.value or repr(value) <= repr(slot.value)):
                return False
            del slots[key]  # re-inserted below, so the dict stays in order of change
            self._buckets[slot.bucket] ^= slot.hash
        key_data = self._key_bytes(key)
        bucket = zlib.crc32(key_data) & (len(self._buckets) - 1)
        hash_ = entry_hash(key_data, version)
        self._buckets[bucket] ^= hash_
        slots[key] = _Slot(value, version, seq, source, bucket, hash_)
        return True

    def changed_since(self, watermark: int, exclude: str) -> list[V]:
        """Values changed after `watermark`, oldest first, less those that came from `exclude`."""
        found = []
        for slot in reversed(self._slots.values()):
            if slot.seq <= watermark:
                break
            if slot.source != exclude:
                found.append(slot.value)
        found.reverse()
        return found

    def count_since(self, watermark: int) -> int:
        count = 0
        for slot in reversed(self._slots.values()):
            if slot.seq <= watermark:
                break
            count += 1
        return count

    @property
    def bucket_hashes(self) -> tuple[int, ...]:
        return tuple(self._buckets)

    def differing(self, theirs: tuple[int, ...]) -> list[int]:
        """The buckets whose hash differs from `theirs` (same number of buckets)."""
        return [i for i, (a, b) in enumerate(zip(self._buckets, theirs, strict=True)) if a != b]

    def in_buckets(self, buckets: Collection[int]) -> list[V]:
        """Every value whose key falls in one of `buckets`."""
        wanted = set(buckets)
        return [slot.value for slot in self._slots.values() if slot.bucket in wanted]
