"""``fedsilo``: validate, render, submit, watch and cancel a federation spec.

::

    fedsilo validate SPEC                         # check the spec (and its run config)
    fedsilo render SPEC --out DIR                 # environment + job YAMLs + submit.sh
    fedsilo submit SPEC [--backend azureml|local] [--wait/--no-wait]
    fedsilo status SPEC [--submission ID]
    fedsilo logs SPEC [--job superlink|serverapp|<silo>] [--submission ID]
    fedsilo cancel SPEC [--submission ID]
    fedsilo certs DIR [--host H] [--node NAME]   # CA, SuperLink cert, SuperNode keys
    fedsilo provision SPEC | --sandbox N [--dry-run]   # Azure infrastructure of the spec
    fedsilo teardown SPEC | --sandbox N [--yes]        # remove what provision created
    fedsilo silo-kit SPEC --silo NAME --out DIR        # what an external silo runs

Errors (a bad spec, missing Azure credentials, a failed request, a silo that does not
start) are printed as one clear message and exit with code 1 (2 for a bad spec).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from adapters.azureml.spec import FederationSpec, SpecError, load_spec

app = typer.Typer(
    name="fedsilo",
    help="Launch a fedsilo federation (one YAML spec) on Azure ML or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

SpecArg = Annotated[
    Path, typer.Argument(help="Federation spec YAML (see examples/federation.yaml).")
]
SpecOrSandboxArg = Annotated[
    Path | None, typer.Argument(help="Federation spec YAML (or use --sandbox N).")
]
SubmissionOpt = Annotated[
    str | None, typer.Option("--submission", help="Submission id; default: the latest.")
]


class Backend(enum.StrEnum):
    """Where ``submit`` runs the federation."""

    azureml = "azureml"
    local = "local"


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _spec(path: Path) -> FederationSpec:
    try:
        return load_spec(path)
    except SpecError as exc:
        _fail(str(exc), code=2)


def _client(spec: FederationSpec):
    from adapters.azureml.client import AzureMLClient

    return AzureMLClient(spec)


def _azure_errors():
    from adapters.azureml.client import AzureMLError

    return AzureMLError


@app.command()
def validate(spec_path: SpecArg) -> None:
    """Validate a federation spec; print a summary."""
    spec = _spec(spec_path)
    cfg = spec.resolved_run_config()
    table = Table(title=f"federation {spec.name}", show_lines=False)
    for column in ("silo", "workspace", "compute", "data", "node config"):
        table.add_column(column)
    for silo in spec.silos:
        table.add_row(
            silo.name,
            "/".join(silo.workspace_scope(spec.orchestrator)[1:]),
            silo.compute or f"({silo.kind})",
            silo.data.uri if silo.data else "-",
            " ".join(f"{k}={v}" for k, v in silo.node_config.items()),
        )
    console.print(table)
    console.print(
        f"task={spec.task} strategy={spec.strategy} rounds={cfg.num_server_rounds} "
        f"network={spec.network.mode} orchestrator={spec.orchestrator.workspace}/"
        f"{spec.orchestrator.compute}",
        highlight=False,
    )
    console.print(f"[green]✓[/] {spec_path} is valid")


@app.command()
def render(
    spec_path: SpecArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "azureml-jobs"
    ),
    submission: SubmissionOpt = None,
) -> None:
    """Write the environment and job YAMLs (az ml job create --file ...) and submit.sh."""
    from adapters.azureml.jobs import render as render_jobs

    spec = _spec(spec_path)
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


@app.command()
def submit(
    spec_path: SpecArg,
    backend: Annotated[
        Backend, typer.Option("--backend", "-b", help="azureml (jobs) or local (processes).")
    ] = Backend.azureml,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the federation's run to end.")
    ] = True,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="local backend: where the run dir goes.")
    ] = None,
    poll: Annotated[float, typer.Option(help="azureml: seconds between status polls.")] = 30.0,
) -> None:
    """Run the federation: as AzureML jobs, or as local processes on loopback."""
    spec = _spec(spec_path)
    if backend is Backend.local:
        _submit_local(spec, run_dir)
        return
    error = _azure_errors()
    client = _client(spec)
    try:
        with console.status("submitting") as progress:
            submission = client.submit(on_event=lambda m: progress.update(m))
        for job in submission.jobs:
            console.print(f"{job.role:<24} {job.name}  {job.studio_url or ''}", highlight=False)
        console.print(f"submission {submission.submission_id}", highlight=False)
        if not wait:
            return
        with Live(_status_table({}), console=console, refresh_per_second=1) as live:
            statuses = client.wait(
                submission, poll=poll, on_status=lambda s: live.update(_status_table(s))
            )
        if statuses.get("serverapp") != "Completed":
            done = client.cancel(submission)  # nothing should keep running (and billing)
            cancelled = [role for role, what in done.items() if what == "cancel requested"]
            _fail(
                f"the federation did not complete: {statuses}"
                + (f"; cancelled {', '.join(cancelled)}" if cancelled else "")
                + f". See `fedsilo logs {spec_path} --job serverapp`."
            )
    except error as exc:
        _fail(str(exc))
    console.print("[green]✓[/] federation run completed")


def _submit_local(spec: FederationSpec, run_dir: Path | None) -> None:
    from adapters.azureml.local import LocalFederationError, run_local

    try:
        with console.status("starting") as progress:
            run = run_local(spec, run_dir=run_dir, on_event=lambda m: progress.update(m))
    except LocalFederationError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; every process started was stopped", code=130)
    tail = "\n".join(run.output.splitlines()[-15:])
    console.print(tail, highlight=False, markup=False)
    for silo, exits in run.restarts.items():
        codes = ", ".join(str(e["code"]) for e in exits)
        console.print(f"silo '{silo}': SuperNode restarted {len(exits)}× (exit codes {codes})",
                      highlight=False, markup=False)  # fmt: skip
    server = run.final("server")
    console.print(
        f"status={run.status} run_dir={run.run_dir} "
        + " ".join(f"{k}={v:.4f}" for k, v in server.items() if isinstance(v, float)),
        highlight=False,
    )
    if not run.ok:
        _fail(f"the run did not complete ({run.status}): {run.status_details}")


def _on_submission(spec_path: Path, submission: str | None, action: str, *args):
    """``(client.<action>(record, *args), record)`` for the spec's submission (the latest
    by default); Azure errors end the command with their message."""
    from adapters.azureml.client import load_submission

    spec = _spec(spec_path)
    try:
        record = load_submission(spec.name, submission)
        return getattr(_client(spec), action)(record, *args), record
    except _azure_errors() as exc:
        _fail(str(exc))


@app.command()
def status(spec_path: SpecArg, submission: SubmissionOpt = None) -> None:
    """Show the AzureML status of each job of a submission."""
    statuses, record = _on_submission(spec_path, submission, "status")
    console.print(f"submission {record.submission_id}", highlight=False)
    console.print(_status_table(statuses))


@app.command()
def logs(
    spec_path: SpecArg,
    job: Annotated[
        str, typer.Option("--job", "-j", help="superlink, serverapp or a silo name.")
    ] = "serverapp",
    submission: SubmissionOpt = None,
) -> None:
    """Stream one job's logs."""
    _on_submission(spec_path, submission, "logs", job)


