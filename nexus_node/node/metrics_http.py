"""``--metrics-port``: the node's Prometheus endpoint, served by ``prometheus-client``.

prometheus-client's HTTP server answers each scrape on a thread of its own and calls
:class:`NodeCollector`, which reads the node's live state then and there: the state the event
loop owns (the driver, the records, the dispatcher, the worker) is read by a call scheduled on
the loop, so it is never read half-changed; the blob store's files are stat'ed on the scrape's
thread, off the loop. Nothing polls or copies state between scrapes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from nexus_node import __version__
from nexus_node.consensus.driver import MeshStopped
from nexus_node.node.metrics import PROPOSAL_BUCKETS, CoordinatorState, NodeState, RaftState, families, job_counts

if TYPE_CHECKING:
    from nexus_node.node.node import Node

T = TypeVar("T")

#: Seconds a scrape waits for the event loop before it fails (HTTP 500): a loop that busy is
#: itself what the operator needs to hear about.
LOOP_TIMEOUT_S = 5.0


class NodeCollector(Collector):
    """The node's metrics, read at each scrape (``collect`` runs on the HTTP server's thread)."""

    def __init__(self, node: "Node", loop: asyncio.AbstractEventLoop) -> None:
        self._node, self._loop = node, loop
        # Owned here, not in the global registry: several nodes may share a process (tests,
        # ``nexus demo``), and each histogram is its own node's.
        self.proposals = Histogram("nexus_raft_proposal_seconds",
                                   "Seconds from a proposal to its apply on this node (proposals applied).",
                                   buckets=PROPOSAL_BUCKETS, registry=None)

    def collect(self) -> Iterator[Metric]:
        state = on_loop(self._loop, lambda: read_state(self._node), LOOP_TIMEOUT_S)
        if self._node.blob_sync is not None:
            blobs, blob_bytes = self._node.blob_sync.store.usage()
            state = dataclasses.replace(state, blobs=blobs, blob_bytes=blob_bytes)
        yield from families(state)
        yield from self.proposals.collect()


def read_state(node: "Node") -> NodeState:
    """What the event loop owns (call it on the loop); the blob store's figures are left 0."""
    raft = None
    if node.mesh is not None:
        driver = node.mesh.driver
        try:
            status = driver.status()
        except MeshStopped:   # not started yet
            pass
        else:
            m = status.membership
            snaps = driver.snapshots
            held = driver.snapshot_file()
            raft = RaftState(term=status.term, commit_index=status.commit, applied_index=status.applied,
                             leader_changes=driver.lead_changes, voters=len(m.voters),
                             non_voters=len(m.members) - len(m.voters), first_index=status.first_index,
                             snapshot_index=held.meta.index if held else 0,
                             snapshot_bytes=held.size if held else 0, snapshots_taken=snaps.taken,
                             snapshots_installed=snaps.installed, snapshots_failed=snaps.failed,
                             snapshot_bytes_sent=driver.snapshot_bytes_sent)
    dispatcher = node.dispatcher()
    coordinator = None if dispatcher is None else CoordinatorState(dispatcher.queued(), dispatcher.heartbeat_ages())
    jobs, trials, lost = job_counts(node.records.jobs.values())
    total, busy = node.slots()
    return NodeState(node_id=node.node_id, cluster=node.config.cluster_name, version=__version__, raft=raft,
                     coordinator=coordinator, jobs=jobs, trials=trials, trials_lost=lost,
                     slots_total=total, slots_busy=busy, blobs=0, blob_bytes=0,
                     blob_bound_bytes=node.config.blob_cache_mb << 20)


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float) -> T:
    """Calls ``fn`` on ``loop`` from another thread and returns its result.

    Raises:
        RuntimeError: the loop did not run it within ``timeout`` seconds, or is closed.
    """
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if done.set_running_or_notify_cancel():
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the scrape's thread
                done.set_exception(exc)
    loop.call_soon_threadsafe(run)
    try:
        return done.result(timeout)
    except concurrent.futures.TimeoutError:
        done.cancel()
        raise RuntimeError(f"the node's event loop did not answer within {timeout:g} s") from None


class MetricsServer:
    """The HTTP(S) server of one node's metrics, on a daemon thread (prometheus-client's)."""

    def __init__(self, server: WSGIServer, collector: NodeCollector) -> None:
        self._server, self.collector = server, collector
        self.port: int = server.server_port

    @classmethod
    def start(cls, node: "Node", host: str, port: int, certfile: str | None = None,
              keyfile: str | None = None) -> "MetricsServer":
        """Serves ``node``'s metrics on ``host:port`` (0: a free port), over HTTPS given a
        certificate and its key.

        Raises:
            OSError: the address cannot be bound, with a message naming the flag to change.
        """
        collector = NodeCollector(node, asyncio.get_running_loop())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        try:
            server, _ = start_http_server(port, host.strip("[]"), registry, certfile=certfile, keyfile=keyfile)
        except OSError as exc:   # ssl.SSLError included
            if getattr(exc, "errno", None) == errno.EADDRINUSE:
                raise OSError(f"cannot serve metrics on {host}:{port}: port {port} is in use: "
                              f"stop what listens there or pass another --metrics-port") from None
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from None
        return cls(server, collector)

    def stop(self) -> None:
        """Stops serving and closes the port (blocking, up to the server's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
