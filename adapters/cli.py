"""``fedsilo``: validate, render, submit, watch and cancel a federation spec.

::

    fedsilo validate SPEC                         # check the spec (and its run config)
    fedsilo render SPEC --out DIR                 # environment + job YAMLs + submit.sh
    fedsilo backends                              # the registered launch backends
    fedsilo submit SPEC [--backend azureml|local|...] [--wait/--no-wait]
    fedsilo status SPEC [--backend B] [--submission ID]
    fedsilo logs SPEC [--backend B] [--job superlink|serverapp|<silo>] [--submission ID]
    fedsilo cancel SPEC [--backend B] [--submission ID]
    fedsilo certs DIR [--host H] [--node NAME]   # CA, SuperLink cert, SuperNode keys
    fedsilo provision SPEC | --sandbox N [--dry-run]   # Azure infrastructure of the spec
    fedsilo teardown SPEC | --sandbox N [--yes]        # remove what provision created
    fedsilo silo-kit SPEC --silo NAME --out DIR        # what an external silo runs
    fedsilo export RUN_DIR --format onnx [--quantize dynamic|static|dynamic+static]

Every backend command goes through the backend registry (:mod:`adapters.backends`);
render, provision, teardown and silo-kit are AzureML's own. Errors (a bad spec, missing
Azure credentials, a failed request, a silo that does not start) are printed as one clear
message and exit with code 1 (2 for a bad spec or an unknown backend).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from adapters.backends import Backend, BackendError, backend_names, get_backend, spec_model_for
from adapters.federation.spec import FederationSpec, SpecError, load_spec
from fl_app import VERSION
from fl_app.runs import (
    LOG_FILE,
    RunError,
    compare_runs,
    find_runs,
    last_log_lines,
    plot_curves,
    resolve_run,
    round_table,
    summarize,
)
from fl_core.progress import Progress, Update

if TYPE_CHECKING:
    from adapters.azureml.spec import FederationSpec as AzureFederationSpec

app = typer.Typer(
    name="fedsilo",
    help="Launch a fedsilo federation (one YAML spec) on Azure ML or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"fedsilo {VERSION}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Launch a fedsilo federation (one YAML spec) on Azure ML or on this machine."""


SpecArg = Annotated[
    Path, typer.Argument(help="Federation spec YAML (see examples/federation.yaml).")
]
SpecOrSandboxArg = Annotated[
    Path | None, typer.Argument(help="Federation spec YAML (or use --sandbox N).")
]
SubmissionOpt = Annotated[
    str | None, typer.Option("--submission", help="Submission id; default: the latest.")
]
DEFAULT_BACKEND = "azureml"
T = TypeVar("T")


def _check_backend(name: str) -> str:
    if name not in backend_names():
        raise typer.BadParameter(f"choose one of {', '.join(backend_names())}")
    return name


BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend", "-b", callback=_check_backend,
        help="Where the federation runs; one of the registered backends (azureml: AzureML "
        "jobs, local: processes on this machine, or one a package adds).",
    ),
]  # fmt: skip


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _backend(name: str) -> Backend:
    try:
        return get_backend(name)
    except BackendError as exc:
        _fail(str(exc), code=2)


def _spec(path: Path, backend: Backend | None = None) -> FederationSpec:
    """The spec at ``path``, validated with ``backend``'s spec model (default: whichever
    registered model has the document's sections)."""
    try:
        return load_spec(path, spec_model_for(backend.spec_model if backend else FederationSpec))
    except SpecError as exc:
        _fail(str(exc), code=2)


def _azure_spec(path: Path) -> AzureFederationSpec:
    """The spec at ``path`` as an AzureML spec (render, provision, silo-kit)."""
    from adapters.azureml.spec import load_spec as load_azure_spec

    try:
        return load_azure_spec(path)
    except SpecError as exc:
        _fail(str(exc), code=2)


@app.command("backends")
def list_backends() -> None:
    """List the registered launch backends (--backend)."""
    for name in backend_names():
        factory = type(get_backend(name))
        doc = (factory.__doc__ or "").strip().splitlines()
        console.print(f"{name:<12} {doc[0] if doc else ''}", highlight=False, soft_wrap=True)


