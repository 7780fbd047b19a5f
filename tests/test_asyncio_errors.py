"""The fixture that fails a test on an unhandled error in an asyncio task (tests/asyncio_errors.py)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tests import asyncio_errors


@pytest.mark.allow_task_errors
async def test_a_task_that_dies_unretrieved_is_reported():
    async def dies() -> None:
        raise RuntimeError("the loop failed")

    task = asyncio.create_task(dies())
    await asyncio.wait([task])
    del task
    gc.collect()
    assert any(isinstance(c["exception"], RuntimeError) for c in asyncio_errors._reports)
    asyncio_errors._reports.clear()


async def test_a_cancelled_or_retrieved_task_is_not_reported():
    async def forever() -> None:
        await asyncio.Event().wait()

    async def dies() -> None:
        raise RuntimeError("handled")

    waiting, failing = asyncio.create_task(forever()), asyncio.create_task(dies())
    waiting.cancel()
    results = await asyncio.gather(waiting, failing, return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    del waiting, failing
    gc.collect()
    assert asyncio_errors._reports == []
