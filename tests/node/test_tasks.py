"""Owned tasks: a failure is logged, not lost; close cancels and awaits every task."""

from __future__ import annotations

import asyncio

import pytest

from node.tasks import Tasks


async def test_a_failing_task_is_logged_and_close_cancels_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = Tasks("owner-x")
    forever = asyncio.Event()

    async def fail() -> None:
        raise RuntimeError("boom")

    tasks.spawn(fail(), "failing job")
    tasks.spawn(forever.wait(), "waiting job")
    await asyncio.sleep(0.01)
    assert "owner-x: failing job failed" in caplog.text
    assert len(tasks) == 1  # the failed one is gone, the waiting one is held
    await tasks.close()
    assert len(tasks) == 0
