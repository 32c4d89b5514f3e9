from __future__ import annotations

import asyncio

import numpy as np

from media.conference import FRAME, Conference, mix
from media.forward import Port
from media.peer import OpusCodec
from media.tone import has_tone, share
from tests.media.test_peer import connect, heard


def pcm(value: int) -> bytes:
    return np.full(FRAME, value, dtype="<i2").tobytes()


def values(frame: bytes) -> set[int]:
    return set(np.frombuffer(frame, dtype="<i2").tolist())


def test_each_party_hears_the_others_and_not_itself() -> None:
    out = mix({"caller": pcm(100), "a": pcm(20), "b": pcm(3)})
    assert values(out["caller"]) == {23}
    assert values(out["a"]) == {103}
    assert values(out["b"]) == {120}


def test_a_silent_party_counts_as_silence_and_sums_are_clipped() -> None:
    out = mix({"caller": b"", "a": pcm(30_000), "b": pcm(30_000)})
    assert values(out["caller"]) == {32767}
    assert values(out["a"]) == {30_000}
    assert values(mix({"x": pcm(-30_000), "y": pcm(-30_000), "z": pcm(-30_000)})["x"]) == {-32768}


async def test_three_peers_each_hear_the_other_two() -> None:
    parties = {name: await connect(hz) for name, hz in (("caller", 440), ("a", 1000), ("b", 1500))}
    ports = {name: Port(leg, name) for name, (_, leg) in parties.items()}
    conference = Conference(ports, {name: OpusCodec() for name in parties})
    try:
        caller, a, b = (parties[n][0] for n in ("caller", "a", "b"))
        await heard(b, 440, mixed=True)
        await heard(b, 1000, mixed=True)
        await heard(caller, 1500, mixed=True)
        recent = caller.recent(0.5)
        assert share(recent, 1000) > 0.2
        assert share(recent, 1500) > 0.2
        assert share(recent, 440) < 0.05  # not its own voice
        assert not has_tone(a.recent(0.5), 1000, min_share=0.05)
    finally:
        conference.close()
        for client, leg in parties.values():
            await client.close()
            await leg.close()
        await asyncio.sleep(0)
