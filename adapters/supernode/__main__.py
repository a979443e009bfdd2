"""``python -m adapters.supernode run|superexec|zygote`` (see :mod:`adapters.supernode`).

``run [--app MODULE] [--preload MODULE ...] -- <flower-supernode arguments>``
    Flower's SuperNode with ``--isolation process``, its polling paced
    (:mod:`adapters.supernode.pacing`), and this package's SuperExec as its child.
``superexec --runtime-api-address HOST:PORT (--insecure | --root-certificates CA) ...``
    Flower's SuperExec loop with :class:`~adapters.supernode.executor.ForkExecutor`.
``zygote --fd N [--app MODULE] [--preload MODULE ...]``
    Internal: the pre-imported process the SuperExec forks ClientApp tasks from.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

from adapters.supernode import DEFAULT_APP

logger = logging.getLogger("adapters.supernode")

_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def _flower_options(flower_args: Sequence[str]) -> argparse.Namespace:
    """The ``flower-supernode`` options the SuperExec must mirror (Runtime API address and
    TLS, SuperExec auth, dependency installation); Flower validates the rest."""
    from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default=UVICORN_DEFAULT_HOST)
    parser.add_argument("--port", default=str(SUPERNODE_UVICORN_DEFAULT_PORT))
    parser.add_argument("--ssl-ca-certfile", "--appio-ssl-ca-certfile", dest="ssl_ca_certfile")
    parser.add_argument("--superexec-auth-secret-file")
    parser.add_argument("--allow-runtime-dependency-installation", action="store_true")
    options, _ = parser.parse_known_args(list(flower_args))
    return options


def superexec_command(flower_args: Sequence[str], imports: Sequence[str], wake_fd: int | None,
                      parent_pid: int, ready_fd: int | None = None) -> list[str]:  # fmt: skip
    """The SuperExec command for a SuperNode started with ``flower_args`` (what Flower's
    SuperNode itself would start in subprocess isolation, with the fork executor)."""
    from flwr.supercore.address import resolve_bind_address

    options = _flower_options(flower_args)
    host = f"[{options.host}]" if ":" in options.host else options.host
    cmd = [
        sys.executable, "-m", "adapters.supernode", "superexec",
        "--runtime-api-address", resolve_bind_address(f"{host}:{options.port}"),
        "--parent-pid", str(parent_pid),
    ]  # fmt: skip
    cmd += (
        ["--root-certificates", options.ssl_ca_certfile]
        if options.ssl_ca_certfile
        else ["--insecure"]
    )
    if options.superexec_auth_secret_file:
        cmd += ["--superexec-auth-secret-file", options.superexec_auth_secret_file]
    if options.allow_runtime_dependency_installation:
        cmd.append("--allow-runtime-dependency-installation")
    if wake_fd is not None:
        cmd += ["--wake-fd", str(wake_fd)]
    if ready_fd is not None:
        cmd += ["--ready-fd", str(ready_fd)]
    return [*cmd, *imports]


def _imports(app: str | None, preload: Sequence[str]) -> list[str]:
    return [*(["--app", app] if app else ["--no-app"]), *(f"--preload={m}" for m in preload)]


def run(imports: Sequence[str], flower_args: Sequence[str], ready_timeout: float = 300.0) -> None:
    """Start this SuperNode's SuperExec and wait until its zygote is ready (so the node
    registers with the SuperLink only once it can answer promptly: a restarted silo then
    makes its next round), pace Flower's SuperNode loop, run the SuperNode."""
    from adapters.supernode import pacing

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    ready_read, ready_write = os.pipe()
    cmd = superexec_command(flower_args, imports, wake_read, os.getpid(), ready_write)
    subprocess.Popen(cmd, pass_fds=(wake_read, ready_write), stdin=subprocess.DEVNULL)
    os.close(wake_read)
    os.close(ready_write)
    started = time.monotonic()
    readable, _, _ = select.select([ready_read], [], [], ready_timeout)
    os.close(ready_read)  # a byte (ready), EOF (the SuperExec died) or the timeout
    logger.info(
        "warm SuperNode: %s after %.1fs; starting Flower's SuperNode",
        "zygote ready" if readable else "no zygote yet",
        time.monotonic() - started,
    )

    def wake() -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(wake_write, b"m")

    pacing.install(on_message=wake)
    pacing.prompt_object_pulls()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *flower_args, "--isolation", "process"]
    flower_supernode()


