from __future__ import annotations

from array import array
from pathlib import Path

from media.recorder import FRAME, Mixdown, Recorder, read_sides
from media.tone import has_tone, sine


def frame(value: int) -> bytes:
    return array("h", [value] * FRAME).tobytes()


def test_each_side_goes_to_its_channel_with_silence_where_it_had_nothing() -> None:
    mix = Mixdown()
    mix.add("caller", 0, frame(1))
    mix.add("caller", 1, frame(2))
    mix.add("agent", 1, frame(9))
    stereo = array("h", mix.take(2))
    left, right = stereo[0::2], stereo[1::2]
    assert list(left) == [1] * FRAME + [2] * FRAME
    assert list(right) == [0] * FRAME + [9] * FRAME
    assert mix.take(2) == b""


def test_frames_arriving_in_a_burst_keep_their_order_and_a_gap_resyncs() -> None:
    mix = Mixdown()
    for value in (1, 2, 3):
        mix.add("agent", 0, frame(value))  # three frames in one slot: jitter
    mix.add("agent", 50, frame(7))  # after a long gap (hold): at its arrival time
    right = array("h", mix.take(mix.end))[1::2]
    assert [right[i * FRAME] for i in (0, 1, 2, 3, 50)] == [1, 2, 3, 0, 7]


def test_late_frames_for_written_slots_are_dropped() -> None:
    mix = Mixdown()
    mix.add("caller", 0, frame(1))
    mix.take(5)
    mix.add("caller", 1, frame(2))  # its turn, slot 1, is already written
    assert mix.take(mix.end) == b""


class Raw:
    """A codec that passes samples through (the payload is PCM)."""

    def decode(self, payload: bytes) -> bytes:
        return payload

    def encode(self, pcm: bytes) -> list[bytes]:
        return [pcm]


def test_a_recorder_writes_both_sides_in_stereo(tmp_path: Path) -> None:
    now = [0.0]
    recorder = Recorder(
        tmp_path / "r" / "call.wav", {"caller": Raw(), "agent": Raw()}, clock=lambda: now[0]
    )
    low, high = sine(440, 48_000), sine(1000, 48_000)
    for i in range(50):
        now[0] = i * 0.02
        recorder.tap("caller", low[i * FRAME : (i + 1) * FRAME].tobytes())
        recorder.tap("agent", high[i * FRAME : (i + 1) * FRAME].tobytes())
    recorder.close()
    caller, agent = read_sides(tmp_path / "r" / "call.wav")
    assert len(caller) == 48_000
    assert has_tone(caller, 440)
    assert has_tone(agent, 1000)
