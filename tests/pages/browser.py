"""A real headless Chromium (Debian's `chromium`, driven by playwright) for the page tests.

Playwright never downloads a browser here: it launches the installed chromium with a fresh
profile directory. For media, Chromium's fake capture device plays a WAV file (a tone made by
`write_tone`) as the microphone, and `tone_shares` measures, inside the page, how much of the
power of the audio an <audio> element plays lies at given frequencies (Goertzel over an
AnalyserNode's samples), so a test can tell which side's tone arrived.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import struct
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
MEDIA_FLAGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
RATE = 48_000
TIMEOUT_MS = 10_000
"""How long an action or an expectation waits: generous, the machine has two busy cores."""

expect.set_options(timeout=TIMEOUT_MS)


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh")
    return path


def write_tone(path: Path, frequency: float, seconds: float = 2.0) -> Path:
    """A mono 16-bit WAV holding a sine at `frequency` (Chromium loops it as the microphone)."""
    count = int(RATE * seconds)
    step = 2 * math.pi * frequency / RATE
    frames = b"".join(
        struct.pack("<h", round(0.4 * 32767 * math.sin(step * i))) for i in range(count)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(frames)
    return path


@contextlib.asynccontextmanager
async def chromium(root: Path, name: str, *, tone_hz: float | None = None) -> AsyncIterator[Page]:
    """One Chromium with a fresh profile under `root`; with `tone_hz`, its microphone plays that
    tone. Yields a page; everything is closed on exit."""
    profile = root / f"chromium-{name}"
    profile.mkdir(parents=True)
    args = list(FLAGS)
    if tone_hz is not None:
        wav = write_tone(root / f"tone-{name}.wav", tone_hz)
        args += [*MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={wav}"]
    async with async_playwright() as playwright:
        context: BrowserContext = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            headless=True,
            args=args,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            await context.close()


_MEASURE = """
async ([selector, frequencies, windows]) => {
  const audio = document.querySelector(selector);
  if (!audio || !audio.srcObject) return null;
  const ctx = new AudioContext();
  await ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 8192;
  ctx.createMediaStreamSource(audio.srcObject).connect(analyser);
  const rate = ctx.sampleRate;
  const best = { rms: 0, shares: Object.fromEntries(frequencies.map((f) => [f, 0])) };
  const block = new Float32Array(analyser.fftSize);
  for (let w = 0; w < windows; w++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    analyser.getFloatTimeDomainData(block);
    let total = 0;
    for (const x of block) total += x * x;
    total /= block.length;
    best.rms = Math.max(best.rms, Math.sqrt(total));
    if (total === 0) continue;
    for (const f of frequencies) {
      const c = 2 * Math.cos((2 * Math.PI * f) / rate);
      let s1 = 0, s2 = 0;
      for (const x of block) { const s = x + c * s1 - s2; s2 = s1; s1 = s; }
      const power = (2 * (s1 * s1 + s2 * s2 - c * s1 * s2)) / (block.length * block.length);
      best.shares[f] = Math.max(best.shares[f], Math.min(1, power / total));
    }
  }
  await ctx.close();
  return best;
}
"""


async def tone_shares(
    page: Page, frequencies: Sequence[float], selector: str = "#remote-audio", windows: int = 8
) -> dict[str, Any] | None:
    """{"rms", "shares": {frequency: best share of the power over `windows` blocks}} of what
    the page's audio element plays, or None when it plays nothing yet."""
    result = await page.evaluate(_MEASURE, [selector, list(frequencies), windows])
    return None if result is None else dict(result)
