"""A test fails when code on a running event loop opens, removes or lists files.

Blocking file work on the loop stalls every RPC, heartbeat and Raft tick of a node (STYLE §8);
it belongs in a thread (``asyncio.to_thread``, :mod:`nexus_node.blobs.files`). An audit hook
(PEP 578: CPython raises an audit event for each ``open``, ``os.remove``, ``os.listdir``...,
whoever calls it) is installed once; while the ``no_blocking_io`` fixture is armed, such an
event on a thread that runs an event loop raises :class:`BlockingOnLoop` at the call, and the
test fails at teardown with where it happened even if the code under test swallowed the error.
Threads (``to_thread``, gRPC's, SQLite's) are not checked, nor reads of ``/proc`` and the
cgroup files (the kernel's memory figures a heartbeat reads: no disk behind them). Imports are not flagged: Python
reads modules with ``open`` too, and a lazy import is a different concern.

Use: ``pytest_plugins = ["tests.blocking"]`` and the fixture (autouse in a ``conftest.py``
where the tests run node code in-process); a test that must do file work on its loop itself
(writing its inputs) wraps it in :func:`allow_blocking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import traceback
from typing import Any, Iterator

import pytest

#: The audit events of blocking file work (https://docs.python.org/3/library/audit_events.html).
EVENTS = frozenset({"open", "os.remove", "os.rename", "os.replace", "os.rmdir", "os.mkdir", "os.listdir",
                    "os.scandir", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
                    "tempfile.mkstemp", "tempfile.mkdtemp"})
_CODE = (".py", ".pyc", ".so", ".pyd", ".pth")


class BlockingOnLoop(RuntimeError):
    pass


_state = threading.local()
_armed = False
_found: list[str] = []


def _importing() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _armed or event not in EVENTS or getattr(_state, "allowed", False):
        return
    if event == "open" and (not args or not isinstance(args[0], (str, bytes)) or
                            str(args[0]).endswith(_CODE) or "/__pycache__/" in str(args[0])):
        return   # a file descriptor (already open), or a module being imported
    if event == "open" and str(args[0]).startswith(("/proc/", "/sys/fs/cgroup/")):
        return   # the kernel's own figures (memory, cgroup limits): no disk, nothing to wait for
    if _importing():
        return   # the import system listing a package's folder for a lazy import
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return   # not on an event loop's thread
    _state.allowed = True   # formatting the stack below opens source files itself
    try:
        where = "".join(traceback.format_stack(limit=12)[:-1])
    finally:
        _state.allowed = False
    what = f"{event}{args[:2]!r} on the event loop"
    _found.append(f"{what}\n{where}")
    raise BlockingOnLoop(f"{what}: run it in a thread (asyncio.to_thread)")


sys.addaudithook(_hook)


@contextlib.contextmanager
def allow_blocking() -> Iterator[None]:
    """File work the test itself does on its loop (not the code under test)."""
    _state.allowed = True
    try:
        yield
    finally:
        _state.allowed = False


@contextlib.contextmanager
def armed() -> Iterator[list[str]]:
    """Checks while inside; yields the list of what was found."""
    global _armed
    del _found[:]
    _armed = True
    try:
        yield _found
    finally:
        _armed = False


@pytest.fixture
def no_blocking_io() -> Iterator[None]:
    with armed() as found:
        yield
    if found:
        pytest.fail("blocking file work on the event loop:\n" + "\n".join(found), pytrace=False)
