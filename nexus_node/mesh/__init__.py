"""The mesh: consensus, the replicated state, discovery and (later) membership management.

Built so far:

* :mod:`nexus_node.mesh.raft` — the Raft core, a pure synchronous state machine;
* :mod:`nexus_node.mesh.driver` — the asyncio driver running the core against a timer, SQLite
  (:mod:`~nexus_node.mesh.log_store`) and gRPC ``PeerService`` (:mod:`~nexus_node.mesh.transport`);
* :mod:`nexus_node.mesh.state` — the replicated state machine, applying each proposal id once;
* :mod:`nexus_node.mesh.journal` — Optuna's journal on the replicated log;
* :mod:`nexus_node.mesh.discovery` and :mod:`nexus_node.mesh.peers` — mDNS and seeds filling
  a directory of candidate peers.

Only discovery is wired into the node, as a peer list (see ``docs/architecture.md``).
"""