@app.command()
def cancel(spec_path: SpecArg, submission: SubmissionOpt = None) -> None:
    """Cancel every job of a submission that is still running."""
    done, _ = _on_submission(spec_path, submission, "cancel")
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
) -> FederationSpec:
    from adapters.azureml.provision import sandbox_spec

    if (spec_path is None) == (sandbox is None):
        _fail("give a federation spec or --sandbox N (not both)", code=2)
    if spec_path is not None:
        return _spec(spec_path)
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
) -> None:
    """Create the spec's Azure infrastructure: resource group, workspace, per-silo storage,
    identity, compute, datastore and role assignment (idempotent; see docs/provisioning.md)."""
    from adapters.azureml.provision import Provisioner, ProvisionError

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
    try:
        done = provisioner.apply(
            plan,
            on_step=lambda step, outcome: console.print(
                f"{outcome:<8} {step.kind:<16} {step.name}", highlight=False
            )
        )
    except ProvisionError as exc:
        _fail(str(exc))
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
) -> None:
    """Delete what `provision` created for the spec (only resources tagged with the
    federation's name; role assignments by their deterministic names)."""
    from adapters.azureml.provision import Provisioner, ProvisionError

    spec = _provision_spec(spec_path, sandbox, subscription, name)
    if not yes and not typer.confirm(
        f"Delete the Azure resources of federation '{spec.name}' (tag fedsilo-federation="
        f"{spec.name})?"
    ):
        _fail("cancelled; nothing was deleted")
    provisioner = Provisioner(spec, **_provision_kwargs())
    try:
        done = provisioner.teardown(
            on_step=lambda step, outcome: console.print(
                f"{outcome:<8} {step.kind:<16} {step.name}", highlight=False
            )
        )
    except ProvisionError as exc:
        _fail(str(exc))
    deleted = sum(1 for _, outcome in done if outcome == "deleted")
    kept = [f"{s.kind} {s.name}" for s, outcome in done if outcome == "kept"]
    console.print(f"[green]✓[/] {deleted} deleted", highlight=False)
    if kept:
        console.print(f"kept (not created by fedsilo): {', '.join(kept)}", highlight=False)


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

    spec = _spec(spec_path)
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
