"""The gRPC servicers (NexusService, RunnerService, PeerService's non-Raft RPCs, Optuna's
StorageService) and the protobuf conversions. Servicers only translate (STYLE.md §4)."""
