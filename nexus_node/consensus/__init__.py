"""Raft: the pure core (``raft/``), and the I/O around it (driver, log store, transport).

``raft/`` has no sockets, clocks, threads or unseeded randomness (STYLE.md §1). The driver owns
the core on one asyncio task and handles each Ready in a fixed order (see ``driver.py``).
Nothing here knows jobs, studies or blobs: the layers above register their state machines with
:class:`~nexus_node.consensus.state.ReplicatedState` by command kind.
"""
