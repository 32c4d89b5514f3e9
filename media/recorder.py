"""Recording both sides of a call into one WAV file: the caller left, the agent right.

`Mixdown` (pure) places each side's decoded 20 ms frames on a common timeline and gives back
interleaved stereo; `Recorder` feeds it from a bridge's tap and writes the file. A side's frames
follow each other; after a gap (loss, hold, the agent's leg not up yet) a side starts again at
its arrival time, so both sides stay aligned within a frame or two.
"""

from __future__ import annotations

import time
import wave
from array import array
from collections.abc import Callable, Mapping
from pathlib import Path

from media.forward import Codec
from media.tone import RATE

FRAME = 960  # samples per 20 ms at 48 kHz
SIDES = ("caller", "agent")
RESYNC_FRAMES = 5  # a side more than this far from its arrival time starts again there
DELAY_FRAMES = 10  # frames kept back for late packets before they are written


class Mixdown:
    """Two sides' frames on one timeline of 20 ms slots; pure."""

    def __init__(self) -> None:
        self._frames: dict[str, dict[int, bytes]] = {side: {} for side in SIDES}
        self._slot: dict[str, int] = {side: -1 for side in SIDES}
        self.written = 0  # the first slot not yet taken

    def add(self, side: str, arrival_slot: int, pcm: bytes) -> None:
        """One decoded frame (FRAME signed 16-bit samples) of `side`, arrived in `arrival_slot`."""
        slot = self._slot[side] + 1
        if slot == 0 or abs(slot - arrival_slot) > RESYNC_FRAMES:
            slot = arrival_slot
        self._slot[side] = slot
        if slot >= self.written:
            self._frames[side][slot] = pcm[: FRAME * 2].ljust(FRAME * 2, b"\0")

    @property
    def end(self) -> int:
        """The slot after the last frame of either side."""
        return max(self._slot.values()) + 1

    def take(self, upto_slot: int) -> bytes:
        """Interleaved stereo for the slots before `upto_slot` (silence where a side had none)."""
        out = array("h")
        silence = array("h", bytes(FRAME * 2))
        for slot in range(self.written, upto_slot):
            left = self._frames["caller"].pop(slot, None)
            right = self._frames["agent"].pop(slot, None)
            frame = array("h", bytes(FRAME * 4))
            frame[0::2] = array("h", left) if left is not None else silence
            frame[1::2] = array("h", right) if right is not None else silence
            out.extend(frame)
        self.written = max(self.written, upto_slot)
        return out.tobytes()


class Recorder:
    """A bridge tap that decodes each side and writes the call's WAV file."""

    def __init__(
        self,
        path: Path,
        codecs: Mapping[str, Codec],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed by close()
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RATE)
        self._codecs = dict(codecs)  # "caller" and "agent": decoders to 48 kHz PCM
        self._clock = clock
        self._start = clock()
        self._mix = Mixdown()
        self.closed = False

    def _slot(self) -> int:
        return int((self._clock() - self._start) / 0.02)

    def tap(self, side: str, payload: bytes) -> None:
        if self.closed:
            return
        pcm = self._codecs[side].decode(payload)
        if not pcm:
            return
        now = self._slot()
        self._mix.add(side, now, pcm)
        if now - self._mix.written > 2 * DELAY_FRAMES:
            self._wav.writeframesraw(self._mix.take(now - DELAY_FRAMES))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wav.writeframes(self._mix.take(self._mix.end))
            self._wav.close()


def read_sides(path: Path) -> tuple[array[int], array[int]]:
    """A recording's caller and agent samples (for tests and tools)."""
    with wave.open(str(path), "rb") as wav:
        samples = array("h", wav.readframes(wav.getnframes()))
    return samples[0::2], samples[1::2]
