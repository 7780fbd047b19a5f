"""Runner processes: long-lived children (one per slot) that do the heavy work.

The node process never imports torch, pandas or scikit-learn; runners do. A runner is
started once per slot with a fresh interpreter (never ``fork``: gRPC's threads do not
survive it), pays the import cost once, and then executes tasks sent as JSON lines
(``protocol``) by calling :func:`nexus_node.runner.tasks.run_task`.
"""
