"""Tones: make a sine, and find one in decoded audio by its frequency (Goertzel). Pure.

Samples are signed 16-bit mono (`array('h')` or any sequence of ints). Detection compares the
power at the wanted frequency with the power of the whole block, so silence, noise or another
tone does not count.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence

RATE = 48_000


def sine(frequency: float, samples: int, rate: int = RATE, amplitude: float = 0.3) -> array[int]:
    """`samples` of a sine at `frequency` Hz, `amplitude` of full scale."""
    if not 0 < frequency < rate / 2:
        raise ValueError(f"frequency {frequency} Hz is not between 0 and {rate / 2} Hz")
    peak = 32767 * amplitude
    step = 2 * math.pi * frequency / rate
    return array("h", (round(peak * math.sin(step * i)) for i in range(samples)))


def goertzel(samples: Sequence[int], frequency: float, rate: int = RATE) -> float:
    """The power of `samples` at `frequency`, normalised so that a full-block sine of amplitude
    A gives about (A * n / 2) ** 2 / n ** 2 * 2 = A ** 2 / 2 (the sine's mean power)."""
    n = len(samples)
    if n == 0:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
    return 2 * power / (n * n)


def mean_power(samples: Sequence[int]) -> float:
    return sum(x * x for x in samples) / len(samples) if samples else 0.0


def share(samples: Sequence[int], frequency: float, rate: int = RATE) -> float:
    """The share (0-1) of the block's power that lies at `frequency`."""
    total = mean_power(samples)
    return 0.0 if total == 0 else min(1.0, goertzel(samples, frequency, rate) / total)


def has_tone(
    samples: Sequence[int],
    frequency: float,
    rate: int = RATE,
    *,
    min_share: float = 0.5,
    min_rms: float = 100.0,
) -> bool:
    """Whether `samples` hold a tone at `frequency`: loud enough, and most of the power there."""
    return mean_power(samples) >= min_rms**2 and share(samples, frequency, rate) >= min_share


def dominant(samples: Sequence[int], candidates: Iterable[float], rate: int = RATE) -> float | None:
    """Which of the candidate frequencies holds most of the power, or None for silence."""
    best, best_power = None, 0.0
    for frequency in candidates:
        power = goertzel(samples, frequency, rate)
        if power > best_power:
            best, best_power = frequency, power
    return best
