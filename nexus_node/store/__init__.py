"""Content-addressed files for blobs (the replicated records and Raft log live under nexus_node/mesh)."""
