"""Prepared datasets shared by the pipeline tests (prepared once per session)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.pipeline.helpers import prepare


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains models for seconds; still in the default run")


@pytest.fixture(scope="session")
def insurance(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return prepare("insurance.csv", "charges", tmp_path_factory.mktemp("insurance"))


@pytest.fixture(scope="session")
def titanic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return prepare("titanic.csv", "Survived", tmp_path_factory.mktemp("titanic"))
