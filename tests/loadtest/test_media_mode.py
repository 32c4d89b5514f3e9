"""The load test's media mode: every caller and agent a WebRTC peer sending its own tone, audio
checked both ways on every answered call. The tone check and its failures without a cluster;
four concurrent calls across two sites against a real LocalCluster; the shipped scenario
(24 agents, 20-24 calls in talk at once, about 90 s) marked slow."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest

from loadtest import kpi
from loadtest.media import VERIFIED, Phones, ToneLeg, agent_hz, caller_hz
from loadtest.run import Options, run
from loadtest.scenario import ScenarioError, load_scenario, parse_scenario
from media.peer import PeerLeg, encode_tone
from media.rtp import build

MEDIA = Path(__file__).parents[2] / "loadtest" / "scenarios" / "media-two-sites.toml"


class FakeLeg:
    """What ToneLeg needs of a PeerLeg, without a network: packets sent are kept."""

    ssrc = 1234
    payload_type = 111
    connected = True

    def __init__(self) -> None:
        self.on_rtp: Any = None
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)

    async def close(self) -> None:
        self.on_rtp = None


def tone_leg(frequency: float) -> ToneLeg:
    return ToneLeg(cast(PeerLeg, FakeLeg()), frequency, encode_tone(frequency, 1.0))


def play(leg: ToneLeg, frequency: float, seconds: float = 0.6, first: int = 0) -> None:
    """`leg` receives `seconds` of `frequency` as RTP, from payload `first` of the loop on, as
    the node would forward it."""
    payloads = encode_tone(frequency, 1.0)
    for i in range(round(seconds / 0.02)):
        payload = payloads[(first + i) % len(payloads)]
        leg._rtp(build(payload, payload_type=111, sequence=i, timestamp=960 * i, ssrc=99))


def test_a_listening_leg_hears_the_tone_it_was_sent_and_no_other() -> None:
    leg = tone_leg(caller_hz(0))
    play(leg, agent_hz(0))
    assert not leg.hears(agent_hz(0))  # not listening: nothing kept
    leg.listen()
    assert not leg.hears(agent_hz(0))  # nothing yet
    play(leg, agent_hz(0))
    assert leg.hears(agent_hz(0))
    assert leg.packets_heard == 30
    assert not leg.hears(agent_hz(1))  # the next agent's tone, 20 Hz away
    assert not leg.hears(caller_hz(0))  # its own tone
    leg.deafen()
    assert not leg.hears(agent_hz(0))


@pytest.mark.parametrize("first", [1, 13, 37])
def test_a_stream_joined_midway_is_heard_within_two_seconds(first: int) -> None:
    leg = tone_leg(caller_hz(0))
    leg.listen()
    play(leg, agent_hz(1), 2.0, first)
    assert leg.hears(agent_hz(1))


def test_tones_are_distinct_for_concurrent_calls() -> None:
    callers = {caller_hz(i) for i in range(50)}
    agents = {agent_hz(i) for i in range(75)}
    assert len(callers) == 50
    assert len(agents) == 75
    assert max(callers) < min(agents)


class Playing:
    """Plays a tone into a leg every 20 ms, as the node would forward it."""

    def __init__(self, leg: ToneLeg, frequency: float) -> None:
        self.task = asyncio.create_task(self._play(leg, frequency))

    async def _play(self, leg: ToneLeg, frequency: float) -> None:
        payloads = encode_tone(frequency, 1.0)
        for i in range(500):  # 10 s at most
            packet = build(payloads[i % 50], payload_type=111, sequence=i, timestamp=0, ssrc=9)
            leg._rtp(packet)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_the_check_names_what_was_not_heard() -> None:
    caller, agent = tone_leg(caller_hz(3)), tone_leg(agent_hz(5))
    phones = Phones()
    playing = Playing(caller, agent_hz(5))  # the caller hears its agent; the agent nothing
    result = await phones.check(caller, agent, timeout_s=1.0)
    await playing.stop()
    assert result.startswith("the agent did not hear the caller's 460 Hz (0 packets"), result
    echo = [Playing(caller, agent_hz(5)), Playing(agent, agent_hz(5))]  # its own tone back
    assert await phones.check(caller, agent, timeout_s=1.0) != VERIFIED
    for playing in echo:
        await playing.stop()
    both = [Playing(caller, agent_hz(5)), Playing(agent, caller_hz(3))]
    assert await phones.check(caller, agent, timeout_s=5.0) == VERIFIED
    for playing in both:
        await playing.stop()
    ended = asyncio.Event()
    ended.set()
    silent = await phones.check(tone_leg(400), tone_leg(1500), 5.0, ended)
    assert "before the call ended" in silent
    assert "the caller did not hear" in silent


async def test_the_ticker_sends_every_leg_its_own_tone() -> None:
    legs = [tone_leg(caller_hz(1)), tone_leg(agent_hz(1))]
    async with Phones() as phones:
        phones._legs.update(legs)
        await asyncio.sleep(0.6)
        phones._legs.clear()
    for leg, other in zip(legs, reversed(legs), strict=True):
        sent = cast(FakeLeg, leg.leg).sent
        assert 20 <= len(sent) <= 35  # every 20 ms
        listener = tone_leg(300)
        listener.listen()
        for packet in sent:
            listener._rtp(packet)
        assert listener.hears(leg.frequency)
        assert not listener.hears(other.frequency)


def test_kpi_peak_and_audio_figures() -> None:
    assert kpi.peak_concurrent([]) == 0
    assert kpi.peak_concurrent([(0, 10), (5, 15), (10, 20), (12, 13)]) == 3
    assert kpi.peak_concurrent([(0, 10), (10, 20)]) == 1  # back to back: not at once
    figures = kpi.audio_figures([("c-1", "verified"), ("c-2", "no audio"), ("c-3", "")])
    assert (figures.answered, figures.verified, figures.failed) == (3, 1, 2)
    assert figures.failures == (("c-2", "no audio"), ("c-3", "not checked"))


def test_mode_is_validated() -> None:
    text = MEDIA.read_text()
    assert load_scenario(MEDIA).mode == "media"
    assert parse_scenario(text.replace('mode = "media"', "")).mode == "signalling"
    with pytest.raises(ScenarioError) as error:
        parse_scenario(text.replace('mode = "media"', 'mode = "audio"'))
    assert error.value.field == "scenario.mode"
    assert "'signalling' or 'media'" in str(error.value)
    with pytest.raises(ScenarioError) as error:
        parse_scenario(text.replace("count = 24", "count = 500"))
    assert error.value.field == "agents"


UNCONNECTED = "caller leg not connected, agent leg connected"
"""A known defect, not yet explained: now and then (about one full test run in three) one
caller's WebRTC leg never connects to its node, so that call has no audio either way."""