@app.command()
def validate(spec_path: SpecArg) -> None:
    """Validate a federation spec; print a summary."""
    spec = _spec(spec_path)
    facts, silos = spec.describe()
    columns = list(dict.fromkeys(key for row in silos.values() for key in row))
    table = Table(title=f"federation {spec.name}", show_lines=False)
    for column in ("silo", *columns):
        table.add_column(column)
    for name, row in silos.items():
        table.add_row(name, *(row.get(column, "") for column in columns))
    console.print(table)
    console.print(" ".join(f"{k}={v}" for k, v in facts.items()), highlight=False)
    console.print(f"[green]✓[/] {spec_path} is valid")


@app.command()
def render(
    spec_path: SpecArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "azureml-jobs"
    ),
    submission: SubmissionOpt = None,
) -> None:
    """Write the AzureML environment and job YAMLs (az ml job create --file ...) and
    submit.sh."""
    from adapters.azureml.jobs import render as render_jobs

    spec = _azure_spec(spec_path)
    try:
        paths = render_jobs(spec, out, submission)
    except SpecError as exc:
        _fail(str(exc), code=2)
    for path in paths:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def _status_table(statuses: dict[str, str]) -> Table:
    table = Table()
    table.add_column("job")
    table.add_column("status")
    colours = {"Completed": "green", "Failed": "red", "Canceled": "yellow", "Running": "cyan"}
    for role, status in statuses.items():
        table.add_row(role, f"[{colours.get(status, 'white')}]{status}[/]")
    return table


ProgressOpt = Annotated[
    bool,
    typer.Option(
        "--progress",
        help="Progress bar on stderr even when it is not a terminal (on a terminal it is on "
        "anyway; elsewhere one line per step or status change).",
    ),
]


def _progress(total: int | None, what: str, forced: bool) -> Progress:
    """What a long command shows: a bar on a terminal (or ``--progress``), else plain lines
    on stdout with the other output."""
    return Progress(
        total, what, bar=True if forced else None,
        emit=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
    )  # fmt: skip


@app.command()
def submit(
    spec_path: SpecArg,
    backend: BackendOpt = DEFAULT_BACKEND,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the federation's run to end.")
    ] = True,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="Where the run dir goes (backends writing it here)."),
    ] = None,
    poll: Annotated[
        float, typer.Option(help="Seconds between status polls (backends watching jobs).")
    ] = 30.0,
    progress: ProgressOpt = False,
) -> None:
    """Run the federation on a backend: AzureML jobs, local processes on loopback, ...

    While it waits, the jobs' or the rounds' status is shown (with elapsed time, and an
    ETA once the rounds are known)."""
    runner = _backend(backend)
    spec = _spec(spec_path, runner)

    with _progress(None, "waiting", progress) as shown:

        def on_event(message: str) -> None:
            if isinstance(message, Update):  # a status: the bar (or a line when it changed)
                shown.status(message, message.done, message.total)
            else:
                shown.write(message)

        try:
            result = runner.submit(spec, wait=wait, run_dir=run_dir, on_event=on_event, poll=poll)
        except BackendError as exc:
            shown.close()
            _fail(str(exc))
        except KeyboardInterrupt:
            shown.close()
            _fail(f"interrupted; see `fedsilo status {spec_path} --backend {backend}`", code=130)
    for line in result.summary:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if result.ok is False:
        _fail(result.error or "the federation's run did not complete")
    if result.ok:
        console.print("[green]✓[/] federation run completed")
    else:
        console.print(f"submission {result.submission_id} submitted", highlight=False)


def _with_backend(name: str, spec_path: Path, action: Callable[[Backend, FederationSpec], T]) -> T:
    """``action(backend, spec)`` with the spec validated for the backend; a backend's error
    ends the command with its message."""
    backend = _backend(name)
    spec = _spec(spec_path, backend)
    try:
        return action(backend, spec)
    except BackendError as exc:
        _fail(str(exc))


@app.command()
def status(
    spec_path: SpecArg, backend: BackendOpt = DEFAULT_BACKEND, submission: SubmissionOpt = None
) -> None:
    """Show the status of each job of a submission."""
    result = _with_backend(backend, spec_path, lambda b, spec: b.status(spec, submission))
    console.print(f"submission {result.submission_id}", highlight=False)
    console.print(_status_table(result.statuses))


@app.command()
def logs(
    spec_path: SpecArg,
    backend: BackendOpt = DEFAULT_BACKEND,
    job: Annotated[
        str, typer.Option("--job", "-j", help="superlink, serverapp or a silo name.")
    ] = "serverapp",
    submission: SubmissionOpt = None,
) -> None:
    """Print (stream, while it runs) one job's logs."""
    _with_backend(backend, spec_path, lambda b, spec: b.logs(spec, submission, job))


