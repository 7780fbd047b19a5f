"""The Textual dashboard (``nexus-tui``). Not built yet: it will talk to a node only through
``nexus_node.client.NexusClient`` (see README, "What is not built yet")."""
