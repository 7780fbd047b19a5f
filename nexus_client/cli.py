"""``nexus``: the command line of a Nexus cluster.

Scripts rely on this contract: data goes to stdout (a job id, one JSON object with
``--json``, a CSV), progress and errors go to stderr, and the exit status says what
happened:

* 0: done (for ``submit --wait`` and ``watch``: the job COMPLETED);
* 1: the job ended FAILED or CANCELLED, or a download did not verify;
* 2: a user mistake, caught by the CLI (bad arguments, a file that cannot be read) or by the
  node (``error: CODE: details``: an invalid request, an unknown job or model, a token
  refused or lacking the role);
* 3: the node could not be reached, or failed to serve the request (``error: CODE: details``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# gRPC's core logs a failed TLS handshake or connection on stderr beside the CLI's own one-line
# error, which says more; set before grpc starts (a user may set it to debug).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402

from nexus_client import client as nx
from nexus_client import jobview
from nexus_client.optuna_proxy import ListenError, OptunaProxy
from nexus_client.progress import ProgressBar, bar, format_duration, supports_unicode
from nexus_node._generated.nexus.v1 import nexus_pb2
from nexus_node.errors import InvalidInput
from nexus_node.net.tls import ENV_CA, TlsError
from nexus_node.study.constraints import parse_override

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_RPC = 0, 1, 2, 3
#: Node answers that mean the caller must change the call: a user mistake exits EXIT_USAGE
#: wherever it is caught, by the CLI or by the node. The rest (the node unreachable, short of
#: disk, failing) exit EXIT_RPC.
USER_MISTAKES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
})
DEMO_TARGET = "charges"
DEMO_USE_CASE = "price health insurance premiums from customer attributes"
TOP_FEATURES = 8


class UsageError(Exception):
    """A mistake in the command line or its files; exit status 2."""


# -- formatting ---------------------------------------------------------------------------


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t > 0 else "-"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _best(job: nexus_pb2.Job) -> str:
    return f"{job.metric} {_num(job.best_value)}" if job.has_best else "-"


def _trials_cell(job: nexus_pb2.Job) -> str:
    """Trials finished against the budget; those lost with their node were run again and do
    not count against it, so they show apart (``3/3 (1 re-run)``, never ``4/3``)."""
    lost = job.trials.lost
    done = nx.trials_done(job) - lost
    cell = f"{done}/{job.spec.max_trials}" if job.spec.max_trials else str(done)
    return f"{cell} ({lost} re-run)" if lost else cell


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, headers first."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def format_features(pairs: Sequence[tuple[str, float]], unicode: bool, width: int = 20) -> str:
    """Feature importances as bars scaled to the largest; negative importances (a column
    that permutation found useless) show as empty bars."""
    if not pairs:
        return "  (none)"
    top = max((v for _, v in pairs), default=0.0)
    name_w = max(len(name) for name, _ in pairs)
    return "\n".join(
        f"  {name.ljust(name_w)}  {bar(v / top if top > 0 else 0.0, width, unicode)}  {_num(v)}"
        for name, v in pairs
    )


def format_job(job: nexus_pb2.Job, unicode: bool = True, trials: Sequence[nexus_pb2.TrialInfo] = ()) -> str:
    """The human view of one job (``nexus show``).

    Args:
        job: The job.
        unicode: Whether bars may use block characters.
        trials: The job's trials; when given, a leaderboard of the best per family follows.
    """
    d = nx.job_to_dict(job)
    counts = d["trials"]
    spec = job.spec
    lines = [f"job          {job.job_id}  {d['state']}"]
    if job.message:
        lines.append(f"message      {job.message}")
    task = f" ({d['task']})" if d["task"] else ""
    lines.append(f"data         {spec.filename or '?'} -> {spec.target}{task}")
    if spec.use_case:
        lines.append(f"use case     {spec.use_case}")
    budget = [f"{spec.max_trials} trials"] if spec.max_trials else []
    if spec.time_budget_seconds:
        budget.append(format_duration(spec.time_budget_seconds))
    done = (
        f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
        f"{counts['RUNNING']} running"
    )
    if job.trials.lost:
        done += f" ({job.trials.lost} lost with their node and re-run, not counted)"
    lines.append(f"trials       {done}" + (f"  (budget {' / '.join(budget)})" if budget else ""))
    if job.metric:
        goal = "maximize" if job.maximize else "minimize"
        lines.append(f"best         {_best(job)}  ({goal}, validation split)")
    if job.model_id:
        lines.append(f"model        {job.model_id}")
        if len(job.members) > 1:
            # With the node that refitted each: members refit in parallel, one task each.
            items = [f"#{m.trial} {m.family} {m.weight:.0%}" + (f" ({m.node_id})" if m.node_id else "")
                     for m in job.members]
            row = "ensemble   "   # each item adds two spaces: the members start in column 13
            for item in items:
                if len(row) + 2 + len(item) > 99 and row.strip() != "ensemble":
                    lines.append(row)
                    row = " " * 11
                row += "  " + item
            lines.append(row)
        if job.model_selection:
            lines.append(textwrap.indent(textwrap.fill(job.model_selection, 86), " " * 13))
    if job.test_metrics:
        lines.append("test         " + "  ".join(f"{k} {_num(v)}" for k, v in sorted(job.test_metrics.items())))
        if job.test_rows and job.evaluated_model_rows:
            lines.append(f"             on {job.test_rows:,} held-out rows, by a fit on "
                         f"{job.evaluated_model_rows:,} rows; the served model was refitted on "
                         f"{job.final_model_rows:,} rows")
    if job.started_at:
        end = job.finished_at or time.time()
        lines.append(f"ran          {format_duration(end - job.started_at)} from {_when(job.started_at)}")
    if job.constraints_source:
        c = d["constraints"]
        rationale = job.constraints_rationale or (c.get("rationale", "") if isinstance(c, dict) else "")
        engine = job.constraints_source
        if job.constraints_model:
            engine = f"{engine} over llm {job.constraints_model}" if engine == "user" else f"llm {job.constraints_model}"
        lines.append(f"constraints  {engine}" + (f": {rationale}" if rationale else ""))
        if job.constraints_fallback:
            lines.append(f"             LLM not used: {job.constraints_fallback}")
    columns = jobview.format_columns(d.get("profile") or {})
    if columns:
        lines += ["", *columns]
    board = jobview.format_leaderboard(jobview.leaderboard(trials, job.maximize), job.metric or "score")
    if board:
        lines += ["", *board]
    if job.feature_importance:
        pairs = [(f.column, f.importance) for f in job.feature_importance[:TOP_FEATURES]]
        lines += ["", "top features", format_features(pairs, unicode)]
    if job.summary:
        by = {"llm": f" (by {job.summary_model or 'Gemini'})", "template": " (template)"}.get(job.summary_source, "")
        lines += ["", f"summary{by}", textwrap.indent(textwrap.fill(job.summary, 86), "  ")]
        if job.summary_fallback:
            lines.append(textwrap.indent(textwrap.fill(f"LLM not used: {job.summary_fallback}", 86), "  "))
    return "\n".join(lines)


def _disk_free(n: nexus_pb2.NodeInfo) -> str:
    """The data dir's free space; "LOW": under the node's --min-free-mb (it refuses uploads)."""
    if not n.disk_free_bytes and not n.disk_low:
        return "-"   # not reported (unreachable, or an older node)
    return f"{n.disk_free_bytes / 2**30:.1f} GiB" + (" LOW" if n.disk_low else "")


def _blobs(n: nexus_pb2.NodeInfo) -> str:
    """The node's blob store (uploads, prepared arrays, artifacts): its disk use."""
    if not n.blob_count:
        return "-"   # empty, unreachable, or an older node
    return f"{n.blob_bytes / 2**20:.1f} MiB ({n.blob_count})"


