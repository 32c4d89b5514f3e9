"""The registry's values: agent records and queue summaries, validated when built."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from registry.errors import InvalidRecord

MAX_ID_LENGTH = 64
MAX_SKILLS = 32
MAX_REASON_LENGTH = 64
MAX_CAPACITY = 64
MAX_TIER = 9
MAX_WAITING = 1_000_000
MAX_U64 = (1 << 64) - 1
MAX_MS = (1 << 48) - 1
MAX_PRIORITY = 1_000_000

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
_ADDRESS = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")
_REASON = re.compile(r"[ -~]+")

Skills = tuple[tuple[str, int], ...]
"""Skill name and level (1-10), sorted by name, each name once."""

Version = tuple[int, int, str]
"""(epoch, clock, node): the order in which writes of one key win."""


class Trust(enum.Enum):
    INHOUSE = 1
    PARTNER = 2


class AgentState(enum.Enum):
    OFFLINE = 1
    AVAILABLE = 2
    RESERVED = 3
    TALKING = 4
    WRAP_UP = 5
    NOT_READY = 6


_KNOWN_IDS: set[str] = set()
"""Ids already found valid: most ids (nodes, sites, skills, agents) recur in every update."""
_MAX_KNOWN_IDS = 200_000


def check_id(kind: str, value: object) -> None:
    """Ids are 1-64 characters: letters, digits and . _ : @ -, starting with a letter or digit."""
    if type(value) is str and value in _KNOWN_IDS:
        return
    if type(value) is not str or len(value) > MAX_ID_LENGTH or not _ID.fullmatch(value):
        raise InvalidRecord(
            f"{kind} must be 1-{MAX_ID_LENGTH} characters of letters, digits and ._:@- "
            f"starting with a letter or digit, got {value!r:.80}"
        )
    if len(_KNOWN_IDS) >= _MAX_KNOWN_IDS:
        _KNOWN_IDS.clear()
    _KNOWN_IDS.add(value)


def check_int(kind: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidRecord(f"{kind} must be an integer in {low}-{high}, got {value!r:.40}")


_KNOWN_SKILLS: set[Skills] = set()
"""Skill sets already found valid: an agent's skills recur in every update of its state."""


def check_skills(kind: str, skills: object) -> None:
    """Skills are a tuple of (name, level 1-10) pairs, sorted by name, each name once."""
    if type(skills) is tuple and skills in _KNOWN_SKILLS:
        return
    _validate_skills(kind, skills)
    if len(_KNOWN_SKILLS) >= _MAX_KNOWN_IDS:
        _KNOWN_SKILLS.clear()
    _KNOWN_SKILLS.add(skills)  # type: ignore[arg-type]  # validated just above


def _validate_skills(kind: str, skills: object) -> None:
    if type(skills) is not tuple or len(skills) > MAX_SKILLS:
        raise InvalidRecord(f"{kind} must be a tuple of at most {MAX_SKILLS} (name, level) pairs")
    previous = ""
    for pair in skills:
        if type(pair) is not tuple or len(pair) != 2:
            raise InvalidRecord(f"{kind} must hold (name, level) pairs, got {pair!r:.80}")
        name, level = pair
        check_id(f"{kind} name", name)
        check_int(f"{kind} {name} level", level, 1, 10)
        if name <= previous:
            raise InvalidRecord(f"{kind} must be sorted by name with no repeats, at {name!r}")
        previous = name


def skills_from(levels: dict[str, int]) -> Skills:
    """The canonical Skills for a mapping of name to level."""
    return tuple(sorted(levels.items()))


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """Everything the cluster knows about one agent. Its home node is its only writer."""

    agent_id: str
    home_node: str
    site: str
    trust: Trust
    tier: int
    skills: Skills
    state: AgentState
    reason: str = ""
    state_since_ms: int = 0
    capacity: int = 1
    active_calls: int = 0
    epoch: int = 0
    clock: int = 0

    def __post_init__(self) -> None:
        check_id("agent_id", self.agent_id)
        check_id("home_node", self.home_node)
        check_id("site", self.site)
        if type(self.trust) is not Trust:
            raise InvalidRecord(f"trust must be a Trust, got {self.trust!r:.40}")
        check_int("tier", self.tier, 1, MAX_TIER)
        check_skills("skills", self.skills)
        if type(self.state) is not AgentState:
            raise InvalidRecord(f"state must be an AgentState, got {self.state!r:.40}")
        if self.state is AgentState.NOT_READY:
            if (
                type(self.reason) is not str
                or len(self.reason) > MAX_REASON_LENGTH
                or not _REASON.fullmatch(self.reason)
            ):
                raise InvalidRecord(
                    f"a not-ready agent needs a reason of 1-{MAX_REASON_LENGTH} printable "
                    f"ASCII characters, got {self.reason!r:.80}"
                )
        elif self.reason != "":
            raise InvalidRecord(f"only a not-ready agent has a reason, not {self.state.name}")
        check_int("state_since_ms", self.state_since_ms, 0, MAX_MS)
        check_int("capacity", self.capacity, 1, MAX_CAPACITY)
        check_int("active_calls", self.active_calls, 0, self.capacity)
        check_int("epoch", self.epoch, 0, MAX_U64)
        check_int("clock", self.clock, 0, MAX_U64)

    @property
    def version(self) -> Version:
        return (self.epoch, self.clock, self.home_node)

    def level(self, skill: str) -> int:
        """The agent's level in `skill`, 0 when the agent lacks it."""
        for name, level in self.skills:
            if name == skill:
                return level
        return 0


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """What one node has waiting in one queue. That node is its only writer."""

    node: str
    queue: str
    waiting: int
    oldest_since_ms: int
    top_priority: int
    required_skills: Skills
    clock: int = 0

    def __post_init__(self) -> None:
        check_id("node", self.node)
        check_id("queue", self.queue)
        check_int("waiting", self.waiting, 0, MAX_WAITING)
        check_int("oldest_since_ms", self.oldest_since_ms, 0, MAX_MS)
        check_int("top_priority", self.top_priority, -MAX_PRIORITY, MAX_PRIORITY)
        check_skills("required_skills", self.required_skills)
        check_int("clock", self.clock, 0, MAX_U64)

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.queue)

    @property
    def version(self) -> Version:
        return (0, self.clock, self.node)


def check_address(kind: str, value: object) -> None:
    """host:port, with a DNS name, an IPv4 address or a bracketed IPv6 address."""
    if (
        type(value) is not str
        or not _ADDRESS.fullmatch(value)
        or int(value.rsplit(":", 1)[1]) > 65535
    ):
        raise InvalidRecord(f"{kind} must be host:port, got {value!r:.80}")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Where one node listens. That node is its only writer; others learn it by gossip."""

    node_id: str
    site: str
    trust: Trust
    grpc: str
    http: str
    gateway: bool = False
    up: bool = True
    clock: int = 0

    def __post_init__(self) -> None:
        check_id("node_id", self.node_id)
        check_id("site", self.site)
        if type(self.trust) is not Trust:
            raise InvalidRecord(f"trust must be a Trust, got {self.trust!r:.40}")
        check_address("grpc", self.grpc)
        check_address("http", self.http)
        if type(self.gateway) is not bool or type(self.up) is not bool:
            raise InvalidRecord("gateway and up must be booleans")
        check_int("clock", self.clock, 0, MAX_U64)

    @property
    def version(self) -> Version:
        return (0, self.clock, self.node_id)
