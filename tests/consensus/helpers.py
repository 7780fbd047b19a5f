"""A tiny synchronous cluster for the focused Raft rule tests: no randomness but the nodes' own."""

from __future__ import annotations

from typing import Callable

from nexus_node.consensus.raft import (
    Entry,
    EntryType,
    HardState,
    Membership,
    MemoryStorage,
    Message,
    RaftConfig,
    RawNode,
    Role,
    bootstrap,
)


def config_entry(voters: list[str], learners: tuple[str, ...] = ()) -> Entry:
    return Entry(1, 1, EntryType.CONFIG, Membership.of(voters, learners).encode())


def node_with_log(node_id: str, voters: list[str], terms: list[int], hard: HardState,
                  **cfg: object) -> tuple[RawNode, MemoryStorage]:
    """A node whose storage holds the bootstrap CONFIG entry then one entry per term in ``terms``."""
    st = MemoryStorage()
    st.append([config_entry(voters)] + [Entry(i + 2, t, data=f"e{i + 2}".encode())
                                        for i, t in enumerate(terms)])
    st.set_hard_state(hard)
    return RawNode(RaftConfig(node_id, **cfg), st), st  # type: ignore[arg-type]


def drain(node: RawNode, storage: MemoryStorage) -> list[Message]:
    """Handles every Ready of ``node`` (persist, collect messages, advance); returns the messages."""
    out: list[Message] = []
    while (rd := node.ready()) is not None:
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        out.extend(rd.messages)
        node.advance(rd)
    return out


class Cluster:
    """Nodes that deliver each other's messages at once, except across a cut."""

    def __init__(self, voters: list[str], learners: tuple[str, ...] = (), **cfg: object) -> None:
        self.storage = {i: MemoryStorage() for i in [*voters, *learners]}
        self.nodes: dict[str, RawNode] = {}
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.storage}
        self.cut: set[str] = set()
        for i, st in self.storage.items():
            bootstrap(st, voters, learners)
            self.nodes[i] = RawNode(RaftConfig(i, **cfg), st)  # type: ignore[arg-type]

    def deliver(self, drop: Callable[[Message], bool] = lambda m: False) -> None:
        pending: list[Message] = []
        while True:
            for i, node in self.nodes.items():
                while (rd := node.ready()) is not None:
                    self.storage[i].append(rd.entries)
                    if rd.hard_state is not None:
                        self.storage[i].set_hard_state(rd.hard_state)
                    pending.extend(rd.messages)
                    self.applied[i].extend(rd.committed_entries)
                    node.advance(rd)
            if not pending:
                return
            m = pending.pop(0)
            if m.src in self.cut or m.dst in self.cut or drop(m):
                continue
            self.nodes[m.dst].step(m)

    def tick(self, n: int = 1, only: list[str] | None = None) -> None:
        for _ in range(n):
            for i in only or list(self.nodes):
                self.nodes[i].tick()
            self.deliver()

    def leader(self) -> str | None:
        leaders = [i for i, n in self.nodes.items() if n.status().role is Role.LEADER
                   and i not in self.cut]
        return leaders[0] if leaders else None

    def elect(self, who: str) -> None:
        self.nodes[who].campaign()
        self.deliver()
        assert self.leader() == who, self.nodes[who].status()
