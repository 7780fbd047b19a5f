"""Several writes of Optuna's ``JournalStorage`` in one append of its journal backend.

``JournalStorage`` appends one log per write and replays it at once (a consensus round each on
the replicated journal). A trial's epochs, its end, its parameters or its failure are several
writes that belong together; :class:`BatchingBackend` collects them and appends them as one,
through Optuna's public API only:

* Inside ``with storage.batch() as batch:`` every ``append_logs`` that the storage makes *on this
  thread* is held (other threads write as usual). The storage's own replay of a held write
  reads nothing new, and whoever wrote it keeps the value on its own copy (``Trial`` does).
* ``batch.last()`` says that the next write is the batch's last: its ``append_logs`` carries every
  held log with its own, in one append of the wrapped backend, and the storage replays them
  right after, under its own lock, in that same call, as it does for any write of its own.

Refusal: ``JournalStorage`` refuses a write to a trial that is finished by raising, on replay,
``UpdateFinishedTrialError`` for a log of *this* worker (its id and this thread), and skips
another worker's such log silently (Optuna's journal replay, ``_trial_exists_and_updatable``).
A batch's logs are one command in the log: either the trial was running when it was applied
and all apply, or it had finished and none does. So only the first log keeps the writer's
worker id, and the others are marked as a different worker (:data:`FOLLOWER_SUFFIX`): a refused
batch raises once, in its last write, and leaves no log behind that would raise later in an
unrelated call of this thread. Batches hold writes on one trial whose state, if written, comes
last, and never create or start a trial (a worker's ownership of a RUNNING trial is the one
other thing the worker id decides).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterable, Iterator

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

#: Appended to the worker id of a batch's logs after the first. Optuna's worker ids end in a
#: thread id (digits), so no worker ever has one with this suffix.
FOLLOWER_SUFFIX = "+batched"


def as_one_append(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch's logs as they are appended: the first as written, the others marked as another
    worker's (see the module docstring)."""
    return logs[:1] + [{**log, "worker_id": f"{log['worker_id']}{FOLLOWER_SUFFIX}"} for log in logs[1:]]


class Batch:
    """The logs one thread holds back (see :class:`BatchingBackend`)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []
        self.closing = False

    def last(self) -> None:
        """The next write on this thread is the batch's last: it appends every held log."""
        self.closing = True


class BatchingBackend(BaseJournalBackend):
    """A journal backend that can hold one thread's appends and write them as one.

    Args:
        backend: The backend that stores the journal (reads pass straight through).
    """

    def __init__(self, backend: BaseJournalBackend) -> None:
        self.backend = backend
        self._local = threading.local()

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self.backend.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        batch: Batch | None = getattr(self._local, "batch", None)
        if batch is None:
            self.backend.append_logs(logs)
            return
        batch.logs.extend(logs)
        if batch.closing:
            held, batch.logs = batch.logs, []
            self._local.batch = None   # the batch is written: this thread writes as usual again
            self.backend.append_logs(as_one_append(held))

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Holds this thread's appends until the write after :meth:`Batch.last`.

        Raises:
            RuntimeError: batches nested, or the block ended with logs held and no last write
                (they are dropped). On an exception in the block the held logs are dropped.
        """
        if getattr(self._local, "batch", None) is not None:
            raise RuntimeError("journal batches do not nest")
        batch = self._local.batch = Batch()
        try:
            yield batch
        finally:
            self._local.batch = None
        if batch.logs:
            raise RuntimeError(f"a journal batch ended with {len(batch.logs)} logs held: call last() "
                               "before its last write")

    def __getstate__(self) -> dict[str, Any]:
        return {"backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.backend = state["backend"]
        self._local = threading.local()


class BatchedJournalStorage(JournalStorage):
    """Optuna's ``JournalStorage`` over a :class:`BatchingBackend`, with :meth:`batch`.

    Example:
        ``storage = BatchedJournalStorage(journal.backend())``, then::

            with storage.batch() as batch:
                storage.set_trial_user_attr(trial_id, "epochs", 40)
                batch.last()
                storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.9])
    """

    def __init__(self, backend: BaseJournalBackend) -> None:
        self.batches = BatchingBackend(backend)
        super().__init__(self.batches)

    def batch(self) -> contextlib.AbstractContextManager[Batch]:
        """See :meth:`BatchingBackend.batch`."""
        return self.batches.batch()
