"""``nexus-tui``: the app, its connection workers and the entry point.

The app owns the connection and the :class:`~nexus_tui.state.State`. Blocking client calls
run in thread workers that post typed messages (``nexus_tui.messages``); the handlers here
update the state on the event loop and tell the current screen with
:class:`~nexus_tui.messages.DataChanged`. Screens read the state and never call the client
directly except through the app's worker methods.

Live data comes from server streams: one ``WatchCluster`` stream and one ``WatchJob``
stream per unfinished job. When the cluster stream breaks, the node is gone: the app says
so, closes every stream and reconnects (the same address first, then every other node the
cluster listed), then reloads everything.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Callable

from textual import on, work
from textual.app import App, ScreenStackError
from textual.binding import Binding
from textual.worker import get_current_worker

from nexus_client.client import default_address, is_terminal
from nexus_node.net.tls import TlsError, client_tls
from nexus_tui import discovery
from nexus_tui.client import ClientFactory, ClusterClient, RequestFailed, Unreachable
from nexus_tui.commands import ScreenCommands
from nexus_tui.messages import (
    ClusterChanged,
    Connected,
    ConnectionLost,
    DataChanged,
    JobEventReceived,
    JobsLoaded,
    ModelsLoaded,
    NoNodeReachable,
    TrialsLoaded,
)
from nexus_tui.screens.cluster import ClusterScreen
from nexus_tui.screens.connect import ConnectScreen
from nexus_tui.screens.help import HelpScreen
from nexus_tui.screens.jobs import JobsScreen
from nexus_tui.screens.predict import PredictScreen
from nexus_tui.screens.submit import SubmitScreen
from nexus_tui.state import State

MAX_RETRY_DELAY = 2.0


class NexusApp(App[None]):
    """The dashboard.

    Args:
        address: ``HOST:PORT`` of the node to connect to.
        client_factory: builds a client for an address (the gRPC one, or a fake in tests).
        discover: lists nodes found by mDNS, called when no node answers.
        clock: the time shown as "now" (elapsed times, heartbeat ages); tests fix it.
    """

    TITLE = "Nexus"
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))   # subclasses elsewhere still find it
    MODES = {"cluster": ClusterScreen, "jobs": JobsScreen, "submit": SubmitScreen, "predict": PredictScreen}
    DEFAULT_MODE = "cluster"
    COMMANDS = App.COMMANDS | {ScreenCommands}
    BINDINGS = [
        Binding("f2", "switch_mode('cluster')", "Cluster"),
        Binding("f3", "switch_mode('jobs')", "Jobs"),
        Binding("f4", "switch_mode('submit')", "Submit"),
        Binding("f5", "switch_mode('predict')", "Predict"),
        Binding("f1", "help", "Help"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(
        self, address: str, client_factory: ClientFactory,
        discover: Callable[[], list[str]] = discovery.browse, clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.address = address
        self.client_factory = client_factory
        self.discover = discover
        self.clock = clock
        self.state = State()
        self.client: ClusterClient | None = None
        self.connected = False
        self.known_addresses: list[str] = []
        self._watching: set[str] = set()   # jobs with a WatchJob stream open
        self._watch_lock = threading.Lock()
        self._shutting_down = threading.Event()

    def on_mount(self) -> None:
        self.sub_title = f"connecting to {self.address}"
        self.connect([self.address], first=True)

    def on_unmount(self) -> None:
        # Thread workers block in gRPC streams; closing the client ends them, so the
        # app's threads finish with it.
        self._shutting_down.set()
        if self.client is not None:
            self.client.close()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- connection -----------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="connect")
    def connect(self, addresses: list[str], first: bool) -> None:
        """Try each address until one answers. On the first connection give up after one
        round and offer nodes found by mDNS; after a loss keep trying with backoff."""
        worker = get_current_worker()
        delay, reason = 0.1, ""
        while not worker.is_cancelled and not self._shutting_down.is_set():
            for address in addresses:
                client = self.client_factory(address)
                try:
                    cluster = client.cluster()
                except (Unreachable, RequestFailed) as e:
                    client.close()
                    reason = str(e)
                    continue
                self.post_message(Connected(client, cluster))
                return
            if first:
                self.post_message(NoNodeReachable(addresses[0], reason, self.discover()))
                return
            self._shutting_down.wait(delay)
            delay = min(MAX_RETRY_DELAY, delay * 2)

    @on(Connected)
    def _connected(self, message: Connected) -> None:
        if self.client is not None and self.client is not message.client:
            self.client.close()
        self.client, self.address, self.connected = message.client, message.client.address, True
        self.sub_title = f"connected to {self.address}"
        with self._watch_lock:
            self._watching.clear()
        self._cluster_changed(ClusterChanged(message.cluster))
        self.watch_cluster(message.client)
        self.load_jobs()
        self.load_models()
        for job_id in list(self.state.trials):
            self.load_trials(job_id)

    @on(NoNodeReachable)
    def _no_node(self, message: NoNodeReachable) -> None:
        self.sub_title = f"no node reachable at {message.address}"

        def chosen(address: str | None) -> None:
            if address:
                self.address = address
                self.sub_title = f"connecting to {address}"
                self.connect([address], first=True)

        self.push_screen(ConnectScreen(message.address, message.reason, message.found), chosen)

    @on(ConnectionLost)
    def _lost(self, message: ConnectionLost) -> None:
        if not self.connected or self.client is None or message.address != self.client.address:
            return   # a stale stream of a client already replaced
        self.connected = False
        self.sub_title = f"connection to {message.address} lost: reconnecting"
        self.notify(f"lost the connection to {message.address}: {message.reason}", severity="error")
        others = [a for a in self.known_addresses if a != message.address]
        self.connect([message.address, *others], first=False)

    @work(thread=True, exclusive=True, group="cluster")
    def watch_cluster(self, client: ClusterClient) -> None:
        try:
            for cluster in client.watch_cluster():
                self.post_message(ClusterChanged(cluster))
        except (Unreachable, RequestFailed) as e:
            if not self._shutting_down.is_set():
                self.post_message(ConnectionLost(client.address, str(e)))

    @on(ClusterChanged)
    def _cluster_changed(self, message: ClusterChanged) -> None:
        self.state.cluster = message.cluster
        for node in message.cluster.nodes:
            if node.address and node.address not in self.known_addresses:
                self.known_addresses.append(node.address)
        # A job submitted through another node shows up here first, as running trials.
        if self.connected and self.state.running_job_ids() - self.state.jobs.keys():
            self.load_jobs()
        self._tell(DataChanged("cluster"))

    # -- data -----------------------------------------------------------------------------

    def _tell(self, message: DataChanged) -> None:
        try:
            screen = self.screen
        except ScreenStackError:
            return   # data arrived before the first screen: it draws from the state on mount
        screen.post_message(message)

    @work(thread=True, exclusive=True, group="jobs")
    def load_jobs(self) -> None:
        if (client := self.client) is not None:
            try:
                self.post_message(JobsLoaded(client.list_jobs()))
            except (Unreachable, RequestFailed):
                pass   # the cluster watch notices a dead node and reconnects

    @on(JobsLoaded)
    def _jobs_loaded(self, message: JobsLoaded) -> None:
        self.state.set_jobs(message.jobs)
        for job in message.jobs:
            if not is_terminal(job.state):
                self.watch_job_events(job.job_id)
        self._tell(DataChanged("jobs"))

    def watch_job_events(self, job_id: str) -> None:
        with self._watch_lock:
            if job_id in self._watching or self.client is None:
                return
            self._watching.add(job_id)
        self._watch_job(self.client, job_id)

    @work(thread=True)
    def _watch_job(self, client: ClusterClient, job_id: str) -> None:
        try:
            for event in client.watch_job(job_id):
                self.post_message(JobEventReceived(event))
        except (Unreachable, RequestFailed):
            pass   # reconnecting restarts every watch
        finally:
            with self._watch_lock:   # the set is shared with the event loop
                self._watching.discard(job_id)

    @on(JobEventReceived)
    def _job_event(self, message: JobEventReceived) -> None:
        trial = self.state.apply_event(message.event)
        job = message.event.job
        if trial is not None:
            self._tell(DataChanged("trials", job.job_id, trial))
        self._tell(DataChanged("jobs", job.job_id))
        if is_terminal(job.state):
            self.load_models()
            if job.job_id in self.state.trials:
                self.load_trials(job.job_id)   # final states of every trial

    @work(thread=True, group="trials")
    def load_trials(self, job_id: str) -> None:
        if (client := self.client) is not None:
            try:
                self.post_message(TrialsLoaded(job_id, client.list_trials(job_id)))
            except (Unreachable, RequestFailed):
                pass

    @on(TrialsLoaded)
    def _trials_loaded(self, message: TrialsLoaded) -> None:
        self.state.set_trials(message.job_id, message.trials)
        self._tell(DataChanged("trials", message.job_id))

    @work(thread=True, exclusive=True, group="models")
    def load_models(self) -> None:
        if (client := self.client) is not None:
            try:
                self.post_message(ModelsLoaded(client.list_models()))
            except (Unreachable, RequestFailed):
                pass

    @on(ModelsLoaded)
    def _models_loaded(self, message: ModelsLoaded) -> None:
        self.state.models = message.models
        self._tell(DataChanged("models"))


def create_app(
    address: str | None = None, token: str | None = None, client_factory: ClientFactory | None = None,
    tls_ca: str | None = None, **kwargs: object,
) -> NexusApp:
    """The app factory: a gRPC client factory unless one is given (tests pass a fake)."""
    if client_factory is None:
        from nexus_tui.grpc_client import GrpcClusterClient

        def client_factory(addr: str) -> ClusterClient:
            return GrpcClusterClient(addr, token=token, tls_ca=tls_ca)

    return NexusApp(address or default_address(), client_factory, **kwargs)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nexus-tui", description="Live dashboard of a Nexus cluster.")
    parser.add_argument("--connect", metavar="HOST:PORT", default=None,
                        help="a node of the cluster (default: $NEXUS_ADDR or 127.0.0.1:7070)")
    parser.add_argument("--token", default=None, help="cluster token (default: $NEXUS_TOKEN or the token file)")
    parser.add_argument("--tls-ca", metavar="FILE", default=None,
                        help="connect over TLS, checking the node's certificate against this CA "
                             "(default: $NEXUS_TLS_CA; plaintext when neither is set)")
    args = parser.parse_args(argv)
    try:
        client_tls(args.tls_ca)   # a bad CA file fails here, not in the first connection
    except TlsError as exc:
        parser.error(str(exc))
    create_app(args.connect, token=args.token, tls_ca=args.tls_ca).run()
