"""These tests run node code on their own event loop: blocking file work there fails them
(tests/blocking.py)."""

import pytest


@pytest.fixture(autouse=True)
def _no_blocking_file_work_on_the_loop(no_blocking_io: None) -> None:
    pass
