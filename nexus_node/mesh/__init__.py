"""The mesh: consensus, the replicated state and (later) discovery and membership management.

Built so far:

* :mod:`nexus_node.mesh.raft` — the Raft core, a pure synchronous state machine;
* :mod:`nexus_node.mesh.driver` — the asyncio driver running the core against a timer, SQLite
  (:mod:`~nexus_node.mesh.log_store`) and gRPC ``PeerService`` (:mod:`~nexus_node.mesh.transport`);
* :mod:`nexus_node.mesh.state` — the replicated state machine, applying each proposal id once;
* :mod:`nexus_node.mesh.journal` — Optuna's journal on the replicated log.

Not wired into the node yet (see ``docs/architecture.md``).
"""
