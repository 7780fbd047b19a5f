"""The typed Python client of a Nexus node: the one the ``nexus`` CLI and the dashboard use.

Example::

    from nexus_client.client import NexusClient

    with NexusClient("127.0.0.1:7070") as nexus:
        job = nexus.submit("insurance.csv", "charges", use_case="price health insurance",
                           max_trials=24)
        job = nexus.wait(job.job_id)
        print(job.test_metrics["r2"])
        nexus.predict_to_csv(job.job_id, "new_customers.csv", "predictions.csv")

Methods return the protobuf messages of ``nexus.v1`` (typed by the generated ``.pyi``
stubs); :func:`job_to_dict` and its siblings turn them into plain JSON-able dicts. gRPC
failures propagate as :class:`grpc.RpcError`; :func:`describe_error` says them in one line.

The client imports grpc and the generated code only: no torch, pandas or numpy, so that a
command-line call starts fast and a dashboard stays light. Optuna is imported only when
:meth:`NexusClient.optuna_storage` is called.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, TextIO, Union

import grpc

from nexus_node._generated.nexus.v1 import nexus_pb2, nexus_pb2_grpc
from nexus_node.net import auth
from nexus_node.net.tls import client_tls

if TYPE_CHECKING:
    from nexus_node.study.proxy import NexusStorageProxy

DEFAULT_ADDRESS = "127.0.0.1:7070"
DEFAULT_CHUNK_SIZE = 1 << 20
TERMINAL_STATES = frozenset({nexus_pb2.COMPLETED, nexus_pb2.FAILED, nexus_pb2.CANCELLED})
TRIAL_STATE_NAMES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# A node closes a watch when the job ends. A stream that closes while the job still runs
# (a node shutting down gracefully, a proxy timing out) is re-opened; its SNAPSHOT event
# means nothing is missed. Re-opening is bounded so a node that keeps closing watches
# at once cannot make the client spin.
MAX_REWATCHES = 5

CsvSource = Union[str, "os.PathLike[str]", bytes]


def default_address() -> str:
    """``NEXUS_ADDR`` if set, else ``127.0.0.1:7070``."""
    return os.environ.get("NEXUS_ADDR") or DEFAULT_ADDRESS


def check_address(address: str) -> str:
    """``address`` if it is ``HOST:PORT`` with a port gRPC can dial (``[v6]:PORT`` too).

    Raises:
        AddressError: Saying what to write instead: without a port gRPC would dial 443, and
            a port past 65535 would wrap to another one.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or host.endswith(":") or (":" in host and not host.startswith("[")):
        raise AddressError(f"node address {address!r} has no port: write HOST:PORT, e.g. {host or address}:7070 "
                          "(an IPv6 host in brackets: [::1]:7070)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AddressError(f"node address {address!r}: the port must be a number from 1 to 65535")
    return address


def is_terminal(state: int) -> bool:
    """Whether a :class:`JobState` value is final (COMPLETED, FAILED or CANCELLED)."""
    return state in TERMINAL_STATES


def describe_error(e: BaseException) -> str:
    """One line for a user: ``"CODE: details"`` for a gRPC error, the message otherwise."""
    code = getattr(e, "code", None)
    if isinstance(e, grpc.RpcError) and callable(code):
        status = code()
        details = e.details() if callable(getattr(e, "details", None)) else ""
        name = status.name if status is not None else "UNKNOWN"
        return f"{name}: {details}" if details else name
    return str(e) or type(e).__name__


class ClientError(RuntimeError):
    """The node answered, but not in a way the client can use (a broken stream, a
    download that does not verify)."""


class AddressError(ClientError, ValueError):
    """A node address gRPC cannot dial as written."""


class ExportIntegrityError(ClientError):
    """An exported artifact's bytes do not match the hash or size the node announced."""


class PredictedRow(NamedTuple):
    """One prediction: ``label`` as text (class label or number), ``value`` numeric
    (regression value or class index), ``probabilities`` per class in ``classes`` order,
    ``outside_range`` the row's numeric columns whose value lies outside what the model
    was trained on, ``unseen_categories`` its categorical columns whose value the model
    learned nothing of its own for, ``empty`` whether every input cell was empty."""

    label: str
    value: float
    probabilities: tuple[float, ...]
    outside_range: tuple[str, ...] = ()
    unseen_categories: tuple[str, ...] = ()
    empty: bool = False


@dataclass
class OutsideRange:
    """The input rows whose numeric values lie outside what the model was trained on: how
    many, and how many of them each column puts there."""

    rows: int = 0
    columns: Counter[str] = field(default_factory=Counter)

    def add(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            self.rows += 1
            self.columns.update(names)

    def describe(self, total: int) -> str:
        """One line for a person, e.g. ``3 of 100 rows lie outside the training range of
        bmi (2), age (1)``; empty when no row does."""
        if not self.rows:
            return ""
        cols = ", ".join(f"{c} ({n})" for c, n in self.columns.most_common())
        return (f"{self.rows} of {total} rows lie outside the training range of {cols}: "
                "the model has seen no such values, so treat those predictions with care")


@dataclass
class InputWarnings:
    """The input rows a model predicted but knows little about, as the node counted them
    (``PredictWarnings``): rows holding a category the model learned nothing of its own for
    (and per column, how many), and rows whose every input column is empty."""

    rows: int = 0
    unseen_category_rows: int = 0
    unseen_categories: dict[str, int] = field(default_factory=dict)
    empty_rows: int = 0

    def take(self, w: nexus_pb2.PredictWarnings) -> None:
        """Copies the counts of a reply's ``warnings``."""
        self.rows, self.unseen_category_rows, self.empty_rows = w.rows, w.unseen_category_rows, w.empty_rows
        self.unseen_categories = dict(w.unseen_categories)

    def describe(self) -> str:
        """One line for a person, e.g. ``of 5 rows, 2 hold categories the model never
        learned: sex (2), region (1); 1 is empty; predicted all the same, from what the model
        learned of other values and of missing ones``; empty when there is nothing to say."""
        said = []
        if self.unseen_category_rows:
            ranked = sorted(self.unseen_categories.items(), key=lambda t: (-t[1], t[0]))
            cols = ", ".join(f"{c} ({n})" for c, n in ranked)
            said.append(f"{self.unseen_category_rows} {'holds' if self.unseen_category_rows == 1 else 'hold'} "
                        f"categories the model never learned: {cols}")
        if self.empty_rows:
            said.append(f"{self.empty_rows} {'is' if self.empty_rows == 1 else 'are'} empty in every input column")
        if not said:
            return ""
        return (f"of {self.rows} rows, {'; '.join(said)}; predicted all the same, from what the model "
                "learned of other values and of missing ones")


@dataclass
class PredictResult:
    """Predictions for every input row, in input order; ``classes`` empty for regression."""

    classes: list[str] = field(default_factory=list)
    rows: list[PredictedRow] = field(default_factory=list)
    warnings: InputWarnings = field(default_factory=InputWarnings)


class NexusClient:
    """A connection to one Nexus node.

    Unary calls (get, list, cancel) run under ``timeout`` seconds. Streams (submit, watch,
    predict, export) have no deadline: their length depends on the file size and on how
    long the job runs. The client is safe to share between threads (the gRPC channel is).

    Args:
        address: ``HOST:PORT`` of any node; defaults to ``NEXUS_ADDR`` or ``127.0.0.1:7070``.
        token: the cluster token; when absent, ``NEXUS_TOKEN``, then ``token_file``, then
            the default data dir's token file (see :func:`nexus_node.net.auth.client_token`).
        token_file: a file holding the token.
        timeout: deadline in seconds for unary calls.
        tls_ca: the CA file to check the node's certificate against (TLS); when absent,
            ``NEXUS_TLS_CA``; plaintext when neither is set, or when it is ``""``.

    Raises:
        nexus_node.net.tls.TlsError: the CA file cannot be read or holds no certificate.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        timeout: float = 30.0,
        tls_ca: str | None = None,
    ) -> None:
        self.address = check_address(address or default_address())
        self.timeout = timeout
        self._token = auth.client_token(token, token_file)
        self._tls = client_tls(tls_ca)
        self._channel = auth.secure_channel(self.address, self._token, self._tls)
        self._stub = nexus_pb2_grpc.NexusServiceStub(self._channel)

    def __enter__(self) -> "NexusClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight end with CANCELLED."""
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the node (token attached, TLS as configured), for calls to the node's
        other services (``nexus optuna-proxy`` forwards Optuna's over it)."""
        return self._channel

    def wait_ready(self, timeout: float) -> None:
        """Block until the node accepts connections.

        Raises:
            TimeoutError: no connection within ``timeout`` seconds.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"no Nexus node answered at {self.address} within {timeout:g}s") from None

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        path: str | os.PathLike[str],
        target: str,
        *,
        use_case: str = "",
        max_trials: int = 0,
        time_budget: float = 0.0,
        metric: str = "",
        seed: int = 0,
        constraints: dict[str, Any] | None = None,
        drop_columns: Iterable[str] = (),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> nexus_pb2.Job:
        """Upload a table file and start a job on it.

        The file is streamed in ``chunk_size`` pieces, never read whole into memory. The
        node acknowledges once the job is durably stored.

        Args:
            path: the table: CSV or TSV text with a header row (UTF-8, UTF-16 or Latin-1;
                comma, semicolon, tab or pipe between cells), optionally gzip-compressed,
                or a Parquet file. The node detects which and records it on the job.
            target: the column to predict, as written in the header.
            use_case: the goal in plain words; it steers the constraints and the summary.
            max_trials: trial budget; 0 lets the node choose.
            time_budget: wall-clock budget of the search in seconds; 0 for none.
            metric: the metric to optimise; "" for the task's default.
            seed: 0 lets the node choose (and record) one.
            constraints: narrows the search space (keys of ``nexus_node.study.constraints``).
            drop_columns: columns to leave out (leaks, free-text notes).
            chunk_size: bytes per streamed message.

        Returns:
            The job as the node stored it.

        Raises:
            OSError: the file cannot be opened.
            grpc.RpcError: the node refused the input (INVALID_ARGUMENT with what to fix)
                or could not be reached.
        """
        spec = nexus_pb2.JobSpec(
            target=target,
            use_case=use_case,
            max_trials=max_trials,
            time_budget_seconds=time_budget,
            metric=metric,
            seed=seed,
            filename=os.path.basename(os.fspath(path)),
            constraints_json=json.dumps(constraints) if constraints is not None else "",
            drop_columns=list(drop_columns),
            size_bytes=os.path.getsize(path),
        )
        # Opened here, not inside the request generator: gRPC consumes the generator on its
        # own thread and turns an exception there into a bare CANCELLED status.
        with open(path, "rb") as f:
            requests = _with_chunks(
                nexus_pb2.SubmitJobRequest(spec=spec),
                (nexus_pb2.SubmitJobRequest(chunk=c) for c in _file_chunks(f, chunk_size)),
            )
            response = self._stub.SubmitJob(requests)
        job = response.job
        if not job.job_id:
            job.job_id = response.job_id
        return job

    def get_job(self, job_id: str) -> nexus_pb2.Job:
        """The job as it is now. Raises ``grpc.RpcError`` NOT_FOUND for an unknown id."""
        return self._stub.GetJob(nexus_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout)

    def list_jobs(self) -> list[nexus_pb2.Job]:
        """Every job the node knows, as the node orders them."""
        return list(self._stub.ListJobs(nexus_pb2.ListJobsRequest(), timeout=self.timeout).jobs)

    def cancel(self, job_id: str) -> nexus_pb2.Job:
        """Ask the node to cancel a job; returns the job after the request was recorded."""
        return self._stub.CancelJob(nexus_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout)

    def delete_job(self, job_id: str, keep_models: bool = False) -> nexus_pb2.DeleteJobResponse:
        """Delete an ended job: its record, its study, its models unless ``keep_models``; every
        node then removes its data. ``grpc.RpcError`` FAILED_PRECONDITION for a job still
        running (cancel it first), NOT_FOUND for an unknown id."""
        return self._stub.DeleteJob(nexus_pb2.DeleteJobRequest(job_id=job_id, keep_models=keep_models),
                                    timeout=self.timeout)

    def delete_model(self, model_id: str) -> nexus_pb2.DeleteModelResponse:
        """Delete a model and, with it, its artifact on every node (its job stays)."""
        return self._stub.DeleteModel(nexus_pb2.DeleteModelRequest(model_id=model_id), timeout=self.timeout)

    def list_trials(self, job_id: str) -> list[nexus_pb2.TrialInfo]:
        """The job's Optuna trials, by number."""
        request = nexus_pb2.ListTrialsRequest(job_id=job_id)
        return list(self._stub.ListTrials(request, timeout=self.timeout).trials)

    def watch(self, job_id: str) -> Iterator[nexus_pb2.JobEvent]:
        """Events of one job: a SNAPSHOT first, then state changes, finished trials and new
        bests. The stream ends when the job ends; leaving the loop early cancels it."""
        call = self._stub.WatchJob(nexus_pb2.WatchJobRequest(job_id=job_id))
        try:
            yield from call
        finally:
            call.cancel()

    def wait(
        self, job_id: str, on_event: Callable[[nexus_pb2.JobEvent], None] | None = None
    ) -> nexus_pb2.Job:
        """Block until the job reaches COMPLETED, FAILED or CANCELLED.

        Args:
            job_id: the job.
            on_event: called with every watch event (e.g. to draw a progress bar).

        Returns:
            The final job, fetched again after the watch ends so that it carries every field
            the node filled in at the finish.

        Raises:
            grpc.RpcError: the node failed or became unreachable.
            ClientError: the node kept closing the watch while the job still ran.
        """
        closed_early = 0
        while True:
            for event in self.watch(job_id):
                if on_event is not None:
                    on_event(event)
                if is_terminal(event.job.state):
                    break
            job = self.get_job(job_id)
            if is_terminal(job.state):
                return job
            closed_early += 1
            if closed_early > MAX_REWATCHES:
                state = nexus_pb2.JobState.Name(job.state)
                raise ClientError(f"the node keeps closing the watch of job {job_id} while it is {state}")

    # -- models ---------------------------------------------------------------------------

    def list_models(self) -> list[nexus_pb2.Model]:
        """Every registered model."""
        return list(self._stub.ListModels(nexus_pb2.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, model_or_job_id: str) -> nexus_pb2.Model:
        """A model by its id, or the model a job produced by the job's id."""
        request = nexus_pb2.GetModelRequest(model_id=model_or_job_id)
        return self._stub.GetModel(request, timeout=self.timeout)

    def predict_stream(
        self, model_or_job_id: str, csv_data: CsvSource, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[nexus_pb2.PredictResponse]:
        """The raw Predict stream: a table (a path or bytes, any format ``submit`` takes) in, batches of
        predictions out. The first response carries the class labels."""
        first = nexus_pb2.PredictRequest(model_id=model_or_job_id)
        with contextlib.ExitStack() as stack:
            if isinstance(csv_data, (bytes, bytearray, memoryview)):
                data = bytes(csv_data)
                chunks: Iterable[bytes] = (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))
            else:
                chunks = _file_chunks(stack.enter_context(open(csv_data, "rb")), chunk_size)
            requests = _with_chunks(first, (nexus_pb2.PredictRequest(chunk=c) for c in chunks))
            call = self._stub.Predict(requests)
            # A caller that stops reading early must not leave the stream (and the node's
            # work on it) running until the channel closes.
            try:
                yield from call
            finally:
                call.cancel()

    def predict(self, model_or_job_id: str, csv_data: CsvSource) -> PredictResult:
        """Predict every row of a table (a path or bytes, any format :meth:`submit` takes).

        Columns the model was trained on must be present; extra columns are ignored.

        Raises:
            grpc.RpcError: unknown model (NOT_FOUND), a missing column (INVALID_ARGUMENT).
        """
        result = PredictResult()
        by_row: dict[int, PredictedRow] = {}
        for response in self.predict_stream(model_or_job_id, csv_data):
            if response.classes and not result.classes:
                result.classes = list(response.classes)
            for p in response.predictions:
                by_row[p.row] = PredictedRow(p.label, p.value, tuple(p.probabilities), tuple(p.outside_range),
                                             tuple(p.unseen_categories), p.empty)
            if response.HasField("warnings"):
                result.warnings.take(response.warnings)
        result.rows = [by_row[i] for i in sorted(by_row)]
        return result

    def predict_to_csv(
        self,
        model_or_job_id: str,
        in_path: CsvSource,
        out: str | os.PathLike[str] | TextIO,
        outside: OutsideRange | None = None,
        warnings: InputWarnings | None = None,
    ) -> int:
        """Predict a CSV and write the predictions as CSV, one row per input row.

        Columns: ``prediction``, then for classification ``proba_<class>`` per class. Rows
        are written as they arrive, so the output never sits whole in memory. A path is
        written under a temporary name and renamed once every row is in: a failed call
        leaves no partial file behind.

        Args:
            model_or_job_id: a model id or the id of the job that produced it.
            in_path: the input table (a path or bytes, any format :meth:`submit` takes).
            out: a path to write, or an open text stream (e.g. ``sys.stdout``).
            outside: when given, counts the rows outside the training range (the CSV
                itself keeps its columns).
            warnings: when given, takes the node's counts of rows with unseen categories
                and of empty rows.

        Returns:
            The number of rows written.
        """
        if isinstance(out, (str, os.PathLike)):
            with _write_then_rename(out, "w", newline="", encoding="utf-8") as f:
                return self._write_predictions(model_or_job_id, in_path, f, outside, warnings)
        return self._write_predictions(model_or_job_id, in_path, out, outside, warnings)

    def _write_predictions(self, model_or_job_id: str, in_path: CsvSource, out: IO[str],
                           outside: OutsideRange | None, warnings: InputWarnings | None) -> int:
        writer = csv.writer(out, lineterminator="\n")
        classes: list[str] | None = None
        pending: dict[int, nexus_pb2.Prediction] = {}
        written = 0
        for response in self.predict_stream(model_or_job_id, in_path):
            if classes is None:
                classes = list(response.classes)
                writer.writerow(["prediction"] + [f"proba_{c}" for c in classes])
            for p in response.predictions:
                pending[p.row] = p
                if outside is not None:
                    outside.add(p.outside_range)
            if warnings is not None and response.HasField("warnings"):
                warnings.take(response.warnings)
            # Rows are expected in order; a node that batches out of order is still written
            # in input order, holding back only the rows that arrived early.
            while written in pending:
                p = pending.pop(written)
                writer.writerow([_label(p)] + [repr(x) for x in p.probabilities])
                written += 1
        if classes is None:
            writer.writerow(["prediction"])
        if pending:
            raise ClientError(f"the node skipped input row {written} in its predictions")
        return written

    def export(self, model_or_job_id: str, out_path: str | os.PathLike[str]) -> str:
        """Download a model's artifact to ``out_path`` and verify it.

        The file is written under a temporary name next to ``out_path`` and renamed only
        once its sha256 and size match what the node announced.

        Returns:
            The artifact's sha256 (hex).

        Raises:
            ExportIntegrityError: the bytes do not match the announced hash or size.
            grpc.RpcError: unknown model (NOT_FOUND) or a transport failure.
        """
        digest = hashlib.sha256()
        expected_hash = ""
        expected_size = 0
        size = 0
        call = self._stub.ExportModel(nexus_pb2.ExportModelRequest(model_id=model_or_job_id))
        with _write_then_rename(out_path, "wb") as f:
            try:
                for i, chunk in enumerate(call):
                    if i == 0:
                        expected_hash = chunk.sha256
                        expected_size = chunk.total_bytes
                    digest.update(chunk.data)
                    f.write(chunk.data)
                    size += len(chunk.data)
            finally:
                call.cancel()
            actual = digest.hexdigest()
            if not expected_hash:
                raise ExportIntegrityError("the node sent no artifact hash; nothing was written")
            if actual != expected_hash or (expected_size > 0 and size != expected_size):
                raise ExportIntegrityError(
                    f"artifact mismatch: got {size} bytes with sha256 {actual}, "
                    f"the node announced {expected_size} bytes with sha256 {expected_hash}"
                )
        return actual

    # -- client tokens (the admin role) -------------------------------------------------------

    def create_token(self, name: str, role: str) -> nexus_pb2.CreateTokenReply:
        """Creates a client token with ``role`` (read, submit or admin); the reply's ``secret``
        is shown this once: the cluster keeps only its SHA-256."""
        value = (nexus_pb2.TokenRole.Value(role.upper()) if role.upper() in nexus_pb2.TokenRole.keys()
                 else nexus_pb2.TOKEN_ROLE_UNSPECIFIED)
        return self._stub.CreateToken(nexus_pb2.CreateTokenRequest(name=name, role=value), timeout=self.timeout)

    def list_tokens(self) -> list[nexus_pb2.TokenInfo]:
        return list(self._stub.ListTokens(nexus_pb2.ListTokensRequest(), timeout=self.timeout).tokens)

    def revoke_token(self, name: str) -> nexus_pb2.TokenInfo:
        """Revokes ``name`` on every node (each refuses it once it applies the revocation)."""
        return self._stub.RevokeToken(nexus_pb2.RevokeTokenRequest(name=name), timeout=self.timeout).token

    # -- cluster and Optuna ---------------------------------------------------------------

    def cluster(self) -> nexus_pb2.Cluster:
        """The cluster as this node sees it: coordinator, term, nodes and their load."""
        return self._stub.GetCluster(nexus_pb2.GetClusterRequest(), timeout=self.timeout)

    def optuna_storage(self) -> "NexusStorageProxy":
        """An Optuna storage reading this node's studies (token carried, TLS as this client).

        Every node serves Optuna's ``StorageService`` on its one port, so plain Optuna code
        and optuna-dashboard can read a job's trials::

            import optuna

            with NexusClient("host:7070") as nexus:
                job = nexus.get_job(job_id)
                study = optuna.load_study(study_name=job.study_name,
                                          storage=nexus.optuna_storage())
                print(study.best_trial.params)
        """
        # Imported here: optuna costs ~0.5 s to import and most commands never need it.
        from nexus_node.study.proxy import NexusStorageProxy

        host, port = split_address(self.address)
        return NexusStorageProxy(host=host, port=port, token=self._token, tls=self._tls)


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) → ``(host, port)``; brackets are kept because
    the host is written back into an address."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def speaks_tls(address: str, timeout: float = 3.0) -> bool | None:
    """Whether the port at ``address`` completes a TLS handshake: True for a TLS node, False
    for a plaintext one (it answers a TLS hello with HTTP/2 or a close), None when nothing
    listens there. Certificates are not checked: this only tells which a port speaks, for an
    error message; every real call verifies them."""
    import socket
    import ssl

    try:
        host, port = split_address(address)
        sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
    except (OSError, ValueError):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with context.wrap_socket(sock, server_hostname=host.strip("[]")):
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        sock.close()


@contextlib.contextmanager
def _write_then_rename(path: str | os.PathLike[str], mode: str, **kwargs: Any) -> Iterator[IO[Any]]:
    """Write ``.NAME.part`` beside ``path``; rename it to ``path`` only if the block ends
    without an exception, remove it otherwise."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.part")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _file_chunks(f: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    while chunk := f.read(chunk_size):
        yield chunk


def _with_chunks(first: Any, rest: Iterable[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _label(p: nexus_pb2.Prediction) -> str:
    return p.label if p.label else repr(p.value)


# -- JSON shaping -------------------------------------------------------------------------


def _json_field(text: str) -> Any:
    """A JSON string field of a message, parsed; ``None`` when empty. A field that is not
    valid JSON is passed through as text rather than hidden."""
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _time(t: float) -> float | None:
    return t if t > 0 else None


def _enum_name(enum: Any, value: int) -> str | None:
    """The enum value's name; ``None`` for the UNSPECIFIED zero value."""
    return enum.Name(value) if value else None


def trial_counts(job: nexus_pb2.Job) -> dict[str, int]:
    """Trials by Optuna state name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING; and LOST, the
    failed ones lost with their node (run again, not counted against the budget)."""
    t = job.trials
    return {**dict(zip(TRIAL_STATE_NAMES, (t.complete, t.pruned, t.fail, t.running, t.waiting))), "LOST": t.lost}


def trials_done(job: nexus_pb2.Job) -> int:
    """Trials that have finished, whatever their outcome."""
    return job.trials.complete + job.trials.pruned + job.trials.fail


def job_to_dict(job: nexus_pb2.Job) -> dict[str, Any]:
    """A job as a JSON-able dict (the CLI's ``--json`` output).

    Enums are their names ("COMPLETED", "REGRESSION"); JSON string fields are parsed;
    unset times and an absent best value are ``None``; ``feature_importance`` keeps the
    node's order (most important first).
    """
    spec = job.spec
    return {
        "job_id": job.job_id,
        "state": nexus_pb2.JobState.Name(job.state),
        "message": job.message,
        "task": _enum_name(nexus_pb2.TaskType, job.task),
        "metric": job.metric,
        "maximize": job.maximize,
        "best_value": job.best_value if job.has_best else None,
        "best_params": _json_field(job.best_params_json),
        "trials": trial_counts(job),
        "model_id": job.model_id,
        "test_metrics": dict(sorted(job.test_metrics.items())),
        "feature_importance": {f.column: f.importance for f in job.feature_importance},
        "summary": job.summary,
        "summary_source": job.summary_source,
        "summary_model": job.summary_model,
        "summary_fallback": job.summary_fallback,
        "evaluated_model_rows": job.evaluated_model_rows,
        "test_rows": job.test_rows,
        "final_model_rows": job.final_model_rows,
        "members": [member_to_dict(m) for m in job.members],
        "model_selection": job.model_selection,
        "constraints_source": job.constraints_source,
        "constraints_model": job.constraints_model,
        "constraints_rationale": job.constraints_rationale,
        "constraints_fallback": job.constraints_fallback,
        "constraints": _json_field(job.constraints_json),
        "profile": _json_field(job.profile_json),
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "seed": job.seed,
        "encoding": job.encoding,
        "input_format": job.input_format,
        "study_name": job.study_name,
        "dataset_sha256": job.dataset_sha256,
        "dataset_bytes": job.dataset_bytes,
        "node_id": job.node_id,
        "spec": {
            "target": spec.target,
            "use_case": spec.use_case,
            "max_trials": spec.max_trials,
            "time_budget_seconds": spec.time_budget_seconds,
            "metric": spec.metric,
            "seed": spec.seed,
            "filename": spec.filename,
            "constraints": _json_field(spec.constraints_json),
            "drop_columns": list(spec.drop_columns),
        },
    }


def model_to_dict(model: nexus_pb2.Model) -> dict[str, Any]:
    """A model as a JSON-able dict."""
    return {
        "model_id": model.model_id,
        "job_id": model.job_id,
        "task": _enum_name(nexus_pb2.TaskType, model.task),
        "target": model.target,
        "input_columns": list(model.input_columns),
        "classes": list(model.classes),
        "test_metrics": dict(sorted(model.test_metrics.items())),
        "family": model.family,
        "params": _json_field(model.params_json),
        "members": [member_to_dict(m) for m in model.members],
        "selection": model.selection,
        "artifact_sha256": model.artifact_sha256,
        "artifact_bytes": model.artifact_bytes,
        "created_at": _time(model.created_at),
    }


def member_to_dict(member: nexus_pb2.EnsembleMember) -> dict[str, Any]:
    """One model of an ensemble (or the single model) as a JSON-able dict."""
    return {"trial": member.trial, "family": member.family, "weight": member.weight,
            "epochs_trained": member.epochs_trained, "params": _json_field(member.params_json),
            "node_id": member.node_id}


def trial_to_dict(trial: nexus_pb2.TrialInfo) -> dict[str, Any]:
    """A trial as a JSON-able dict; ``value`` is ``None`` for a trial without one."""
    return {
        "number": trial.number,
        "state": trial.state,
        "value": trial.value if trial.has_value else None,
        "params": _json_field(trial.params_json),
        "duration_seconds": trial.duration_seconds,
        "last_step": trial.last_step,
        "node_id": trial.node_id,
        "message": trial.message,
        "retry_of": trial.retry_of if trial.HasField("retry_of") else None,
    }


def cluster_to_dict(cluster: nexus_pb2.Cluster) -> dict[str, Any]:
    """The cluster view as a JSON-able dict."""
    return {
        "cluster_name": cluster.cluster_name,
        "coordinator_id": cluster.coordinator_id,
        "term": cluster.term,
        "nodes": [
            {
                "node_id": n.node_id,
                "address": n.address,
                "role": _enum_name(nexus_pb2.NodeRole, n.role),
                "term": n.term,
                "last_contact": _time(n.last_contact),
                "slots_total": n.slots_total,
                "slots_busy": n.slots_busy,
                "memory_total_bytes": n.memory_total_bytes,
                "memory_free_bytes": n.memory_free_bytes,
                "disk_free_bytes": n.disk_free_bytes,
                "disk_low": n.disk_low,
                "blob_count": n.blob_count,
                "blob_bytes": n.blob_bytes,
                "accelerator": n.accelerator,
                "running": list(n.running),
                "version": n.version,
            }
            for n in cluster.nodes
        ],
    }


def token_to_dict(token: nexus_pb2.TokenInfo) -> dict[str, Any]:
    return {"name": token.name, "role": (_enum_name(nexus_pb2.TokenRole, token.role) or "").lower(),
            "created_at": _time(token.created_at)}
