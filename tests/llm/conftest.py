"""Fixtures for the Gemini tests: a fake API on loopback and clients pointed at it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from nexus_node.llm import GeminiClient, LLMSettings
from tests.conftest import dataset
from tests.llm.fake_gemini import FakeGemini


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture
async def make_client(fake: FakeGemini) -> AsyncIterator:
    """A real GeminiClient for the fake server, with test-sized timing (backoff of
    milliseconds, jitter fixed); keyword arguments override :class:`LLMSettings` fields."""
    clients: list[GeminiClient] = []

    def make(**tuning: float) -> GeminiClient:
        settings = LLMSettings(
            api_key="test-key", base_url=fake.base_url, disabled_reason="",
            **{"timeout_s": 5.0, "deadline_s": 10.0, "backoff_s": 0.01, **tuning},
        )
        client = GeminiClient(settings, rng=lambda: 0.5)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def _profile(csv: Path, target: str) -> dict[str, Any]:
    from nexus_node.pipeline.prepare import prepare  # pandas: only the tests load it

    with tempfile.TemporaryDirectory() as out:
        return prepare(str(csv), target, 1, out)["profile"]


@pytest.fixture(scope="session")
def titanic_profile() -> dict[str, Any]:
    return _profile(dataset("titanic.csv"), "Survived")


@pytest.fixture(scope="session")
def insurance_profile() -> dict[str, Any]:
    return _profile(dataset("insurance.csv"), "charges")
