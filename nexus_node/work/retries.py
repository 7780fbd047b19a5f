"""When a lost task runs again: the one rule every caller applies.

A task is *lost* when it never finished through no fault of its configuration: its node went
silent past the grace period, the coordinator changed while it ran, or its node handed it back
as it left. Who notices a loss differs (the dispatcher's heartbeat watch, a new coordinator's
recovery, a job driver whose prepare or finalize came back lost); what happens next is decided
here, and only here (docs/architecture.md, *Heartbeat reassignment*, *Leaving*, *Coordinator
change*):

* A lost task runs again with the same configuration, unless that configuration has now been
  lost more than ``max_retries`` times: a configuration that kills every node it runs on must
  not take the cluster down one node at a time.
* Losses are counted from the durable record (a trial's study), never from a coordinator's
  memory, so a new coordinator counts exactly as the last one did.
* A task handed back by a node that leaves (SIGTERM) is not its configuration's fault: it runs
  again at once and is not counted.

Pure: no clock, no I/O (tests/work/test_retries.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

#: The message, recorded as the trial's fail reason, of a task its node handed back as it left.
#: A trial's hand-back is marked in the study (``studies.HANDED_BACK_ATTR``); trials failed
#: before that mark existed are recognised by this message.
HANDED_BACK_SUFFIX = " left while running it"


def handed_back_message(node_id: str) -> str:
    return f"node {node_id}{HANDED_BACK_SUFFIX}"


def is_handed_back(reason: str) -> bool:
    return reason.endswith(HANDED_BACK_SUFFIX)


@dataclasses.dataclass(frozen=True)
class Loss:
    """One loss of a task running ``config_key`` (a trial's parameters, or a job-level task's
    name)."""

    config_key: str
    handed_back: bool = False


@dataclasses.dataclass(frozen=True)
class RetryDecision:
    retry: bool
    counted: int     # the configuration's losses that count, this one included
    reason: str = ""  # why it does not run again (empty when it does)


def decide_retry(loss: Loss, earlier: Iterable[Loss], max_retries: int) -> RetryDecision:
    """Whether the task lost in ``loss`` runs again.

    Args:
        loss: This loss.
        earlier: Every earlier loss of the job (any configuration; hand-backs included, they
            are skipped here), not this one.
        max_retries: ``--max-retries``: re-runs a configuration gets.
    """
    counted = sum(1 for e in earlier if e.config_key == loss.config_key and not e.handed_back)
    if loss.handed_back:
        return RetryDecision(True, counted)
    counted += 1
    if counted > max_retries:
        return RetryDecision(False, counted, f"lost {counted} times, more than --max-retries {max_retries}")
    return RetryDecision(True, counted)
