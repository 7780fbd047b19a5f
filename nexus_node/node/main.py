"""``nexus-node``: run a node until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from nexus_node.cluster.mesh import ClusterSettings
from nexus_node.cluster.peers import parse_seeds
from nexus_node.consensus.driver import MeshSettings
from nexus_node.consensus.integrity import StartRefused, damaged_advice
from nexus_node.consensus.log_store import LogDamaged
from nexus_node.consensus.recovery import force_new_cluster_in
from nexus_node.llm import DEFAULT_MODEL, resolve
from nexus_node.net.auth import default_data_dir, read_peer_secrets, read_token_file
from nexus_node.net.tls import TlsError, load_node_tls
from nexus_node.node.disk import DEFAULT_MIN_FREE_MB
from nexus_node.node.node import Node, NodeConfig, lock_data_dir
from nexus_node.study import pruning
from nexus_node.work.dispatcher import WorkSettings


def parse_args(argv: list[str] | None = None) -> NodeConfig:
    ap = argparse.ArgumentParser(prog="nexus-node", description="Run a Nexus node.")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces: a token is then required)")
    ap.add_argument("--port", type=int, default=7070, help="gRPC port (default 7070; 0 picks a free one)")
    ap.add_argument("--metrics-port", type=int, metavar="PORT",
                    help="serve Prometheus metrics at http://HOST:PORT/metrics, HOST being --host (the address "
                         "the gRPC port binds; https with --tls-cert). Default: off; 0 picks a free port "
                         "(logged). Metrics ask no token: on a non-loopback --host, let only your monitoring "
                         "reach this port (README: Metrics)")
    ap.add_argument("--data-dir", type=Path, default=default_data_dir(),
                    help="where jobs, models, blobs and the token live (default ~/.nexus or $NEXUS_DATA_DIR)")
    ap.add_argument("--token-file",
                    help="file holding the node's admin client token; without --peer-secret-file it is "
                         "also the peer secret (default: the data dir's token, created off loopback)")
    ap.add_argument("--peer-secret-file",
                    help="file holding the secret every member of the cluster shares: PeerService and the "
                         "runners' RunnerService accept only it, never a client token (default: the token)")
    ap.add_argument("--tls-cert", metavar="FILE",
                    help="this node's certificate (PEM); with --tls-key the node serves TLS only")
    ap.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM, unencrypted)")
    ap.add_argument("--tls-ca", metavar="FILE",
                    help="the CA that signed the cluster's node certificates: peers are checked "
                         "against it (default: the system's roots)")
    ap.add_argument("--slots", type=int, help="trials run at once (default: one per core)")
    ap.add_argument("--threads-per-trial", type=int, default=1, help="torch threads of each trial (default 1)")
    ap.add_argument("--trial-memory-mb", type=int,
                    help="memory one trial may use (default: 80%% of free memory shared by the runners)")
    ap.add_argument("--memory-mb", type=int,
                    help="memory this node and its runners may use together (default: the machine's, or its "
                         "cgroup limit); it caps the slots, and below 1024 MB per slot each runner keeps "
                         "one library family (torch or pandas/scikit-learn), see docs/architecture.md")
    ap.add_argument("--blob-cache-mb", type=int, default=4096,
                    help="size bound of this node's blob store (default 4096; 0: none): past it the node "
                         "drops copies it fetched, least recently used first, never those it keeps for "
                         "the cluster's --replicas")
    ap.add_argument("--blob-gc-grace", type=float, default=300.0, metavar="SECONDS",
                    help="seconds a blob that no job or model needs any more (a deleted job's data, an "
                         "ended job's trial predictions, a refused upload) stays unused on this node before "
                         "it is removed (default 300); keep it above the time an upload takes to become a job")
    ap.add_argument("--keep-jobs", type=int, default=0, metavar="N",
                    help="retention, applied by the coordinator: keep the N most recently ended jobs and "
                         "delete older ended jobs with their study and data, keeping their models "
                         "(`nexus delete MODEL` removes one); running jobs are never deleted (default 0: keep all)")
    ap.add_argument("--keep-days", type=float, default=0.0, metavar="D",
                    help="retention: delete ended jobs D days after they ended, as --keep-jobs does, "
                         "checked every 10 minutes and whenever a job ends (default 0: keep them)")
    ap.add_argument("--shard-mb", type=int, default=32, metavar="MB",
                    help="a prepared table's arrays are cut into row shards of at most this many MB of inputs, "
                         "each a blob kept by --replicas nodes and fetched on its own (default 32)")
    ap.add_argument("--max-upload-mb", type=int, default=512, help="largest CSV accepted (default 512)")
    ap.add_argument("--max-predict-mb", type=int, default=64, help="largest prediction input (default 64)")
    ap.add_argument("--upload-idle-s", type=float, default=30.0,
                    help="seconds an upload (a job's CSV, a prediction input) may send nothing before the "
                         "node ends it and removes its partial file (default 30)")
    ap.add_argument("--default-trials", type=int, default=20, help="trial budget of jobs that set none")
    ap.add_argument("--cluster", default="nexus", help="cluster name (default 'nexus')")
    ap.add_argument("--seeds", default="",
                    help="host:port,... of other nodes, for networks without multicast (IPv6: [addr]:port)")
    ap.add_argument("--no-mdns", action="store_true",
                    help="neither announce this node nor browse for peers by mDNS")
    ap.add_argument("--advertise-host",
                    help="IP address peers should use (default: --host; for 0.0.0.0 the primary "
                         "interface's; a loopback-bound node announces nothing unless this is given)")
    ap.add_argument("--voters", type=int, default=3,
                    help="voting members wanted, 1 to 7 (default 3; an even number acts as the odd one "
                         "below it). Other members replicate everything but do not vote")
    ap.add_argument("--voter-timeout", type=float, default=30.0,
                    help="seconds a voter may be silent before a healthy non-voter replaces it (default 30)")
    ap.add_argument("--remove-after", type=float, default=600.0,
                    help="seconds a non-voter (a demoted voter included) may be silent before the "
                         "coordinator removes it from the cluster (default 600); if it comes back it "
                         "joins again by itself")
    ap.add_argument("--replicas", type=int, default=2,
                    help="nodes that keep a copy of every dataset, shard and model (default 2)")
    ap.add_argument("--join-window", type=float, default=2.0,
                    help="seconds a new node with --seeds or mDNS listens for a cluster before "
                         "founding one (default 2)")
    ap.add_argument("--raft-tick-ms", type=int, default=100,
                    help="consensus tick (default 100 ms). On slow links raise this, not the tick "
                         "counts: e.g. 200 for round trips near 50 ms, 500 near 200 ms (README)")
    ap.add_argument("--heartbeat-ticks", type=int, default=2,
                    help="ticks between the coordinator's heartbeats (default 2: every 200 ms)")
    ap.add_argument("--election-ticks", type=int, default=10,
                    help="ticks of silence before a voter campaigns, randomized up to twice that "
                         "(default 10: 1-2 s); at least 3 heartbeats")
    ap.add_argument("--snapshot-entries", type=int, default=10_000,
                    help="applied log entries after which the node snapshots its state and drops "
                         "the log before it (default 10000; 0: never)")
    ap.add_argument("--snapshot-tail", type=int, default=5_000,
                    help="log entries kept before a snapshot, for members that lag a little "
                         "(default 5000)")
    ap.add_argument("--grace", type=float, default=5.0,
                    help="seconds a node may miss heartbeats before it is declared dead and its trials "
                         "re-run elsewhere (default 5; heartbeats go every second)")
    ap.add_argument("--max-retries", type=int, default=2,
                    help="times a configuration whose node died is run again (default 2)")
    ap.add_argument("--pruner", choices=pruning.KINDS, default=pruning.DEFAULT_KIND,
                    help=f"how new jobs stop poor trials early (default {pruning.DEFAULT_KIND}; none: every "
                         "trial runs its full epochs)")
    ap.add_argument("--llm", choices=("auto", "off"), default="auto",
                    help="auto (default): ask Gemini for constraints and summaries when GEMINI_API_KEY "
                         "or GOOGLE_API_KEY is set; off: heuristic constraints and template summaries")
    ap.add_argument("--llm-model", default=DEFAULT_MODEL, help=f"Gemini model (default {DEFAULT_MODEL})")
    ap.add_argument("--llm-base-url", default="", help="Gemini API endpoint (a proxy; default Google's)")
    ap.add_argument("--llm-timeout", type=float, default=20.0,
                    help="seconds one Gemini request may take (default 20; 429/5xx are retried twice)")
    ap.add_argument("--force-new-cluster", action="store_true",
                    help="disaster recovery, after a majority of voters is lost for good: make this "
                         "node the only voter of its cluster (keeping every job, model and study in "
                         "its log), then exit; start it again without this flag. Use the most "
                         "up-to-date survivor (README: Recovering a cluster)")
    ap.add_argument("--new-identity", action="store_true",
                    help="only for a data dir the node refuses (its raft.db damaged, or missing or empty "
                         "beside an old node_id or blobs): move that state into retired-<old id>-<time>/ "
                         "in the data dir, draw a new node id and start empty, joining the cluster again "
                         "as a new member (or founding one). Nothing of the old identity is kept; a "
                         "healthy data dir is left as it is")
    ap.add_argument("--min-free-mb", type=int, default=DEFAULT_MIN_FREE_MB,
                    help=f"free space the data dir's filesystem keeps (default {DEFAULT_MIN_FREE_MB}; 0: no "
                         "check): below it the node refuses uploads (SubmitJob, Predict) with "
                         "RESOURCE_EXHAUSTED and `nexus cluster` shows its disk LOW. A node whose log "
                         "write fails anyway exits, and starts again once space is back")
    ap.add_argument("--stop-timeout", type=float, default=8.0,
                    help="seconds a stop (SIGTERM, Ctrl-C) may take before the process exits anyway "
                         "(default 8: under a container runtime's usual 10 s before SIGKILL)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.metrics_port is not None and not (0 <= a.metrics_port <= 65535 and (a.metrics_port != a.port or a.port == 0)):
        ap.error("--metrics-port must be a port (0 to 65535) other than --port")
    if a.slots is not None and a.slots < 1:
        ap.error("--slots must be at least 1")
    if a.trial_memory_mb is not None and a.trial_memory_mb < 1:
        ap.error("--trial-memory-mb must be positive")
    if a.shard_mb < 1:
        ap.error("--shard-mb must be at least 1")
    if a.blob_cache_mb < 0:
        ap.error("--blob-cache-mb must be 0 (no bound) or positive")
    if not (a.blob_gc_grace >= 0 and a.keep_days >= 0) or a.keep_jobs < 0:   # NaN too
        ap.error("--blob-gc-grace, --keep-jobs and --keep-days must not be negative")
    if a.memory_mb is not None and a.memory_mb < 256:
        ap.error("--memory-mb must be at least 256 (a runner with torch alone takes about 230 MB)")
    try:
        seeds = parse_seeds(a.seeds)
    except ValueError as exc:
        ap.error(f"--seeds: {exc}")
    if a.advertise_host is not None and not _is_ip(a.advertise_host):
        ap.error("--advertise-host must be an IP address (mDNS announces addresses, not names)")
    if not 1 <= a.voters <= 7:
        ap.error("--voters must be between 1 and 7")
    if a.replicas < 1:
        ap.error("--replicas must be at least 1")
    if a.voter_timeout <= 0 or a.join_window < 0 or a.raft_tick_ms < 10:
        ap.error("--voter-timeout must be positive, --join-window not negative, --raft-tick-ms at least 10")
    if a.remove_after < a.voter_timeout:
        ap.error("--remove-after must be at least --voter-timeout (a silent voter is demoted first)")
    if a.heartbeat_ticks < 1 or a.election_ticks < 3 * a.heartbeat_ticks:
        # A follower must miss a few heartbeats, not one late one, before it campaigns.
        ap.error("--heartbeat-ticks must be at least 1 and --election-ticks at least three times it")
    if a.snapshot_entries < 0 or a.snapshot_tail < 0:
        ap.error("--snapshot-entries and --snapshot-tail must not be negative")
    if a.grace < 1.5 or a.max_retries < 0:
        ap.error("--grace must be at least 1.5 s (heartbeats go every second), --max-retries not negative")
    if a.llm_timeout <= 0:
        ap.error("--llm-timeout must be positive")
    if a.min_free_mb < 0 or a.stop_timeout <= 0:
        ap.error("--min-free-mb must not be negative, --stop-timeout must be positive")
    if not a.upload_idle_s > 0:
        ap.error("--upload-idle-s must be positive")
    try:
        load_node_tls(a.tls_cert, a.tls_key, a.tls_ca)   # fails here, not after startup work
    except TlsError as exc:
        ap.error(str(exc))
    try:   # the same for the secrets: a missing or empty file is a usage error, not a crash
        if a.token_file:
            read_token_file(a.token_file)
        if a.peer_secret_file:
            read_peer_secrets(a.peer_secret_file)
    except (OSError, ValueError) as exc:
        ap.error(str(exc))
    llm = resolve(a.llm, a.llm_model, a.llm_base_url, os.environ,
                  timeout_s=a.llm_timeout, deadline_s=max(45.0, 2.5 * a.llm_timeout))
    return NodeConfig(
        host=a.host, port=a.port, data_dir=a.data_dir, token_file=a.token_file, peer_secret_file=a.peer_secret_file,
        slots=a.slots,
        threads_per_trial=max(1, a.threads_per_trial), trial_memory_mb=a.trial_memory_mb, memory_mb=a.memory_mb, blob_cache_mb=a.blob_cache_mb,
        blob_gc_grace=a.blob_gc_grace, keep_jobs=a.keep_jobs, keep_days=a.keep_days, shard_mb=a.shard_mb,
        max_upload_mb=a.max_upload_mb,
        max_predict_mb=a.max_predict_mb, upload_idle_s=a.upload_idle_s, default_max_trials=a.default_trials, cluster_name=a.cluster,
        tls_cert=a.tls_cert, tls_key=a.tls_key, tls_ca=a.tls_ca,
        llm=llm, seeds=seeds, mdns=not a.no_mdns, advertise_host=a.advertise_host,
        cluster=ClusterSettings(voters=a.voters, voter_timeout=a.voter_timeout, remove_after=a.remove_after,
                                join_window=a.join_window,
                                replicas=a.replicas),
        timing=MeshSettings(tick_interval=a.raft_tick_ms / 1000.0, heartbeat_tick=a.heartbeat_ticks,
                            election_tick=a.election_ticks, snapshot_entries=a.snapshot_entries,
                            snapshot_tail=a.snapshot_tail),
        work=WorkSettings(grace=a.grace, max_retries=a.max_retries), pruner=a.pruner,
        force_new_cluster=a.force_new_cluster, new_identity=a.new_identity, min_free_mb=a.min_free_mb,
        stop_timeout=a.stop_timeout, metrics_port=a.metrics_port,
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


#: Exit statuses: 1, the node failed while it ran or could not listen (a restart may help:
#: freed disk space, a freed port); 2, the data dir needs an operator first (a damaged log, an
#: identity without its log) or the arguments are wrong. A signal's stop exits 0.
FAILED, REFUSED = 1, 2
#: Seconds a failed node tries to stop cleanly (runners, the port, the log) before it exits anyway.
FAILED_STOP_S = 3.0


async def serve(config: NodeConfig) -> int:
    """Runs a node until SIGTERM or SIGINT (returns 0) or until it fails (returns non-zero).

    Crash-only: when the node cannot go on (its consensus loop failed, the disk is full, a
    vital task ended; :meth:`Node.fail`) it says why in one line on stderr and exits, whatever
    state it is in, so a supervisor restarts it and the log replay makes that safe. Each stop
    runs under a deadline (``--stop-timeout``; a short one after a failure): a stop that hangs
    ends in ``os._exit`` (:func:`_exit_at`).
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str | None] = loop.create_future()   # None: a signal; else the failure

    def end(reason: str | None) -> None:
        if not ended.done():
            ended.set_result(reason)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, end, None)
    node = Node(config)
    node.on_failure = end
    starting = asyncio.create_task(node.start(), name="node-start")
    first: list[asyncio.Future[Any]] = [starting, ended]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and not ended.done():
        if (exc := starting.exception()) is not None:
            # The node failed before it served: the port and the lock are released, then the reason.
            code, failure = _start_failure(exc, node.failure)
            _exit_at(FAILED_STOP_S, code)
            await _stop_quietly(node)
            _say(failure)
            return code
        # One line on stdout that scripts (and tests) can wait for.
        tls = " over TLS" if config.tls_cert else ""
        print(f"nexus-node {node.node_id} listening on {node.address}{tls} ({node.token_note})", flush=True)
    reason = await ended
    if reason is None:
        _exit_at(config.stop_timeout, FAILED, "stopping took longer than --stop-timeout")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await node.stop()
        return 0
    _say(reason)
    _exit_at(FAILED_STOP_S, FAILED)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    await _stop_quietly(node)
    return FAILED


