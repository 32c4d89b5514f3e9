"""Telephone-events (RFC 4733): the payload of a DTMF event, and digits from a stream of them.
Pure. RTP headers are media/rtp.py's.

Each event is sent in several packets (its start, updates, its end three times), all with the
event's RTP timestamp: `DigitDetector` reports a digit once per timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS = "0123456789*#ABCD"


class BadEvent(ValueError):
    code = "telephone_event_malformed"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str:
        """The DTMF digit ("" for events that are not DTMF: flash, tones)."""
        return EVENTS[self.event] if self.event < len(EVENTS) else ""


def parse_event(payload: bytes) -> TelephoneEvent:
    if len(payload) < 4:
        raise BadEvent(f"a telephone-event payload is 4 bytes, not {len(payload)}")
    return TelephoneEvent(
        payload[0], bool(payload[1] & 0x80), payload[1] & 0x3F, int.from_bytes(payload[2:4], "big")
    )


def event_payload(digit: str, *, end: bool, duration: int, volume: int = 10) -> bytes:
    """The payload that sends `digit` (for the tests and for digits sent to a trunk)."""
    flags = (0x80 if end else 0) | (volume & 0x3F)
    return bytes([EVENTS.index(digit), flags]) + (duration & 0xFFFF).to_bytes(2, "big")


class DigitDetector:
    """Digits from one stream's telephone-event packets."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def feed(self, timestamp: int, payload: bytes) -> str:
        """The digit a packet starts: "" for a repeat of the current event, a non-DTMF event
        or a bad payload."""
        try:
            event = parse_event(payload)
        except BadEvent:
            return ""
        if timestamp == self._last:
            return ""
        self._last = timestamp
        return event.digit
