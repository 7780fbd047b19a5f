"""Real mesh nodes in one process for the driver tests: a grpc.aio server, a driver, SQLite.

Each node listens on its own loopback port (port 0), sits behind the same auth interceptor as a
real node, and keeps its Raft log in its own SQLite file, so a node can be stopped (server and
driver, like a crash) and started again from the same file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from nexus_node.api.peer_service import add_peer_service
from nexus_node.consensus.driver import MeshSettings, RaftDriver
from nexus_node.consensus.state import ReplicatedState, encode_command
from nexus_node.net.auth import ServerAuthInterceptor
from nexus_node.study.journal import ReplicatedJournal

TOKEN = "test-cluster-token"
# Short ticks keep the tests quick; the ratios are the production defaults'.
FAST = MeshSettings(tick_interval=0.015, heartbeat_tick=1, election_tick=10, rpc_timeout=1.0,
                    propose_timeout=20.0)


class MeshNode:
    """One node: server + driver + a state machine recording what it applied."""

    def __init__(self, node_id: str, data_dir: Path, cluster: str = "test",
                 settings: MeshSettings = FAST, token: str | None = TOKEN) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.cluster = cluster
        self.settings = settings
        self.token = token
        self.server: grpc.aio.Server | None = None
        self.driver: RaftDriver | None = None
        self.journal: ReplicatedJournal | None = None
        self.applied: list[Any] = []  # bodies of "record" commands, in apply order
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def bind(self) -> None:
        """Creates the server and driver and binds a port; nothing runs yet."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.applied = []
        state = ReplicatedState()
        state.register("record", lambda body, index: self.applied.append(body))
        self.driver = RaftDriver(self.node_id, self.cluster, self.data_dir / "raft.db", "", {},
                                 token=self.token, settings=self.settings, state=state)
        self.journal = ReplicatedJournal(self.driver, self.data_dir / "studies.db")
        interceptors = [ServerAuthInterceptor(self.token)] if self.token else []
        self.server = grpc.aio.server(interceptors=interceptors)
        add_peer_service(self.server, self.driver)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.driver.address = self.address

    async def start(self, peers: dict[str, str], voters: list[str]) -> None:
        assert self.server is not None and self.driver is not None
        for peer, address in peers.items():
            self.driver.note_peer(peer, address)
        await self.server.start()
        await self.driver.start(voters)

    async def stop(self) -> None:
        """Stops like a crash: driver and server gone at once, the SQLite file kept."""
        if self.driver is not None:
            await self.driver.stop()
        if self.server is not None:
            await self.server.stop(0)
        self.server = self.driver = self.journal = None

    async def restart(self, peers: dict[str, str], voters: list[str]) -> None:
        self.bind()
        await self.start(peers, voters)

    async def record(self, value: Any, proposal_id: str | None = None) -> int:
        assert self.driver is not None
        return await self.driver.propose(encode_command("record", value), proposal_id)


class MeshCluster:
    """``n`` founding voters n0..n(n-1) on loopback."""

    def __init__(self, root: Path, n: int = 3, **kw: Any) -> None:
        self.nodes = [MeshNode(f"n{i}", root / f"n{i}", **kw) for i in range(n)]

    @property
    def voters(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    def peers_of(self, node: MeshNode) -> dict[str, str]:
        return {n.node_id: n.address for n in self.nodes if n is not node and n.port}

    async def start(self) -> "MeshCluster":
        for n in self.nodes:
            n.bind()
        await asyncio.gather(*(n.start(self.peers_of(n), self.voters) for n in self.nodes))
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes if n.driver is not None))

    def running(self) -> list[MeshNode]:
        return [n for n in self.nodes if n.driver is not None]

    async def leader(self, timeout: float = 10.0) -> MeshNode:
        """Waits until every running node agrees on one running leader; returns it."""
        nodes = self.running()

        def agreed() -> bool:
            leads = {n.driver.leader for n in nodes if n.driver is not None}
            return len(leads) == 1 and any(n.node_id in leads and n.driver.is_leader for n in nodes)

        await nodes[0].driver.wait_for(agreed, timeout)
        return next(n for n in nodes if n.driver.is_leader)