def format_cluster(cluster: nexus_pb2.Cluster) -> str:
    """The human view of the cluster (``nexus cluster``)."""
    head = (
        f"cluster {cluster.cluster_name or '-'}  coordinator {cluster.coordinator_id or '-'}  "
        f"term {cluster.term}"
    )
    now = time.time()
    rows = [
        (
            n.node_id,
            n.address,
            nexus_pb2.NodeRole.Name(n.role).lower().replace("_", "-"),
            f"{max(0.0, now - n.last_contact):.1f} s ago" if n.last_contact else "never",
            f"{n.slots_busy}/{n.slots_total}",
            f"{n.memory_free_bytes / 2**30:.1f}/{n.memory_total_bytes / 2**30:.1f} GiB",
            _disk_free(n),
            _blobs(n),
            n.accelerator or "-",
            len(n.running),
        )
        for n in cluster.nodes
    ]
    headers = ("NODE", "ADDRESS", "ROLE", "LAST CONTACT", "SLOTS", "MEMORY FREE", "DISK FREE", "BLOBS", "ACCEL",
               "RUNNING")
    text = head + "\n" + table(headers, rows)
    if cluster.discovered:
        found = [(p.node_id or "(seed)", p.address, p.source) for p in cluster.discovered]
        text += "\n\ndiscovered, not members (yet)\n" + table(("NODE", "ADDRESS", "FOUND BY"), found)
    return text


