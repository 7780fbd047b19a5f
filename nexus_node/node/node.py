"""A Nexus node: one ``grpc.aio`` server on one port hosting the public API, Optuna's
``StorageService`` (for runners and for users' own Optuna code), health and reflection.

``Node.start()`` is separate from serving forever (``node_main``) so tests and the embedded
demo run a node inside their own event loop. Shutdown is graceful: the server stops taking
calls, active jobs are left as they are on disk (they resume on restart), runners exit.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, TypedDict

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nexus_node import __version__
from nexus_node._generated import api_pb2 as optuna_api_pb2
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import nexus_pb2_grpc, peer_pb2, runner_pb2, runner_pb2_grpc
from nexus_node.api import convert
from nexus_node.api.nexus_service import NexusServicer, RunnerServicer
from nexus_node.api.peer_service import PeerServicer, add_peer_service
from nexus_node.api.reflection import add_reflection
from nexus_node.api.storage_service import add_storage_service
from nexus_node.blobs.collector import BlobCollector
from nexus_node.blobs.replication import BlobSync
from nexus_node.blobs.store import BlobStore
from nexus_node.cluster.discovery import Discovery, DiscoverySettings, primary_address
from nexus_node.cluster.mesh import ClusterSettings, JoinAnswer, Mesh
from nexus_node.cluster.peers import advertise_host
from nexus_node.cluster.tokens import ReplicatedTokens, TokenRecord
from nexus_node.cluster.view import COORDINATOR, NON_VOTER, VOTER, ClusterView, FoundPeer, MemberInfo
from nexus_node.consensus.driver import MeshSettings, MeshStopped, RaftDriver
from nexus_node.consensus.integrity import adopt_identity, check_data_dir
from nexus_node.consensus.raft import NotLeader
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.manager import JobManager, ManagerSettings
from nexus_node.jobs.references import live_blobs
from nexus_node.jobs.registry import ReplicatedRecords
from nexus_node.llm import GeminiClient, LLMSettings
from nexus_node.net.auth import SERVER_OPTIONS, Grant, ServerAuthInterceptor, is_loopback, node_token, read_peer_secrets
from nexus_node.net.tls import add_port, load_node_tls, storage_fields
from nexus_node.node.disk import DEFAULT_MIN_FREE_MB, DiskGuard
from nexus_node.node.metrics_http import MetricsServer
from nexus_node.runner import families
from nexus_node.runner.pool import RunnerPool
from nexus_node.study import pruning
from nexus_node.study.journal import ReplicatedJournal
from nexus_node.study.study_db import open_study_tables
from nexus_node.system import memory_info
from nexus_node.work.agent import WorkerAgent
from nexus_node.work.dispatcher import Dispatcher, WorkSettings

log = logging.getLogger(__name__)

#: The node's own services, as health checks and reflection name them.
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["NexusService"].full_name,
    optuna_api_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
    peer_pb2.DESCRIPTOR.services_by_name["PeerService"].full_name,
    runner_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name,
)


class _DiskFields(TypedDict, total=False):
    """The disk fields of a member's description (none when the data dir's filesystem cannot be read)."""

    disk_free_bytes: int
    disk_low: bool


@dataclass
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 7070
    data_dir: Path = field(default_factory=lambda: Path.home() / ".nexus")
    token_file: str | None = None
    # The secret members and runners present (PeerService, RunnerService); None: the token.
    peer_secret_file: str | None = None
    slots: int | None = None               # None: one per core
    threads_per_trial: int = 1
    trial_memory_mb: int | None = None     # None: a share of free memory per slot
    memory_mb: int | None = None           # node and runners together; None: the machine's (or cgroup's)
    blob_cache_mb: int = 4096              # the blob store's size bound (blobs/cache.py); 0: none
    blob_gc_grace: float = 300.0           # seconds a blob no record needs waits before removal (blobs/gc.py)
    keep_jobs: int = 0                     # retention (jobs/retention.py): newest ended jobs kept; 0: all
    keep_days: float = 0.0                 # ended jobs kept this many days; 0: for ever
    shard_mb: int = 32                     # a row shard of a prepared array holds at most this many MB
    max_upload_mb: int = 512
    max_predict_mb: int = 64
    upload_idle_s: float = 30.0            # an upload stream silent this long is ended
    default_max_trials: int = 20
    cluster_name: str = "nexus"
    tls_cert: str | None = None   # with tls_key: serve TLS only (nexus_node/net/tls.py)
    tls_key: str | None = None
    tls_ca: str | None = None     # the CA peers' certificates are checked against
    seeds: list[str] = field(default_factory=list)   # host:port of peers, for networks without multicast
    mdns: bool = True
    advertise_host: str | None = None   # None: the bound address (see mesh.peers.advertise_host)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    work: WorkSettings = field(default_factory=WorkSettings)   # --grace, --max-retries
    pruner: str = pruning.DEFAULT_KIND   # of new jobs
    timing: MeshSettings = field(default_factory=MeshSettings)
    # Disabled (no key) unless node_main resolves a key from the environment.
    llm: LLMSettings = field(default_factory=LLMSettings)
    # --force-new-cluster: node_main rewrites the log and exits instead of serving.
    force_new_cluster: bool = False
    # --new-identity: a damaged or orphaned data dir is set aside and the node starts empty
    # under a new id (nexus_node/consensus/integrity.py); a healthy one is kept.
    new_identity: bool = False
    # Uploads are refused below this much free space in the data dir (nexus_node/node/disk.py); 0: never.
    min_free_mb: int = DEFAULT_MIN_FREE_MB
    # Seconds a stop (SIGTERM) may take before the process exits anyway (node_main).
    stop_timeout: float = 8.0
    # --metrics-port: Prometheus metrics over HTTP on this port of ``host`` (node/metrics_http.py); None: off.
    metrics_port: int | None = None


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir).expanduser()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.node_id = ""
        self.token: str | None = None         # the admin client token (``--token-file``)
        self.peer_secret: str | None = None   # what members and runners present
        self.token_note = ""
        self.manager: JobManager | None = None
        self.mesh: Mesh | None = None
        self.blob_sync: BlobSync | None = None
        self.blob_collector: BlobCollector | None = None
        self.worker: WorkerAgent | None = None
        self._leadership: asyncio.Task[None] | None = None
        self._pools: list[RunnerPool] = []
        self._threads: ThreadPoolExecutor | None = None
        self._peer_service: PeerServicer | None = None
        self._lock_file: IO[str] | None = None
        self._llm: GeminiClient | None = None
        self._journal: ReplicatedJournal | None = None
        self.discovery: Discovery | None = None
        self.metrics: MetricsServer | None = None
        self.disk = DiskGuard(self.data_dir, config.min_free_mb << 20)
        #: Why the node can no longer serve (its consensus loop or another vital task failed),
        #: once it cannot; ``on_failure`` is called with it once (node_main then exits).
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] = lambda reason: None
        self._stopping = False

    @property
    def address(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_data_dir(self.data_dir)
        # A damaged log, or an id without its log, stops the node here (consensus/integrity.py).
        identity = await check_data_dir(self.data_dir, cfg.new_identity)
        self.node_id = identity.node_id
        self.token, self.token_note = node_token(cfg.host, self.data_dir, cfg.token_file)
        # Without a file of its own the token is the peer secret too: a cluster started before
        # roles existed keeps working unchanged.
        peer_secrets = read_peer_secrets(cfg.peer_secret_file) if cfg.peer_secret_file else [self.token] if self.token else []
        self.peer_secret = peer_secrets[0] if peer_secrets else None   # sent; all are accepted
        if self.token is not None and self.token in peer_secrets and not is_loopback(cfg.host):
            log.warning("the node's token is also the cluster's peer secret: every client holding it may "
                        "speak for a member. Give the nodes a --peer-secret-file of their own and clients "
                        "tokens of their own (README: Tokens and roles)")

        blobs = BlobStore(self.data_dir / "blobs")
        blobs.clear_temp()

        total, free = memory_info()
        limit_mb = cfg.memory_mb or total >> 20
        slots = cfg.slots or min(max(1, (os.cpu_count() or 1) // max(1, cfg.threads_per_trial)),
                                 families.slots_for_memory(limit_mb))
        memory_mb = cfg.trial_memory_mb
        if memory_mb is None:
            # Four fifths of what is free now, split over the runners (the slots and the
            # serve runner): a trial that wants more fails alone instead of starving others.
            memory_mb = max(256, (int(min(free, limit_mb << 20) * 0.8) // (slots + 1)) >> 20)
        self.trial_memory_mb = memory_mb
        self.memory_mb = limit_mb
        work = RunnerPool("work", slots, cfg.threads_per_trial, trial_memory_mb=memory_mb,
                          one_family=families.one_family_per_runner(limit_mb, slots))
        serve = RunnerPool("serve", 1, 1)
        self._pools = [work, serve]

        auth = ServerAuthInterceptor(peer_secrets, self.token, open_clients=self.token is None)
        # No credential at all (a loopback node without a token): open to local processes.
        self.secured = bool(peer_secrets or self.token)
        interceptors = [auth] if self.secured else []
        # Writes to the study wait for consensus on this pool (api/storage_service.py); every
        # handler is async, so the server itself needs no thread pool. It must be large enough
        # for every runner's storage writes at once.
        self._threads = ThreadPoolExecutor(max_workers=max(8, 2 * slots + 4), thread_name_prefix="storage")
        # No SO_REUSEPORT (gRPC sets it by default): a second node on a busy port must fail
        # here, not share the port and answer every other call from another cluster.
        server = grpc.aio.server(interceptors=interceptors, options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)])
        self.tls = load_node_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        try:
            self.port = add_port(server, f"{_bind_host(cfg.host)}:{cfg.port}", self.tls)
        except RuntimeError:   # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise OSError(_bind_failure(cfg.host, cfg.port))

        # Discovery fills the peer directory (mDNS and --seeds); the mesh says Hello to those
        # peers to found or join a cluster. The same --seeds list is meant for every node, so
        # a node drops its own address from it.
        wildcard = cfg.host in ("0.0.0.0", "::", "")
        host, why = advertise_host(cfg.host, cfg.advertise_host, primary_address() if wildcard else None)
        self.peer_address = f"{host}:{self.port}" if host else self.address
        self.discovery = Discovery(DiscoverySettings(
            node_id=self.node_id, cluster=cfg.cluster_name, port=self.port, advertise_host=host,
            no_advert_reason=why, seeds=tuple(s for s in cfg.seeds if s not in (self.address, self.peer_address)),
            mdns=cfg.mdns,
        ), on_change=self._on_cluster_change)
        # The consensus driver, then every layer's state machine on it (registered before the
        # mesh starts the driver, so the replayed log reaches them all), then the membership work.
        driver = RaftDriver(self.node_id, cfg.cluster_name, self.data_dir / "raft.db", self.peer_address, {},
                            self.peer_secret, cfg.timing, tls=self.tls.peers if self.tls else None)
        self.hub = EventHub()
        self.records = records = ReplicatedRecords(driver, self.hub)
        self.tokens = tokens = ReplicatedTokens(driver)
        # The journal last: its restore, one SQLite transaction, never needs putting back.
        self._journal = journal = ReplicatedJournal(driver, open_study_tables(self.data_dir, fresh=not identity.has_log))
        self.mesh = mesh = Mesh(
            driver, records,
            peers=lambda: [p.address for p in self.discovery.peers()] if self.discovery else [],
            listening=lambda: bool(cfg.seeds) or bool(self.discovery and self.discovery.mdns_active),
            settings=cfg.cluster,
        )
        # Members a peer names in a Hello join the directory: a node given one seed can then
        # say Hello to the whole cluster.
        mesh.driver.on_members_heard = self.discovery.told
        mesh.driver.on_failure = lambda exc: self.fail(f"the consensus loop failed: {exc}")
        auth.lookup = lambda secret: _token_grant(tokens.grant(secret))
        self.blob_sync = BlobSync(self.node_id, cfg.cluster_name, blobs, records, mesh.transport,
                                  mesh.members, cfg.cluster.replicas, bound_bytes=cfg.blob_cache_mb << 20,
                                  wait_for=driver.wait_for)
        # Every node removes its own copies of blobs no record needs (blobs/gc.py), looking
        # again whenever a job or model is deleted.
        self.blob_collector = collector = BlobCollector(
            self.node_id, blobs, records, lambda: live_blobs(records.jobs.values(), records.models.values(), records.blobs),
            grace=cfg.blob_gc_grace, busy=self.blob_sync.fetching)
        # A new placement may be a file that the figures in `nexus cluster` do not count yet.
        records.blob_listeners.append(lambda info: collector.poke())
        records.delete_listeners.extend([collector.poke, self._on_cluster_change])
        collector.on_change = self._on_cluster_change
        # One Optuna storage per node over its study tables: reads are local, writes commit
        # through consensus (study/journal.py), several of them as one (a batch).
        storage = journal.storage()

        # Only a node with a key builds a client (and only its first call imports google-genai).
        self._llm = GeminiClient(cfg.llm) if cfg.llm.enabled else None
        self.manager = JobManager(
            db=records, blobs=blobs, serve_pool=serve, storage=lambda: storage, node_id=self.node_id,
            settings=ManagerSettings(
                default_max_trials=cfg.default_max_trials, worker_memory_bytes=memory_info()[1],
                work=cfg.work, pruner=cfg.pruner, keep_jobs=cfg.keep_jobs, keep_days=cfg.keep_days,
                shard_bytes=cfg.shard_mb << 20,
            ),
            llm=self._llm, llm_unavailable=cfg.llm.disabled_reason,
            events=self.hub, fetch_blob=self.blob_sync.ensure, replicated=self.blob_sync.replicated,
        )
        # This node's share of the work: trials, preparations and retrains the coordinator
        # assigns (over a stream to whichever node leads, this one included).
        self.worker = WorkerAgent(
            node_id=self.node_id, cluster=cfg.cluster_name, address=self.peer_address, pool=work, blobs=blobs,
            mesh=mesh, placement=records, fetch_blob=self.blob_sync.ensure, settings=cfg.work,
            # Runners reach this node's own StorageService (over TLS when the node serves TLS).
            storage={"host": _loopback_for(cfg.host), "port": self.port, "token": self.peer_secret,
                     **storage_fields(self.tls)},
        )
        self.worker.on_change = self._on_cluster_change
        records.job_listeners.append(self.manager.job_applied)
        records.job_listeners.append(lambda job: self._on_cluster_change())
        mesh.on_change = self._on_mesh_change
        servicer = NexusServicer(
            self.manager, self.cluster_view, lambda suffix: blobs.new_temp(suffix),
            max_upload_bytes=cfg.max_upload_mb << 20, max_predict_bytes=cfg.max_predict_mb << 20,
            upload_idle_s=cfg.upload_idle_s,
            # Client tokens restrict nothing on a node open to clients without any.
            tokens=tokens if self.token else None,
        )
        servicer.disk_check = self.disk.check   # uploads refused below --min-free-mb (node/disk.py)
        servicer.disk_room = self.disk.room_for   # and those that would take the disk below it
        nexus_pb2_grpc.add_NexusServiceServicer_to_server(servicer, server)
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(RunnerServicer(self.manager), server)
        self._peer_service = add_peer_service(server, mesh.driver, self)
        # Reads on the loop over a storage of their own, writes on the pool (api/storage_service.py).
        add_storage_service(server, lambda: storage, lambda: storage, self._threads,
                            writes_job_studies=auth.is_peer if self.secured else lambda metadata: True,
                            job_of_study=records.job_of_study)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # Every service the node serves, by the name a health check asks for: a supervisor
        # or load balancer that checks the one it uses gets an answer, not NOT_FOUND.
        served = ("", *SERVICE_NAMES)
        # The library says SERVING for the whole server by default: not before the mesh started.
        for name in served:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        add_reflection(server, (
            pb.DESCRIPTOR.services_by_name["NexusService"].full_name,
            optuna_api_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
            health.SERVICE_NAME,
        ))
        if cfg.metrics_port is not None:
            # Bound before the node founds or joins a cluster: a port in use stops it here.
            self.metrics = MetricsServer.start(self, cfg.host or "0.0.0.0", cfg.metrics_port, cfg.tls_cert, cfg.tls_key)
            driver.on_proposal_applied = self.metrics.collector.proposals.observe
        await server.start()
        self.server = server
        await self.discovery.start()
        await mesh.start()   # founds, joins or resumes a cluster; replays the log
        servicer.ready = True   # until now NexusService answered UNAVAILABLE ("starting")
        if not identity.has_log:
            adopt_identity(self.data_dir)   # it has a log now: the id is this node's for good
        self._leadership = asyncio.create_task(self._follow_leadership(), name="leadership")
        self.worker.start()
        self.blob_collector.start()   # after the log is replayed: never judged on a partial state
        # The node cannot live without these: if one ends, the node stops (crash-only).
        self._watch(self._leadership, "the leadership follower")
        if self.worker.task is not None:
            self._watch(self.worker.task, "the worker's work stream loop")
        for task in mesh.vital_tasks:
            self._watch(task, f"the mesh task {task.get_name()}")
        for name in served:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("node %s listening on %s (%s)", self.node_id, self.address, self.token_note)
        if self.metrics is not None:
            log.info("Prometheus metrics on %s://%s:%d/metrics", "https" if self.tls else "http",
                     _bind_host(cfg.host), self.metrics.port)
        if self._llm is not None:
            log.info("Gemini %s at %s proposes constraints and summaries", cfg.llm.model,
                     cfg.llm.base_url or "Google's endpoint")
        else:
            log.info("heuristic constraints and template summaries: %s", cfg.llm.disabled_reason)

    def fail(self, reason: str) -> None:
        """The node can no longer serve: records why and tells ``on_failure`` (once). A stop
        already under way is not a failure."""
        if self.failure is not None or self._stopping:
            return
        self.failure = reason
        log.error("node %s cannot go on: %s", self.node_id, reason)
        self.on_failure(reason)

    def _watch(self, task: "asyncio.Task[object]", what: str) -> None:
        """Fails the node if ``task`` ends (with an error, or at all) while the node runs."""
        def done(t: "asyncio.Task[object]") -> None:
            if t.cancelled() or self._stopping:
                return
            exc = t.exception()
            self.fail(f"{what} failed: {exc}" if exc is not None else f"{what} ended")
        task.add_done_callback(done)

    def _on_cluster_change(self) -> None:
        if self.manager is not None:
            self.manager.changes.notify()

    def _on_mesh_change(self) -> None:
        """The leader, term or members changed."""
        self._on_cluster_change()
        if self.blob_sync is not None:
            self.blob_sync.rebalance()   # this node may now keep blobs it lacks

    async def _follow_leadership(self) -> None:
        """Drives jobs exactly while this node leads: the coordinator is the consensus leader."""
        assert self.mesh is not None and self.manager is not None
        driver, active = self.mesh.driver, False
        pause = self.config.timing.tick_interval
        while True:
            try:
                await driver.wait_for(lambda: driver.is_leader != active, 3600)
            except TimeoutError:
                continue
            except MeshStopped:
                await self.manager.deactivate()
                return
            if driver.is_leader and not active:
                term = driver.status().term
                try:
                    # Everything committed by earlier coordinators is applied here first; the
                    # barrier is fenced to this term, so a node deposed meanwhile never activates.
                    await self.mesh.barrier(term)
                except (NotLeader, TimeoutError, MeshStopped) as exc:
                    log.info("leadership barrier of term %d: %s", term, exc or type(exc).__name__)
                    await asyncio.sleep(pause)
                    continue
                if not (driver.is_leader and driver.status().term == term):
                    continue
                log.info("node %s coordinates (term %d)", self.node_id, term)
                active = True
                try:
                    await self.manager.activate("a restart or a coordinator change", term)
                except Exception:  # noqa: BLE001 - whatever failed, never half-coordinate
                    log.exception("resuming jobs in term %d failed; giving the jobs up", term)
                    active = False
                    await self.manager.deactivate()
                    await asyncio.sleep(pause)
            elif not driver.is_leader and active:
                log.info("node %s no longer coordinates", self.node_id)
                active = False
                await self.manager.deactivate()
            self._on_cluster_change()

    # ---- PeerService hooks (api.peer_service.NodeHooks) ---------------------------------------------

    async def join(self, node_id: str, address: str) -> JoinAnswer:
        assert self.mesh is not None
        return await self.mesh.join(node_id, address)

    def dispatcher(self) -> Dispatcher | None:
        return self.manager.dispatcher if self.manager is not None and self.manager.active else None

    def blob_file(self, sha256: str) -> Path | None:
        return self.blob_sync.local(sha256) if self.blob_sync else None

    def describe(self) -> MemberInfo:
        """This node's own view of itself (its role is filled in by whoever asks)."""
        total, free = memory_info()
        work = self._pools[0] if self._pools else None
        info = work.info if work else {}
        slots_total, slots_busy = self.slots()
        blobs, blob_bytes = self.blob_collector.usage if self.blob_collector else (0, 0)
        return MemberInfo(
            node_id=self.node_id, address=self.peer_address, last_contact=time.time(),
            slots_total=slots_total, slots_busy=slots_busy,
            memory_total_bytes=total, memory_free_bytes=free,
            accelerator=str(info.get("cuda_name") or info.get("device") or "cpu (runners not started)"),
            running=self.worker.running_labels() if self.worker else [], version=__version__,
            blob_count=blobs, blob_bytes=blob_bytes, **self._disk_fields(),
        )

    def slots(self) -> tuple[int, int]:
        """This node's work slots: ``(total, busy)``."""
        work = self._pools[0] if self._pools else None
        return (work.slots if work else 0), (len(self.worker.running) if self.worker else 0)

    def _disk_fields(self) -> _DiskFields:
        try:
            free = self.disk.free()
        except OSError:
            return {}
        return {"disk_free_bytes": free, "disk_low": self.disk.low(free)}

    async def cluster_view(self) -> ClusterView:
        """Every member (voters, non-voters) with its role, plus peers found but not members."""
        assert self.mesh is not None
        mesh = self.mesh   # narrowed, for one() below
        d = mesh.driver
        status = d.status()
        m = status.membership

        async def one(node_id: str) -> MemberInfo:
            if node_id == self.node_id:
                node = self.describe()
            else:
                address = d.peer_address(node_id) or ""
                node = MemberInfo(node_id=node_id, address=address)
                heard = d.last_heard(node_id)
                if heard is not None:
                    node.last_contact = time.time() - (time.monotonic() - heard)
                if address:
                    try:
                        node = convert.member_from_pb(await mesh.transport.stub(address).Describe(
                            peer_pb2.DescribeRequest(cluster=self.config.cluster_name),
                            timeout=1.0, metadata=mesh.transport.metadata))
                    except grpc.aio.AioRpcError:
                        pass   # unreachable: listed with its last contact
            node.role = (COORDINATOR if node_id == status.lead else
                         VOTER if node_id in m.voters else NON_VOTER)
            node.term = status.term
            return node

        nodes = await asyncio.gather(*(one(n) for n in sorted(m.members)))
        known = set(m.members) | {n.address for n in nodes}
        discovered = [
            FoundPeer(node_id=p.node_id, address=p.address, source=p.source, last_seen=p.last_seen)
            for p in (self.discovery.peers() if self.discovery else [])
            if p.node_id not in known and p.address not in known
        ]
        return ClusterView(cluster_name=self.config.cluster_name, coordinator_id=status.lead or "",
                           term=status.term, nodes=list(nodes), discovered=discovered)

    async def stop(self, grace: float = 2.0) -> None:
        self._stopping = True   # tasks ending from here on are not failures
        if self.metrics is not None:   # first: no scrape reads a node half stopped
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None
        # Goodbyes first (RFC 6762 §10.1), so peers stop listing a node that is leaving.
        if self.discovery is not None:
            await self.discovery.close()
        if self._leadership is not None:
            self._leadership.cancel()
            await asyncio.gather(self._leadership, return_exceptions=True)
        # Jobs first, then runners (killed: their work is redone on restart), then the
        # server: a runner must never see its node's port close mid-trial and record the
        # connection error as the trial's failure.
        if self.worker is not None:
            await self.worker.stop(hand_back=True)   # the coordinator re-runs them elsewhere at once
        if self.manager is not None:
            await self.manager.deactivate()
        if self.mesh is not None:
            await self.mesh.leave()   # a coordinator hands over before it goes
            if self.blob_collector is not None:
                await self.blob_collector.close()
            if self.blob_sync is not None:
                await self.blob_sync.close()
            await self.mesh.stop()
        await asyncio.gather(*(p.close(kill=True) for p in self._pools), return_exceptions=True)
        if self._peer_service is not None:
            self._peer_service.end_streams()
        if self.server is not None:
            await self.server.stop(grace)
        if self._llm is not None:
            await self._llm.aclose()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._journal is not None and self.mesh is not None:   # nothing applies any more
            await asyncio.to_thread(self._journal.db.close)
            self._journal = None
        if self._lock_file is not None:
            self._lock_file.close()   # releases the flock
            self._lock_file = None

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data dir for the node's life: two nodes on one data
    dir would corrupt each other's journal. The kernel drops the lock when the process dies,
    however it dies, so a crashed node never blocks its own restart."""
    f = open(data_dir / "node.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise OSError(f"data dir {data_dir} is in use by {holder}: stop it or pass another --data-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"nexus-node pid {os.getpid()}\n")
    f.flush()
    return f


def _bind_failure(host: str, port: int) -> str:
    """Why the server could not listen on ``host:port``, as exactly as a plain bind tells."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen on {host}:{port}: port {port} is in use (another node or program "
                    f"listens there): stop it or pass another --port")
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return f"cannot listen on {host}:{port}"


def _token_grant(token: TokenRecord | None) -> Grant | None:
    return Grant(token.role, f"token {token.name!r}", revocable=True) if token is not None else None


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _loopback_for(host: str) -> str:
    """Where runners reach the node's own StorageService."""
    if host in ("::1", "[::1]"):
        return "[::1]"
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

