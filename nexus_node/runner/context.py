"""What a running task may ask of the runner that executes it."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from nexus_node.errors import InvalidInput


class TaskContext(Protocol):
    """Handed to every task.

    ``cancelled()`` turns true once the node asks the task to stop (job cancelled, time
    budget reached); long tasks check it between epochs and return early. ``emit`` sends a
    progress event (a JSON-able dict) to the node while the task runs.
    """

    def cancelled(self) -> bool: ...

    def emit(self, event: dict[str, Any]) -> None: ...


class LocalContext:
    """A context for calling tasks in-process (tests, benchmarks): never cancelled,
    events collected in a list."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cancel_requested = False

    def cancelled(self) -> bool:
        return self.cancel_requested

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def need(req: Mapping[str, Any], *keys: str) -> None:
    """Refuse a task request that lacks one of ``keys``."""
    absent = [k for k in keys if k not in req]
    if absent:
        raise InvalidInput(f"task {req.get('task')!r} request lacks {absent}")