def _main_metric(metrics: dict[str, float]) -> str:
    for name in ("r2", "roc_auc", "accuracy"):
        if name in metrics:
            return f"{name} {_num(metrics[name])}"
    return next((f"{k} {_num(v)}" for k, v in sorted(metrics.items())), "-")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, separators=(",", ":")))


def _exit_for(job: nexus_pb2.Job) -> int:
    return EXIT_OK if job.state == nexus_pb2.COMPLETED else EXIT_JOB_FAILED


# -- commands -----------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> nx.NexusClient:
    try:
        return nx.NexusClient(args.connect, token_file=args.token_file, tls_ca=args.tls_ca)
    except TlsError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the token: {e}") from None


def _output_path(path: str, default_name: str) -> str:
    """Where to write a download, checked before it starts: a folder gets ``default_name``
    inside it; a file's folder must exist."""
    if os.path.isdir(path):
        return os.path.join(path, default_name)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{path}: the folder {folder} is not writable")
    return path


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    return path


def parse_constraints(value: str | None) -> dict[str, Any] | None:
    """``--constraints``: inline JSON (starts with ``{``) or the path of a JSON file,
    checked here with the node's own rules so that a typo fails before the upload."""
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--constraints is neither a JSON object nor a readable file: {e}") from None
    try:
        return parse_override(text)
    except InvalidInput as e:
        raise UsageError(f"--constraints: {e}") from None


def wait_with_progress(client: nx.NexusClient, job_id: str) -> nexus_pb2.Job:
    """Wait for the job with a progress bar on stderr. Ctrl-C stops watching, not the job."""
    try:
        with ProgressBar() as progress:
            return client.wait(job_id, on_event=lambda e: progress.update(e.job))
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; job {job_id} keeps running "
            f"(nexus watch {job_id} / nexus cancel {job_id})",
            file=sys.stderr,
        )
        raise


def cmd_submit(args: argparse.Namespace) -> int:
    path = _existing_file(args.file)
    if args.trials < 0 or args.time_budget < 0:
        raise UsageError("--trials and --time-budget must not be negative")
    constraints = parse_constraints(args.constraints)
    drop = [c.strip() for c in (args.drop or "").split(",") if c.strip()]
    with _connect(args) as client:
        job = client.submit(
            path, args.target, use_case=args.use_case, max_trials=args.trials,
            time_budget=args.time_budget, metric=args.metric, seed=args.seed,
            constraints=constraints, drop_columns=drop,
        )
        if not args.wait:
            if args.json:
                _print_json(nx.job_to_dict(job))
            else:
                print(job.job_id)
            return EXIT_OK
        if not args.json:
            print(job.job_id, flush=True)
        final = wait_with_progress(client, job.job_id)
    state = nexus_pb2.JobState.Name(final.state)
    detail = _main_metric(dict(final.test_metrics)) if final.test_metrics else final.message
    print(f"{state}: {detail} (nexus show {final.job_id})", file=sys.stderr)
    if args.json:
        _print_json(nx.job_to_dict(final))
    return _exit_for(final)


def _print_list(
    args: argparse.Namespace,
    items: Sequence[Any],
    to_dict: Callable[[Any], dict[str, Any]],
    headers: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    empty: str,
) -> int:
    if args.json:
        _print_json([to_dict(i) for i in items])
    else:
        print(table(headers, [row(i) for i in items]) if items else empty)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        jobs = client.list_jobs()
    return _print_list(
        args, jobs, nx.job_to_dict, ("JOB", "STATE", "TRIALS", "BEST", "CREATED"),
        lambda j: (j.job_id, nexus_pb2.JobState.Name(j.state), _trials_cell(j), _best(j), _when(j.created_at)),
        "no jobs",
    )