@app.command()
def cancel(
    spec_path: SpecArg, backend: BackendOpt = DEFAULT_BACKEND, submission: SubmissionOpt = None
) -> None:
    """Stop every job of a submission that is still running."""
    done = _with_backend(backend, spec_path, lambda b, spec: b.cancel(spec, submission))
    for role, what in done.items():
        console.print(f"{role:<24} {what}", highlight=False)


@app.command()
def certs(
    out: Annotated[Path, typer.Argument(help="Directory for the CA, server cert and keys.")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Extra SuperLink host name or IP (repeatable)."),
    ] = None,
    node: Annotated[
        list[str] | None,
        typer.Option("--node", help="SuperNode name to make a key pair for (repeatable)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Regenerate existing files.")] = False,
) -> None:
    """Generate a CA, the SuperLink TLS certificate and SuperNode auth keys (adapters/pki)."""
    from adapters.pki import make_pki

    try:
        ca, server, keys = make_pki(out, hosts=host or (), nodes=node or (), overwrite=overwrite)
    except ValueError as exc:
        _fail(str(exc), code=2)
    lines = [
        f"CA           {ca.cert}",
        f"SuperLink    {server.cert} (SANs: {', '.join(server.hosts)})",
        *(f"node {name:<8} {pair.private} (register {pair.public})" for name, pair in keys.items()),
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


@app.command("export")
def export_model(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished run's directory (config.json and model.pt).")
    ],
    fmt: Annotated[str, typer.Option("--format", help="Model format: onnx.")] = "onnx",
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            help="int8 edge variants: none | dynamic | static | dynamic+static "
            "(default: the run's export.quantize).",
        ),
    ] = None,
) -> None:
    """Export a run's global model to ONNX (RUN_DIR/onnx/model.onnx, dynamic batch) and
    check it with onnxruntime on the server's test set (RUN_DIR/onnx/parity.json)."""
    from fl_app.onnx_export import (
        QUANTIZATIONS,
        OnnxExportRefused,
        OnnxParityError,
        export_run_dir,
    )

    if fmt != "onnx":
        _fail(f"--format {fmt!r} is not supported; use --format onnx", code=2)
    if quantize is not None and quantize not in QUANTIZATIONS:
        _fail(f"--quantize {quantize!r}: use one of {', '.join(QUANTIZATIONS)}", code=2)
    try:
        result = export_run_dir(run_dir, quantize_as=quantize)
    except (OnnxExportRefused, OnnxParityError, FileNotFoundError) as exc:
        _fail(str(exc))
    check = result.parity
    console.print(
        f"{result.path} ({result.exporter} exporter): max |Δ| {check['max-abs-diff']:.2g} "
        f"≤ {check['tolerance']:g}, {check['rows']} test rows, predictions identical",
        highlight=False,
        soft_wrap=True,
    )
    for kind, path in result.variants.items():
        edge = result.edge[kind]
        change = edge["metric-change"][result.edge["main-metric"]]
        console.print(
            f"{path} int8 {kind}: size −{edge['size-cut-percent']:.1f} %, "
            f"{result.edge['main-metric']} {change:+.4f}",
            highlight=False,
            soft_wrap=True,
        )


# --------------------------------------------------------------------------- provisioning

SandboxOpt = Annotated[
    int | None,
    typer.Option("--sandbox", help="No spec: an orchestrator + N silos, each in its own region."),
]
SubscriptionOpt = Annotated[
    str | None,
    typer.Option(
        "--subscription", envvar="AZURE_SUBSCRIPTION_ID", help="Subscription of --sandbox."
    ),
]
NameOpt = Annotated[str, typer.Option("--name", help="Federation name of --sandbox.")]


def _provision_spec(
    spec_path: Path | None, sandbox: int | None, subscription: str | None, name: str
) -> AzureFederationSpec:
    from adapters.azureml.provision import sandbox_spec

    if (spec_path is None) == (sandbox is None):
        _fail("give a federation spec or --sandbox N (not both)", code=2)
    if spec_path is not None:
        return _azure_spec(spec_path)
    if not subscription:
        _fail("--sandbox needs --subscription <id> (or AZURE_SUBSCRIPTION_ID)", code=2)
    try:
        return sandbox_spec(sandbox or 0, subscription, name=name)
    except (ValueError, SpecError) as exc:
        _fail(str(exc), code=2)


