"""The data and model pipeline that runs inside runner processes.

Each step is its own module: ``csvio`` (read a user's CSV as text), ``profile`` (column
kinds, task type), ``prepare`` (fitted preprocessing as JSON, split, arrays), ``target``
(regression target scaling), ``model`` and ``train`` (the MLP and its training loop),
``metrics``, ``importance``, ``artifact`` (the zip a model ships as) and ``summary``.

This package file imports nothing: the node process imports :mod:`.summary`, which is
stdlib-only, and must not pay for pandas or torch by the way of this ``__init__``.
"""
