"""Prompts: what the caller hears from the node, and the `Prompter` that plays it.

The node ships short WAV files (8 kHz mono 16-bit) under prompts/ at the top of the source tree;
`PROMPTS` names each and says what it says (prompts/generate.sh made them with espeak-ng and
sox). Music on hold is the prompt "hold". Position and wait announcements are sequences of
prompts (`announcement`), so the media layer plays them like any other.

Signalling-only calls have no audio: `RecordingPrompter` notes what would have been played as
events of the call (GET /calls/ID, the call record). The media layer implements the same
protocol with audio.
"""

from __future__ import annotations

import contextlib
import math
import wave
from pathlib import Path
from typing import Protocol

PROMPTS: dict[str, str] = {
    "welcome": "Welcome to callmesh.",
    "menu": "For sales, press 1. For billing, press 2. For anything else, press 0.",
    "invalid": "Sorry, that is not an option.",
    "connecting": "Please hold, we are connecting you.",
    "hold": "(music on hold: a soft repeating chime)",
    "position": "You are number",
    "wait": "Your estimated wait is",
    "minutes": "minutes.",
    "less-than-a-minute": "less than a minute.",
    "voicemail": "Please leave a message after the tone.",
    "closed": "We are closed now. Please call again during opening hours.",
    "goodbye": "Thank you for calling. Goodbye.",
    **{f"n{n}": str(n) for n in range(1, 11)},
    "more-than-ten": "more than ten",
}
"""Every shipped prompt: name -> what it says."""


def shipped_prompts_dir() -> Path:
    """prompts/ beside the node package in the source tree."""
    return Path(__file__).resolve().parent.parent / "prompts"


def number(n: int) -> str:
    """The prompt that says `n` (1-10), or "more-than-ten"."""
    return f"n{n}" if 1 <= n <= 10 else "more-than-ten"


def announcement(position: int, wait_s: float | None) -> tuple[str, ...]:
    """The prompts that tell a caller its position and, when known, the estimated wait, e.g.
    ("position", "n3", "wait", "n2", "minutes")."""
    prompts: list[str] = []
    if position > 0:
        prompts += ["position", number(position)]
    if wait_s is not None and math.isfinite(wait_s):
        minutes = math.ceil(wait_s / 60)
        if wait_s < 60:
            prompts += ["wait", "less-than-a-minute"]
        else:
            prompts += ["wait", number(minutes), "minutes"]
    return tuple(prompts)


class Prompter(Protocol):
    """Plays to a call's caller. `play` returns when the prompt has been played (at once when
    there is no audio); it never raises for an unknown prompt (it says so in the call's events)."""

    async def play(self, call_id: str, prompt: str) -> None: ...

    async def announce(self, call_id: str, position: int, wait_s: float | None) -> None: ...


class CallEvents(Protocol):
    """Where a call's events are noted (node/cdr.py's CallRecords)."""

    def add_event(self, call_id: str, kind: str, detail: str) -> None: ...


class RecordingPrompter:
    """The signalling-only prompter: notes each prompt as a "prompt" event of the call."""

    def __init__(self, events: CallEvents, known: frozenset[str] = frozenset(PROMPTS)) -> None:
        self._events = events
        self._known = known

    async def play(self, call_id: str, prompt: str) -> None:
        missing = "" if prompt in self._known else " (no such prompt)"
        self._events.add_event(call_id, "prompt", prompt + missing)

    async def announce(self, call_id: str, position: int, wait_s: float | None) -> None:
        self._events.add_event(call_id, "prompt", " ".join(announcement(position, wait_s)))


def catalogue(folder: Path) -> list[dict[str, object]]:
    """Every prompt of `PROMPTS` and every other WAV file in `folder`: name, text, seconds (0
    when the file is missing or not a WAV file)."""
    names = sorted(set(PROMPTS) | {path.stem for path in folder.glob("*.wav")})
    listed: list[dict[str, object]] = []
    for name in names:
        seconds = 0.0
        with (
            contextlib.suppress(OSError, wave.Error, EOFError),
            wave.open(str(folder / f"{name}.wav"), "rb") as audio,
        ):
            seconds = audio.getnframes() / audio.getframerate()
        listed.append({"name": name, "text": PROMPTS.get(name, ""), "seconds": round(seconds, 2)})
    return listed
