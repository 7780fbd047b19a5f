"""The operations of Optuna's journal format, which the replicated journal and its compaction
both read and write."""

from __future__ import annotations


class Op:
    """The ``op_code`` of each operation of Optuna's journal format (``JournalStorage`` writes
    and replays them; Optuna 5.0 and 5.1 use these numbers, in its ``journal/_storage.py``).
    They are part of the format every journal file, Redis list and Nexus log holds, so Optuna
    keeps them stable; they are written out here because Optuna's own names are private."""

    CREATE_STUDY = 0
    DELETE_STUDY = 1
    SET_STUDY_USER_ATTR = 2
    SET_STUDY_SYSTEM_ATTR = 3
    CREATE_TRIAL = 4
    SET_TRIAL_PARAM = 5
    SET_TRIAL_STATE_VALUES = 6
    SET_TRIAL_INTERMEDIATE_VALUE = 7
    SET_TRIAL_USER_ATTR = 8
    SET_TRIAL_SYSTEM_ATTR = 9
    DISCARD_TRIALS = 10   # written by Rustuna; Optuna's replay skips it
