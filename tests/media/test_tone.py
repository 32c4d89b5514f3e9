from __future__ import annotations

import random
from array import array

import pytest

from media.tone import dominant, goertzel, has_tone, mean_power, share, sine


def test_a_sine_is_found_at_its_frequency_and_not_at_another() -> None:
    block = sine(440, 4800)
    assert has_tone(block, 440)
    assert not has_tone(block, 1000)
    assert share(block, 440) > 0.9
    assert share(block, 1000) < 0.01


def test_goertzel_gives_the_mean_power_of_a_whole_cycle_sine() -> None:
    block = sine(1000, 4800, amplitude=0.5)  # 100 whole cycles
    assert goertzel(block, 1000) == pytest.approx(mean_power(block), rel=0.01)


def test_a_mix_of_two_tones_names_the_louder() -> None:
    low, high = sine(440, 4800, amplitude=0.1), sine(1000, 4800, amplitude=0.4)
    mixed = array("h", (a + b for a, b in zip(low, high, strict=True)))
    assert dominant(mixed, [440, 1000, 2000]) == 1000
    assert not has_tone(mixed, 440)


def test_silence_and_noise_hold_no_tone() -> None:
    assert not has_tone(array("h", [0] * 960), 440)
    assert dominant(array("h", [0] * 960), [440]) is None
    noise = array("h", (random.Random(7).randint(-8000, 8000) for _ in range(4800)))
    assert not has_tone(noise, 440)
    assert not has_tone([], 440)


def test_a_quiet_tone_is_not_taken_for_a_signal() -> None:
    assert not has_tone(sine(440, 4800, amplitude=0.001), 440)


def test_sine_refuses_frequencies_beyond_nyquist() -> None:
    with pytest.raises(ValueError, match="not between"):
        sine(30_000, 10)