def superexec(args: argparse.Namespace) -> None:
    """Flower's ``run_superexec`` with the fork executor in place of its subprocess one."""
    from flwr.supercore.auth import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as flower

    from adapters.supernode.executor import ForkExecutor, Pacer

    # The executor paces the loop in ``reconcile`` (woken by the SuperNode); Flower's own
    # sleep after each poll becomes its minimum.
    os.environ[_POLL_ENV] = "0.01"
    executor = ForkExecutor(args.app, args.preload, Pacer(args.wake_fd))
    if args.ready_fd is not None:  # tell the SuperNode it may register now
        executor.wait_ready()
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, b"r")
        os.close(args.ready_fd)
    flower.get_executor = lambda *_args, **_kwargs: executor
    sys.argv = ["flower-superexec"]
    flower.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        superexec_auth_secret=load_superexec_auth_secret(args.superexec_auth_secret_file),
        parent_pid=args.parent_pid,
        runtime_dependency_install=args.allow_runtime_dependency_installation,
    )


def _configure_logging() -> None:
    """This package's own lines, with time stamps (``FEDSILO_SUPERNODE_LOG_LEVEL``, default
    INFO; DEBUG traces each message: stored, task forked, task done, reply sent)."""
    handler = logging.StreamHandler()
    fmt = "%(asctime)s.%(msecs)03d [warm-supernode %(process)d] %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    package = logging.getLogger("adapters.supernode")
    package.addHandler(handler)
    package.setLevel(os.environ.get("FEDSILO_SUPERNODE_LOG_LEVEL", "INFO").upper())
    package.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m adapters.supernode``."""
    _configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    flower_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flower_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m adapters.supernode")
    roles = parser.add_subparsers(dest="role", required=True)
    run_p = roles.add_parser("run", help="a warm SuperNode: run -- <flower-supernode args>")
    sx = roles.add_parser("superexec", help="Flower's SuperExec with the fork executor")
    sx.add_argument("--runtime-api-address", required=True)
    tls = sx.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates")
    sx.add_argument("--parent-pid", type=int)
    sx.add_argument("--wake-fd", type=int)
    sx.add_argument("--ready-fd", type=int)
    sx.add_argument("--superexec-auth-secret-file")
    sx.add_argument("--allow-runtime-dependency-installation", action="store_true")
    zy = roles.add_parser("zygote", help="internal: the pre-imported process tasks fork from")
    zy.add_argument("--fd", type=int, required=True)
    for role in (run_p, sx, zy):
        app = role.add_mutually_exclusive_group()
        app.add_argument(
            "--app",
            default=DEFAULT_APP,
            metavar="MODULE",
            help=f"the ClientApp module to import ahead (default {DEFAULT_APP})",
        )
        app.add_argument("--no-app", dest="app", action="store_const", const=None)
        role.add_argument(
            "--preload",
            action="append",
            default=[],
            metavar="MODULE",
            help="another module to import ahead and keep (e.g. torch)",
        )
    args = parser.parse_args(argv)  # fmt: skip
    if args.role == "run":
        if not flower_args:
            parser.error("run needs the flower-supernode arguments after --")
        run(_imports(args.app, args.preload), flower_args)
    elif args.role == "superexec":
        superexec(args)
    else:
        from adapters.supernode.executor import run_zygote

        return run_zygote(args.fd, args.app, args.preload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