def cmd_show(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.get_job(args.job)
        trials = [] if args.json else client.list_trials(args.job)
    if args.json:
        _print_json(nx.job_to_dict(job))
    else:
        print(format_job(job, supports_unicode(sys.stdout), trials))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        final = wait_with_progress(client, args.job)
    print(format_job(final, supports_unicode(sys.stdout)))
    return _exit_for(final)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.cancel(args.job)
    print(f"{job.job_id} {nexus_pb2.JobState.Name(job.state)}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    """Deletes a job (an ended one) or, failing a job of that id, a model."""
    with _connect(args) as client:
        try:
            job = client.delete_job(args.id, keep_models=args.keep_models)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or args.keep_models:
                raise
            try:
                model = client.delete_model(args.id)
            except grpc.RpcError as again:
                if again.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                raise UsageError(f"no job or model {args.id!r}: `nexus jobs` and `nexus models` list them") from None
            if args.json:
                _print_json({"deleted": "model", "model_id": model.model_id, "job_id": model.job_id})
            else:
                print(f"deleted {model.model_id} (a model of {model.job_id})")
            return EXIT_OK
    if args.json:
        _print_json({"deleted": "job", "job_id": job.job_id, "study_deleted": job.study_deleted,
                     "deleted_models": list(job.deleted_models), "kept_models": list(job.kept_models)})
    else:
        models = (f" and its model {', '.join(job.deleted_models)}" if job.deleted_models else "") + \
            (f"; kept its model {', '.join(job.kept_models)}" if job.kept_models else "")
        print(f"deleted {job.job_id}{models}")
    return EXIT_OK


def cmd_trials(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        trials = client.list_trials(args.job)
    return _print_list(
        args, trials, nx.trial_to_dict, ("#", "STATE", "VALUE", "TIME", "STEP", "NODE", "PARAMS / MESSAGE"),
        lambda t: (
            t.number, t.state, _num(t.value) if t.has_value else "-", f"{t.duration_seconds:.1f}s",
            t.last_step, t.node_id or "-",
            (f"re-run of #{t.retry_of}: " if t.HasField("retry_of") else "") + (t.message or t.params_json),
        ),
        "no trials",
    )


def cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        models = client.list_models()
    return _print_list(
        args, models, nx.model_to_dict, ("MODEL", "JOB", "TASK", "TARGET", "TEST", "CREATED"),
        lambda m: (
            m.model_id, m.job_id, nexus_pb2.TaskType.Name(m.task) if m.task else "-", m.target,
            _main_metric(dict(m.test_metrics)), _when(m.created_at),
        ),
        "no models",
    )


def cmd_predict(args: argparse.Namespace) -> int:
    path = _existing_file(args.file)
    outside, unusual = nx.OutsideRange(), nx.InputWarnings()
    with _connect(args) as client:
        output = None if args.output is None else _output_path(args.output, "predictions.csv")
        n = client.predict_to_csv(args.model, path, sys.stdout if output is None else output, outside, unusual)
    if output is not None:
        print(f"wrote {n} predictions to {output}", file=sys.stderr)
    if outside.rows:
        print(f"note: {outside.describe(n)}", file=sys.stderr)
    if unusual.describe():
        print(f"warning: {unusual.describe()}", file=sys.stderr)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    output = _output_path(args.output, f"{args.model}.zip")
    with _connect(args) as client:
        digest = client.export(args.model, output)
    # sha256sum's format, so `sha256sum -c` can check the file later.
    print(f"{digest}  {output}")
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        cluster = client.cluster()
    if args.json:
        _print_json(nx.cluster_to_dict(cluster))
    else:
        print(format_cluster(cluster))
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        if args.token_command == "create":
            reply = client.create_token(args.name, args.role)
            if args.json:
                _print_json({**nx.token_to_dict(reply.token), "secret": reply.secret})
            else:
                print(reply.secret)
                print(f"token {reply.token.name!r} ({args.role.lower()}) created: the line above is its secret, "
                      f"shown this once; set NEXUS_TOKEN to it, or put it in a file for --token-file", file=sys.stderr)
            return EXIT_OK
        if args.token_command == "revoke":
            token = client.revoke_token(args.name)
            print(f"revoked token {token.name!r}: every node refuses it once it applies the revocation")
            return EXIT_OK
        tokens = client.list_tokens()
    return _print_list(
        args, tokens, nx.token_to_dict, ("NAME", "ROLE", "CREATED"),
        lambda t: (t.name, nexus_pb2.TokenRole.Name(t.role).lower(), _when(t.created_at)),
        "no client tokens (the node's own token and the peer secret are not listed)",
    )


def _job_study_id(storage: Any, job: nexus_pb2.Job) -> int | None:
    """The id of ``job``'s study, said on stderr with the job's name; None when the job has
    none yet (its search has not started)."""
    spec = job.spec
    about = (f"job {job.job_id}: {spec.filename or '?'} -> {spec.target}, "
             f"{nexus_pb2.JobState.Name(job.state)}, trials {_trials_cell(job)}")
    try:
        study_id = storage.get_study_id_from_name(job.study_name) if job.study_name else None
    except KeyError:
        study_id = None
    if study_id is None:
        print(f"{about}; it has no study yet: the dashboard lists it once its search starts", file=sys.stderr)
        return None
    print(f"{about}; study {job.study_name}", file=sys.stderr)
    return study_id


def cmd_dashboard(args: argparse.Namespace) -> int:
    # Imported here: the web server's modules cost ~10 ms, which every other command would pay.
    from nexus_client import dashboard

    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be a number from 0 (any free port) to 65535")
    try:
        dashboard.require()
    except dashboard.MissingExtra as e:
        raise UsageError(str(e)) from None
    with _connect(args) as client:
        storage = client.optuna_storage()
        # Asked before serving: a refused token, an unreachable node or a TLS mismatch ends the
        # command here with the node's answer, instead of a page that shows no study.
        storage.get_all_studies()
        study_id = _job_study_id(storage, client.get_job(args.job)) if args.job else None
        path = dashboard.HOME_PATH if study_id is None else dashboard.study_path(study_id)
        try:
            server = dashboard.DashboardServer(storage, args.port)
        except OSError as e:
            raise UsageError(f"--port {args.port}: cannot listen on {dashboard.HOST} ({e.strerror or e}); "
                             "choose another port") from None
        with server:
            print(server.url(path), flush=True)
            print(f"optuna-dashboard over the studies of {client.address} at {server.url()} (Ctrl-C stops it)",
                  file=sys.stderr, flush=True)
            server.serve_forever()
    return EXIT_OK


def cmd_optuna_proxy(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        try:
            proxy = OptunaProxy(client.channel, args.listen)
        except ListenError as e:
            raise UsageError(str(e)) from None
        # As for the dashboard: a node that refuses the token is said now, not at Optuna's first call.
        proxy.check_node()
        with proxy:
            print(f"{proxy.host}:{proxy.port}", flush=True)
            print(f"forwarding Optuna's storage calls to {client.address} with the token; in Optuna: "
                  f"GrpcStorageProxy(host={proxy.host!r}, port={proxy.port}) (Ctrl-C stops it)",
                  file=sys.stderr, flush=True)
            proxy.wait()
    return EXIT_OK


def csv_head(path: str | os.PathLike[str], rows: int) -> tuple[list[str], list[list[str]], bytes]:
    """The header and first ``rows`` data rows of a CSV file, and those lines as CSV bytes
    (to send to Predict). Reads only as far as needed."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        body = [row for _, row in zip(range(rows), reader)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *body])
    return header, body, buf.getvalue().encode("utf-8")


def format_demo_predictions(header: list[str], rows: list[list[str]], result: nx.PredictResult) -> str:
    """Input rows with the true target next to the prediction."""
    t = header.index(DEMO_TARGET)
    out = []
    for row, pred in zip(rows, result.rows):
        truth = float(row[t])
        error = (pred.value - truth) / truth * 100 if truth else float("nan")
        inputs = [v for i, v in enumerate(row) if i != t]
        out.append([*inputs, f"{truth:,.0f}", f"{pred.value:,.0f}", f"{error:+.0f}%"])
    headers = [h for i, h in enumerate(header) if i != t] + [f"TRUE {DEMO_TARGET}", "PREDICTED", "ERROR"]
    return table(headers, out)


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here: the node machinery (and importlib.resources, ~10 ms) is only needed by
    # the demo, and `nexus` must start fast for every other command.
    import importlib.resources

    from nexus_node.node.embedded import EmbeddedNode

    resource = importlib.resources.files("nexus_node") / "data" / "insurance.csv"
    if not resource.is_file():
        raise UsageError(f"the bundled sample data is missing ({resource}); reinstall nexus-node")
    if args.trials <= 0 or args.time_budget < 0:
        raise UsageError("--trials must be positive and --time-budget not negative")
    started = time.monotonic()
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="nexus-demo-"))
    # A directory the user named is theirs: only the demo's own temporary one is removed.
    remove = args.data_dir is None and not args.keep
    unicode = supports_unicode(sys.stdout)
    try:
        # One slot: trials then finish in a fixed order, so with the fixed seed the sampler,
        # and the demo's numbers, repeat exactly from run to run.
        with importlib.resources.as_file(resource) as csv_path, EmbeddedNode(data_dir=data_dir, slots=1) as address:
            print(f"Nexus demo: an embedded node at {address}, data in {data_dir}")
            print(f"data: bundled insurance.csv, target '{DEMO_TARGET}' ({DEMO_USE_CASE})")
            budget = f"{args.trials} trials" + (f" or {format_duration(args.time_budget)}" if args.time_budget else "")
            print(f"search: {budget}, whichever comes first\n", flush=True)
            with nx.NexusClient(address, tls_ca="") as client:   # the embedded node is plaintext
                job = client.submit(
                    csv_path, DEMO_TARGET, use_case=DEMO_USE_CASE,
                    max_trials=args.trials, time_budget=args.time_budget, seed=args.seed,
                )
                final = wait_with_progress(client, job.job_id)
                print("\n" + format_job(final, unicode))
                if final.state != nexus_pb2.COMPLETED:
                    return EXIT_JOB_FAILED
                header, rows, head_csv = csv_head(csv_path, 5)
                result = client.predict(final.job_id, head_csv)
            print("\npredictions for the first rows of the data\n" + format_demo_predictions(header, rows, result))
    finally:
        if remove:
            shutil.rmtree(data_dir, ignore_errors=True)
    kept = f"; data kept in {data_dir}" if not remove else ""
    print(f"\ndemo finished in {format_duration(time.monotonic() - started)}{kept}")
    return EXIT_OK


