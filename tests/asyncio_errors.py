"""A test fails when a long-lived asyncio task dies with an error nobody handled.

Such an error is invisible in a passing test: asyncio only logs it ("Task exception was never
retrieved", when the task is collected; "Exception in callback ..."), and a node whose vital
task died this way carries on as a zombie. Every event loop's ``call_exception_handler`` (where
asyncio reports these) is wrapped for the session; the autouse fixture collects garbage at
teardown, so the tasks that died unretrieved report themselves, and fails the test with what
was reported. A task cancelled is not an error.

A test that expects such a report marks itself ``@pytest.mark.allow_task_errors``.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, Iterator

import pytest

_reports: list[dict[str, Any]] = []
_original = asyncio.BaseEventLoop.call_exception_handler


def _stale_grpc_event(context: dict[str, Any]) -> bool:
    """gRPC's aio poller, shared by every loop of the process, hands a finished call's event to
    the loop that made the call. When that loop was an earlier test's, already closed, the loop
    running now reports the refused hand-over. It concerns no code of the test that sees it (a
    node runs one loop for its whole life), so it does not fail that test."""
    exc = context.get("exception")
    return (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
            and "PollerCompletionQueue._handle_events" in repr(context.get("handle")))


def _recording(self: asyncio.BaseEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if (exc is not None and not isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit))
            and not _stale_grpc_event(context)):
        _reports.append(context)
    _original(self, context)


asyncio.BaseEventLoop.call_exception_handler = _recording  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_task_errors: unhandled asyncio task errors do not fail this test")


def _describe(context: dict[str, Any]) -> str:
    exc = context["exception"]
    where = context.get("task") or context.get("future") or context.get("handle") or ""
    return f"{context.get('message', 'asyncio error')}: {type(exc).__name__}: {exc} ({where!r})"[:600]


@pytest.fixture(autouse=True)
def fail_on_task_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    gc.collect()
    del _reports[:]   # left by an earlier test's garbage: that test was checked already
    yield
    gc.collect()   # tasks that died unretrieved report on collection
    found = list(_reports)
    del _reports[:]
    if found and request.node.get_closest_marker("allow_task_errors") is None:
        pytest.fail("unhandled errors in asyncio tasks or callbacks:\n  " + "\n  ".join(map(_describe, found)),
                    pytrace=False)
