"""Real audio between two headless Chromiums through two nodes of different sites.

Chromium A, on the click-to-call page at site A, calls; Chromium B, on the agent desk at a node
of site B, answers. Each browser's fake microphone plays its own tone; each tone is found by its
frequency in the audio the OTHER browser plays (not merely "frames arrived"), through hold and
mute. Hanging up ends both legs; the call record shows it and names the recording, which holds
each side's tone on its own channel.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from media.tone import share
from tests.node.test_cluster import Client, eventually
from tests.pages.browser import chromium, tone_shares
from tests.pages.test_desk import HOME, OWNER, cluster, sign_in, ui

__all__ = ["cluster"]  # the fixture, shared with test_desk

CALLER_HZ = 600.0
AGENT_HZ = 1000.0
HEARD = 0.5  # share of the played audio's power at the other side's frequency
OWN = 0.2  # at most this share of one's own tone may come back


async def hears(page: Page, wanted: float, own: float, within_s: float = 10) -> dict[str, Any]:
    """Wait until `page` plays `wanted` (and not much of `own`); the last measurement."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal last
        measured = await tone_shares(page, [wanted, own], windows=5)
        if measured is None:
            return False
        last = measured
        shares = measured["shares"]
        return bool(shares[str(int(wanted))] >= HEARD and shares[str(int(own))] <= OWN)

    try:
        await eventually(check, within_s, f"{wanted} Hz heard")
    except AssertionError as error:
        raise AssertionError(f"{error}; last measured {last}") from None
    return last


async def no_longer_hears(page: Page, tone: float, within_s: float = 10) -> None:
    async def check() -> bool:
        measured = await tone_shares(page, [tone], windows=3)
        return measured is not None and measured["shares"][str(int(tone))] <= OWN

    await eventually(check, within_s, f"{tone} Hz gone")


@pytest.mark.slow
async def test_each_browser_hears_the_other_ones_tone_across_sites(
    cluster: Client, tmp_path: Path
) -> None:
    client = cluster
    passwords = client.cluster.credentials.passwords
    async with (
        chromium(tmp_path, "agent", tone_hz=AGENT_HZ) as agent,
        chromium(tmp_path, "caller", tone_hz=CALLER_HZ) as caller,
    ):
        errors: list[str] = []
        for page in (agent, caller):
            page.on("pageerror", lambda error: errors.append(str(error)))
        await agent.goto(ui(client, HOME, "agent"))
        await sign_in(agent, "ben", passwords["ben"])
        await expect(agent.locator("#audio-status")).to_have_text("connected")

        async def ben_known_at_the_owner() -> bool:
            record = await client.agent(OWNER, "ben")
            return record is not None and record["state"] == "available"

        await eventually(ben_known_at_the_owner, 5, "ben available at site A")

        await caller.goto(ui(client, OWNER, "call"))
        await caller.get_by_role("textbox", name="Queue").fill("sales")
        await caller.get_by_label("Your number (caller ID)").fill("+4930124")
        await caller.get_by_role("button", name="Call").click()
        await expect(caller.locator("#audio-status")).to_have_text("connected")
        offer = agent.get_by_role("article", name="Incoming call from Jonas Weber")
        await offer.get_by_role("button", name="Answer").click()
        await expect(caller.locator("#call-state")).to_have_text("Connected")

        at_caller = await hears(caller, AGENT_HZ, CALLER_HZ)
        at_agent = await hears(agent, CALLER_HZ, AGENT_HZ)
        print(f"caller hears {at_caller}; agent hears {at_agent}")

        # hold and mute keep the agent's audio from the caller; resume and unmute bring it back
        for press, release in (("Hold", "Resume"), ("Mute", "Unmute")):
            await agent.get_by_role("button", name=press, exact=True).click()
            await expect(agent.get_by_role("button", name=release, exact=True)).to_be_visible()
            await no_longer_hears(caller, AGENT_HZ)
            await agent.get_by_role("button", name=release, exact=True).click()
            await hears(caller, AGENT_HZ, CALLER_HZ)

        call_id = (await caller.locator("#call-ref").inner_text()).removeprefix("Call reference ")
        await caller.get_by_role("button", name="Hang up").click()
        await expect(caller.locator("#call-state")).to_have_text("Call ended")
        await expect(caller.locator("#audio-status")).to_have_text("off")
        assert await caller.evaluate("document.querySelector('#remote-audio').srcObject") is None
        await expect(agent.locator("#state-pill")).to_have_text("Wrap-up")
        await expect(agent.locator("#log")).to_contain_text("Call ended")
        # the agent's own connection stays up for the next call
        await expect(agent.locator("#audio-status")).to_have_text("connected")

        _, record = await client.get(OWNER, f"/records/{call_id}")
        assert record["call"]["outcome"] == "completed"
        assert [(leg["agent_id"], leg["result"]) for leg in record["legs"]] == [
            ("ben", "completed")
        ]
        recording = record["call"]["recording"]  # the sales queue records
        assert recording, record["call"]
        shares = recorded_shares(client.cluster.root / f"{OWNER}-data" / recording)
        print(f"recording {recording}: {shares}")
        assert shares["caller"][CALLER_HZ] >= HEARD, shares  # the caller's side: left
        assert shares["agent"][AGENT_HZ] >= HEARD, shares  # the agent's side: right
        assert shares["caller"][AGENT_HZ] <= OWN, shares
        assert shares["agent"][CALLER_HZ] <= OWN, shares
        assert errors == []


def recorded_shares(path: Path) -> dict[str, dict[float, float]]:
    """Per side of a recording (stereo: the caller left, the agent right), the best share of a
    200 ms block's power at each test tone."""
    with wave.open(str(path)) as audio:
        rate, channels = audio.getframerate(), audio.getnchannels()
        frames = audio.readframes(audio.getnframes())
    assert channels == 2, f"{path}: {channels} channels"
    samples = memoryview(frames).cast("h").tolist()
    block = rate // 5
    best: dict[str, dict[float, float]] = {}
    for side, channel in (("caller", samples[0::2]), ("agent", samples[1::2])):
        best[side] = {CALLER_HZ: 0.0, AGENT_HZ: 0.0}
        for start in range(0, len(channel) - block, block):
            for hz in best[side]:
                piece = channel[start : start + block]
                best[side][hz] = max(best[side][hz], share(piece, hz, rate))
    return best