# -- parsing and dispatch -----------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--connect", metavar="HOST:PORT", default=default,
                        help="a node of the cluster (default: $NEXUS_ADDR or 127.0.0.1:7070)")
    parser.add_argument("--token-file", metavar="PATH", default=default,
                        help="file holding the cluster token (default: $NEXUS_TOKEN, then ~/.nexus/token)")
    parser.add_argument("--tls-ca", metavar="FILE", default=default,
                        help="connect over TLS, checking the node's certificate against this CA "
                             "(default: $NEXUS_TLS_CA; plaintext when neither is set)")


def build_parser() -> argparse.ArgumentParser:
    """The ``nexus`` argument parser (exposed for tests and docs)."""
    # Global options are accepted before or after the command; after it they default to
    # SUPPRESS so that they do not overwrite a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="nexus", description="Submit tabular jobs to a Nexus cluster, watch them, use their models.",
        epilog="exit status: 0 ok, 1 job failed or cancelled, 2 usage error, 3 node error",
    )
    _add_global_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, json_flag: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON on stdout")
        return p

    p = add("submit", cmd_submit, "upload a table (CSV or TSV, .csv.gz, Parquet) and start a job; prints the job id",
            json_flag=True)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--target", required=True, metavar="COL", help="the column to predict")
    p.add_argument("--use-case", default="", metavar="TEXT", help="the goal in plain words")
    p.add_argument("--trials", type=int, default=0, metavar="N", help="trial budget (default: the node's)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="SECONDS", help="wall-clock budget of the search")
    p.add_argument("--metric", default="", metavar="M", help="metric to optimise (default: r2 / roc_auc / accuracy)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: chosen and recorded)")
    p.add_argument("--constraints", metavar="JSON_OR_PATH", help="narrow the search space: a JSON object or a file")
    p.add_argument("--drop", metavar="COL,COL", help="columns to leave out")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")

    add("jobs", cmd_jobs, "list jobs", json_flag=True)
    add("show", cmd_show, "show one job", json_flag=True).add_argument("job", metavar="JOB")
    add("watch", cmd_watch, "follow a job until it ends, then show it").add_argument("job", metavar="JOB")
    add("cancel", cmd_cancel, "cancel a job").add_argument("job", metavar="JOB")
    p = add("delete", cmd_delete, "delete an ended job (its study, data and models) or a model; every node "
            "removes their files after its --blob-gc-grace", json_flag=True)
    p.add_argument("id", metavar="JOB|MODEL")
    p.add_argument("--keep-models", action="store_true", help="deleting a job, keep its models")
    add("trials", cmd_trials, "list a job's trials", json_flag=True).add_argument("job", metavar="JOB")
    add("models", cmd_models, "list models", json_flag=True)

    p = add("predict", cmd_predict, "predict every row of a table (CSV or TSV, .csv.gz, Parquet); CSV out")
    p.add_argument("model", metavar="MODEL_OR_JOB")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", metavar="OUT.csv", help="write here instead of stdout")

    p = add("export", cmd_export, "download a model's artifact and verify its sha256")
    p.add_argument("model", metavar="MODEL_OR_JOB")
    p.add_argument("-o", "--output", required=True, metavar="FILE")

    add("cluster", cmd_cluster, "show the cluster's nodes", json_flag=True)

    p = add("dashboard", cmd_dashboard,
            "serve optuna-dashboard, a web view of the cluster's studies, on 127.0.0.1 (needs the dashboard extra)")
    p.add_argument("job", nargs="?", metavar="JOB", help="print the link to this job's study")
    p.add_argument("--port", type=int, default=8080, metavar="PORT",
                   help="web port (default 8080, optuna-dashboard's own; 0: any free one)")

    p = add("optuna-proxy", cmd_optuna_proxy,
            "let plain Optuna reach the cluster: a loopback gRPC server that forwards Optuna's storage calls "
            "with the token; prints HOST:PORT")
    p.add_argument("--listen", default="127.0.0.1:13000", metavar="HOST:PORT",
                   help="a loopback address (default 127.0.0.1:13000, GrpcStorageProxy's default port; "
                        "port 0: any free one)")

    p = add("token", cmd_token, "create, list or revoke client tokens (needs the admin role)")
    tokens = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tokens.add_parser("create", parents=[common], help="create a token; prints its secret once")
    t.add_argument("--name", required=True, help="a name for it (1-64 letters, digits, '.', '_', '-')")
    t.add_argument("--role", required=True, choices=("read", "submit", "admin"),
                   help="read: look and predict; submit: also submit, cancel and delete; admin: also tokens")
    t.add_argument("--json", action="store_true", help="print JSON (with the secret) on stdout")
    t = tokens.add_parser("list", parents=[common], help="list tokens (names and roles, never secrets)")
    t.add_argument("--json", action="store_true", help="print JSON on stdout")
    t = tokens.add_parser("revoke", parents=[common], help="revoke a token on every node")
    t.add_argument("name", metavar="NAME")

    p = add("demo", cmd_demo, "run the whole pipeline on an embedded node with bundled data")
    p.add_argument("--trials", type=int, default=40, metavar="N")
    # A fixed seed: the same split and search every run, so the demo's numbers repeat.
    p.add_argument("--seed", type=int, default=1, metavar="S", help="split and sampler seed (default 1)")
    p.add_argument("--time-budget", type=float, default=100.0, metavar="S")
    p.add_argument("--data-dir", metavar="DIR", help="keep the node's data here (default: a temporary dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    return parser


def _unavailable_hint(address: str, tls: bool) -> str:
    """Why a node did not answer, in one line: a TLS client and a plaintext node (or the
    reverse) fail alike in gRPC, so the CLI asks the port which it speaks."""
    speaks = nx.speaks_tls(address)
    if speaks is None:
        return f"is a node running at {address}? start one with nexus-node, or pass --connect"
    if tls and not speaks:
        return f"the node at {address} speaks plaintext: leave out --tls-ca (and ${ENV_CA})"
    if speaks and not tls:
        return f"the node at {address} speaks TLS: pass --tls-ca with its CA certificate"
    return f"the node at {address} answers but did not complete the call; " + (
        "check that --tls-ca is the CA that signed its certificate" if tls else "try again")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``nexus`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as e:
        message = nx.describe_error(e)
        code = getattr(e, "code", lambda: None)()
        if code == grpc.StatusCode.UNAVAILABLE:
            address = args.connect or nx.default_address()
            message += f" ({_unavailable_hint(address, bool(getattr(args, 'tls_ca', None) or os.environ.get(ENV_CA)))})"
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE if code in USER_MISTAKES else EXIT_RPC
    except (nx.ClientError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            # The reader of stdout went away (`nexus jobs | head`): not an error. Point stdout
            # at /dev/null so the interpreter's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
