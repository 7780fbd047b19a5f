"""The mesh: consensus, membership and (later) discovery and the replicated state.

Only the consensus core is built so far (:mod:`nexus_node.mesh.raft`); the asyncio driver that
connects it to gRPC, timers and SQLite is the next piece (see ``docs/architecture.md``).
"""