def _check_media_report(
    report: dict[str, Any], out: Path, unconnected_callers: int = 0
) -> dict[str, Any]:
    """Every answered call verified both ways, but for at most `unconnected_callers` calls that
    failed only by the known defect above."""
    assert report["scenario"]["calls"] == "media"
    audio = report["system"]["audio"]
    assert audio["answered"] > 0
    failed = audio["failed_examples"]
    assert audio["failed"] <= unconnected_callers, failed
    assert all(UNCONNECTED in example["problem"] for example in failed), failed
    assert audio["verified_both_ways"] == audio["answered"] - audio["failed"], failed
    assert report["checks"] == {
        "lost_calls": 0,
        "double_bookings": 0,
        "audio_failed": audio["failed"],
        "passed": audio["failed"] == 0,
    }
    assert report["system"]["cross_site_share"] == 1.0  # callers at site-a, agents at site-b
    assert report["system"]["calls_refused"] == 0
    text = (out / "report.txt").read_text()
    counts = f"{audio['answered']} answered, {audio['verified_both_ways']} verified both ways"
    assert f"{counts}, {audio['failed']} failed" in text
    return dict(audio)


async def test_four_concurrent_media_calls_across_two_sites(tmp_path: Path) -> None:
    full = load_scenario(MEDIA)
    scenario = dataclasses.replace(
        full,
        name="media-short",
        duration_s=10.0,
        warmup_s=2.0,
        drain_s=30.0,
        agents=tuple(dataclasses.replace(g, count=4) for g in full.agents),
        arrivals=tuple(dataclasses.replace(a, rate_per_s=0.8) for a in full.arrivals),
        handle=dataclasses.replace(full.handle, mean_s=6.0),
    )
    report = await run(scenario, Options(out=tmp_path, progress=False), out=lambda _: None)
    audio = _check_media_report(report, tmp_path, unconnected_callers=1)
    assert audio["answered"] >= 5
    assert report["system"]["peak_talking_calls"] >= 3


@pytest.mark.slow
async def test_the_media_scenario_talks_twenty_calls_at_once(tmp_path: Path) -> None:
    report = await run(
        load_scenario(MEDIA), Options(out=tmp_path, progress=False), out=lambda _: None
    )
    audio = _check_media_report(report, tmp_path)
    assert audio["answered"] >= 40
    assert report["system"]["peak_talking_calls"] >= 20