@app.command()
def provision(
    spec_path: SpecOrSandboxArg = None,
    sandbox: SandboxOpt = None,
    subscription: SubscriptionOpt = None,
    name: NameOpt = "fedsilo-sandbox",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; call nothing on Azure.")
    ] = False,
    write_spec: Annotated[
        Path | None, typer.Option("--write-spec", help="Write the (sandbox) spec YAML here.")
    ] = None,
    progress: ProgressOpt = False,
) -> None:
    """Create the spec's Azure infrastructure: resource group, workspace, per-silo storage,
    identity, compute, datastore and role assignment (idempotent; see docs/provisioning.md)."""
    from adapters.azureml.provision import Provisioner

    spec = _provision_spec(spec_path, sandbox, subscription, name)
    if write_spec is not None:
        write_spec.write_text(spec.to_yaml(), encoding="utf-8")
        console.print(f"wrote {write_spec}", highlight=False, soft_wrap=True)
    from adapters.azureml.provision import build_plan, format_plan

    plan = build_plan(spec)
    console.print(
        f"provision plan of federation '{spec.name}' ({len(plan)} steps):\n{format_plan(plan)}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    external = [s.name for s in spec.silos if s.kind == "external"]
    if external:
        console.print(
            f"external silos ({', '.join(external)}): nothing in Azure; give each its kit: "
            "`fedsilo silo-kit SPEC --silo NAME --out DIR`",
            highlight=False,
        )
    if dry_run:
        console.print("dry run: nothing was created", highlight=False)
        return
    provisioner = Provisioner(spec, **_provision_kwargs())
    done = _steps("provision", plan, provisioner.apply, progress)
    created = sum(1 for _, outcome in done if outcome == "created")
    console.print(
        f"[green]✓[/] {created} created, {len(done) - created} already there", highlight=False
    )


@app.command()
def teardown(
    spec_path: SpecOrSandboxArg = None,
    sandbox: SandboxOpt = None,
    subscription: SubscriptionOpt = None,
    name: NameOpt = "fedsilo-sandbox",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    progress: ProgressOpt = False,
) -> None:
    """Delete what `provision` created for the spec (only resources tagged with the
    federation's name; role assignments by their deterministic names)."""
    from adapters.azureml.provision import Provisioner, build_plan

    spec = _provision_spec(spec_path, sandbox, subscription, name)
    if not yes and not typer.confirm(
        f"Delete the Azure resources of federation '{spec.name}' (tag fedsilo-federation="
        f"{spec.name})?"
    ):
        _fail("cancelled; nothing was deleted")
    provisioner = Provisioner(spec, **_provision_kwargs())
    done = _steps("teardown", build_plan(spec), provisioner.teardown, progress)
    deleted = sum(1 for _, outcome in done if outcome == "deleted")
    kept = [f"{s.kind} {s.name}" for s, outcome in done if outcome == "kept"]
    console.print(f"[green]✓[/] {deleted} deleted", highlight=False)
    if kept:
        console.print(f"kept (not created by fedsilo): {', '.join(kept)}", highlight=False)


def _steps(what: str, plan: list[Any], run: Callable[..., T], forced: bool) -> T:
    """``run(plan, on_step=...)`` (provision or teardown) with each step counted: its line
    above the bar on a terminal, in the plain progress line elsewhere; an Azure error ends
    the command with its message."""
    from adapters.azureml.provision import ProvisionError

    with _progress(len(plan), what, forced) as shown:

        def on_step(step: Any, outcome: str) -> None:
            if shown.bar:
                shown.write(f"{outcome:<8} {step.kind:<16} {step.name}")
            shown.advance(f"{outcome} {step.kind} {step.name}")

        try:
            return run(plan, on_step=on_step)
        except ProvisionError as exc:
            shown.close()
            _fail(str(exc))


def _provision_kwargs() -> dict:
    """Keyword arguments of :class:`Provisioner` (tests inject a credential and transport)."""
    return {}


@app.command("silo-kit")
def silo_kit(
    spec_path: SpecArg,
    silo: Annotated[str, typer.Option("--silo", help="The external silo's name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory of the kit.")],
    pki: Annotated[
        Path | None,
        typer.Option("--pki", help="PKI directory of `fedsilo certs` (default: spec's files)."),
    ] = None,
) -> None:
    """Write an external silo's kit: start script, Dockerfile, CA certificate and node key."""
    from adapters.azureml.silo_kit import SiloKitError, write_silo_kit

    spec = _azure_spec(spec_path)
    try:
        kit = write_silo_kit(spec, silo, out, pki_dir=pki)
    except (SiloKitError, SpecError) as exc:
        _fail(str(exc), code=2)
    for path in (kit.start_script, kit.dockerfile, kit.root_cert, kit.private_key, kit.public_key):
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    console.print(
        f"silo '{silo}' dials {kit.superlink} with TLS + node authentication; register "
        f"{kit.public_key.name} with `flwr supernode register {kit.public_key}`",
        highlight=False,
    )


if __name__ == "__main__":  # pragma: no cover
    app()


# ------------------------------------------------------------------ run inspection
runs_app = typer.Typer(
    help="Inspect finished, failed or running runs: list, show, compare.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")
RunDirOpt = Annotated[
    Path,
    typer.Option("--run-dir", help="Where the runs are (the runs' output.run-dir)."),
]


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


@runs_app.command("list")
def runs_list(
    run_dir: RunDirOpt = Path("outputs"),
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="List the runs of an MLflow server instead."),
    ] = None,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment (with --tracking-uri).")
    ] = "fedsilo",
) -> None:
    """A table of runs: task, strategy, rounds, final metric, ε spent, status."""
    try:
        if tracking_uri is not None:
            from adapters.mlflow.runs import mlflow_runs

            summaries = mlflow_runs(tracking_uri, experiment)
        else:
            summaries = [summarize(p) for p in find_runs(run_dir)]
    except (RunError, LookupError) as exc:
        _fail(str(exc))
    table = Table(Column("run", overflow="fold"), "task", "strategy", "rounds", "final metric",
                  "ε", "status")  # fmt: skip
    for s in summaries:
        table.add_row(
            s.name, s.task, s.strategy, f"{s.rounds_done}/{s.rounds_planned}",
            f"{s.metric} {_num(s.value)}", _num(s.epsilon, ".2f"), s.status,
        )  # fmt: skip
    console.print(table)
    if not summaries:
        console.print(f"no runs under {run_dir}" if tracking_uri is None else "no runs")


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="A run directory, or (part of) a run's name.")],
    run_dir: RunDirOpt = Path("outputs"),
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Where to write the curves (default: RUN/curves.png)."),
    ] = None,
) -> None:
    """The per-round table of a run, a PNG of its curves, and why it failed if it did."""
    try:
        path = resolve_run(run, run_dir)
        summary = summarize(path)
        rows = round_table(path)
    except RunError as exc:
        _fail(str(exc))
    console.print(
        f"{summary.name}: {summary.task} · {summary.strategy} · "
        f"{summary.rounds_done}/{summary.rounds_planned} rounds · {summary.status}",
        highlight=False,
    )
    metric = summary.metric
    table = Table("round", f"server {metric}", "server loss", f"silos' min {metric}",
                  f"silos' median {metric}", "ε")  # fmt: skip
    for r in rows:
        table.add_row(
            str(r["round"]), _num(r[metric]), _num(r["loss"]), _num(r["silo-min"]),
            _num(r["silo-median"]), _num(r["epsilon"], ".2f"),
        )  # fmt: skip
    console.print(table)
    if rows:
        written = plot_curves(path, png or path / "curves.png")
        console.print(f"curves: {written}", highlight=False)
    if summary.status in ("failed", "aborted"):
        err_console.print(f"[bold red]{summary.status}:[/] {summary.reason}", highlight=False)
        tail = last_log_lines(path)
        if tail:
            err_console.print(f"last lines of {path / LOG_FILE}:", highlight=False)
            for line in tail:
                err_console.print(line, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)


@runs_app.command("compare")
def runs_compare(
    a: Annotated[str, typer.Argument(help="First run (directory or name).")],
    b: Annotated[str, typer.Argument(help="Second run (directory or name).")],
    run_dir: RunDirOpt = Path("outputs"),
) -> None:
    """The settings that differ between two runs and the change of their final metrics."""
    try:
        paths = [resolve_run(ref, run_dir) for ref in (a, b)]
        diff, deltas = compare_runs(*paths)
    except RunError as exc:
        _fail(str(exc))
    console.print(f"A = {paths[0].name}\nB = {paths[1].name}", highlight=False)
    config = Table("setting", "A", "B")
    for key, va, vb in diff:
        config.add_row(key, repr(va), repr(vb))
    console.print(config if diff else "same settings")
    metrics = Table("final server metric", "A", "B", "B − A")
    for key, va, vb in deltas:
        delta = None if va is None or vb is None else vb - va
        metrics.add_row(key, _num(va), _num(vb), "–" if delta is None else f"{delta:+.4f}")
    console.print(metrics)