def _start_failure(exc: BaseException, failure: str | None) -> tuple[int, str]:
    """The exit status and the one line for a start that raised ``exc``."""
    if isinstance(exc, StartRefused):
        return REFUSED, f"nexus-node: {exc}"
    if isinstance(exc, LogDamaged):
        return REFUSED, f"nexus-node: {damaged_advice(exc)}"
    if failure is not None:   # the consensus loop failed while the log was replayed
        return FAILED, f"nexus-node: stopping: {failure}"
    if isinstance(exc, OSError):
        return FAILED, f"nexus-node: {exc}"
    logging.getLogger(__name__).error("start failed", exc_info=exc)
    return FAILED, f"nexus-node: could not start: {type(exc).__name__}: {exc}"


def _say(line: str) -> None:
    if not line.startswith("nexus-node:"):
        line = f"nexus-node: stopping: {line}"
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass   # stderr on the disk that filled, or closed: the exit status still tells


async def _stop_quietly(node: Node) -> None:
    """A best-effort stop of a node that failed: whatever it raises, the process exits next."""
    try:
        await node.stop(grace=0.5)
    except Exception:  # noqa: BLE001 - the node failed already; the exit says why
        logging.getLogger(__name__).debug("stopping a failed node", exc_info=True)


def _exit_at(seconds: float, code: int, why: str | None = None) -> None:
    """Exits the process with ``code`` after ``seconds`` whatever the event loop is doing (a
    stop that hangs on a wedged task, or on interpreter exit joining a thread). A daemon
    thread's timer, so a blocked loop cannot hold it up."""
    def fire() -> None:
        try:
            if why:
                print(f"nexus-node: {why} ({seconds:g} s); exiting now", file=sys.stderr, flush=True)
            logging.shutdown()
        finally:
            os._exit(code)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def force_new_cluster(config: NodeConfig) -> int:
    """``--force-new-cluster``: rewrites the data dir's Raft log, says what changed, exits."""
    node_id_file = config.data_dir / "node_id"
    if not node_id_file.is_file():
        print(f"nexus-node: {config.data_dir} holds no node: nothing to recover", file=sys.stderr)
        return 2
    node_id = node_id_file.read_text().strip()
    try:
        # Never under a running node: both would write the log, and the node could undo this.
        lock = lock_data_dir(config.data_dir)
    except OSError as e:
        print(f"nexus-node: cannot force a new cluster: {e}", file=sys.stderr)
        return 2
    try:
        r = asyncio.run(force_new_cluster_in(config.data_dir, node_id))
    except LogDamaged as e:
        print(f"nexus-node: cannot force a new cluster: {damaged_advice(e)}", file=sys.stderr)
        return REFUSED
    except (ValueError, sqlite3.Error) as e:
        print(f"nexus-node: cannot force a new cluster: {e}", file=sys.stderr)
        return 2
    finally:
        lock.close()
    print(f"forced a new cluster from {node_id}'s log: it is now the only voter (term {r.term}).\n"
          f"  before: voters {', '.join(sorted(r.before.voters))}; non-voters "
          f"{', '.join(sorted(r.before.learners)) or 'none'}\n"
          f"  the log up to entry {r.last_index} is committed (it knew of {r.was_committed}); no other "
          f"node is a member now.\n"
          f"Start this node again without --force-new-cluster. Other nodes still running join it again "
          f"as non-voters; one whose data dir holds entries this log lacks stops with an error: start "
          f"it with an empty data dir to join again.")
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config.force_new_cluster:
        return force_new_cluster(config)
    code = asyncio.run(serve(config))
    if code:
        # The node failed: exit now rather than wait for threads a failed stop may have left
        # (aiosqlite's connection, the storage pool), which would keep a dead node alive.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
