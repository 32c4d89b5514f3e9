"""The registry's errors. Each carries a stable `code`; the edges map codes to status codes."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry raises; nothing changed when one is raised."""

    code = "registry_error"


class InvalidRecord(RegistryError):
    """A record or summary breaks a rule of its type (an id, a level, a count out of range)."""

    code = "invalid_record"


class MalformedMessage(RegistryError):
    """Wire bytes or a decoded message that cannot be turned into registry values."""

    code = "malformed_message"


class ForeignWrite(RegistryError):
    """A local write for an agent or queue homed on another node."""

    code = "foreign_write"


class StaleEpoch(RegistryError):
    """A local write with a session epoch older than the one the registry already holds."""

    code = "stale_epoch"


class ClockSkew(RegistryError):
    """A remote timestamp further ahead of the local physical clock than the configured bound."""

    code = "clock_skew"
