"""A silo's secret state: the randomness of its local DP, kept on the silo, per run lineage.

Local DP-SGD is private against the server only if the server cannot regenerate the
noise or the Poisson batches. Both therefore come from generators whose state is drawn
from OS entropy (:func:`strategies.privacy.randomness.secret_generator`) on the silo and
never leaves it: not in a reply, a metric, the run config or a log.

The state lives in one small file per *lineage* and silo, on the silo's own disk:

* directory: node config ``silo-state-dir``, else ``$FEDSILO_SILO_STATE_DIR``, else
  ``~/.cache/fedsilo/silo-state`` (created with mode 0700);
* file: ``<lineage>-p<partition-id>.json``, mode 0600, written atomically (temp file,
  fsync, ``os.replace``) after every answered training round;
* content: the sampling and noise generators' states, the local-DP accountant history
  (so a silo's cumulative ``dp-epsilon`` survives a resumed run) and the rounds answered.

The lineage is a random public id (:func:`new_lineage`) the server draws at a fresh
start, keeps in its checkpoint, reuses on resume and sends in every train config
(``lineage``). A fresh run has a new lineage, so a new secret: two runs never share noise.
A resumed run has the same lineage, so the silo continues from its saved generators: a
round the silo had not answered before the server crashed is answered exactly as the
uninterrupted run would have; a round it had answered gets fresh noise (and is accounted
again). Generators are never rewound, so a server that asks the same round twice (a
retry, or a replay with another global model) gets independent noise each time: the
difference of two replies does not cancel it.

A server that switches the lineage within one Flower run would restart the silo's
accounting; the silo refuses (:func:`silo_lineage`). A resumed run is a new Flower run and
cannot be told apart from a new run with an old lineage, which only continues the
accounting (conservative). Each lineage is one release of the silo's data: its ε does not
cover other runs on the same data.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context

from fl_app import LOG
from strategies.privacy.randomness import generator_state, restore_generator, secret_generator

__all__ = [
    "LINEAGE_KEY",
    "STATE_DIR_ENV",
    "STATE_DIR_NODE_KEY",
    "SiloSecrets",
    "SiloStateStore",
    "new_lineage",
    "silo_lineage",
    "state_dir",
    "write_atomic",
]

#: Train-config key carrying the lineage id from the server to the silos.
LINEAGE_KEY = "lineage"
#: Node-config key and environment variable naming the state directory.
STATE_DIR_NODE_KEY = "silo-state-dir"
STATE_DIR_ENV = "FEDSILO_SILO_STATE_DIR"
DEFAULT_STATE_DIR = "~/.cache/fedsilo/silo-state"
FORMAT = 1

#: context.state key pinning the lineage of the current Flower run.
_PINNED_KEY = "silo-lineage"
_LINEAGE = re.compile(r"[0-9a-f]{32}")


def new_lineage() -> str:
    """A fresh random lineage id (32 hex digits; public, not a secret)."""
    return secrets.token_hex(16)


def check_lineage(value: Any) -> str:
    """``value`` if it is a lineage id; it names a file, so nothing else is accepted."""
    if not isinstance(value, str) or not _LINEAGE.fullmatch(value):
        raise ValueError(
            f"train config '{LINEAGE_KEY}' = {value!r} is not a lineage id (32 lowercase hex "
            "digits, drawn by the server with fl_app.silo_state.new_lineage())"
        )
    return value


def silo_lineage(config: Mapping[str, Any], context: Context) -> str:
    """The lineage of this training round: the server's ``lineage`` train-config value,
    pinned for the rest of this Flower run in ``context.state``.

    A server that sends no lineage (e.g. a driver of its own) gets one the silo draws and
    keeps for the run: the noise stays secret, but the accountant history does not survive
    a resume. A different lineage within the same Flower run is refused: it would restart
    this silo's privacy accounting.
    """
    pinned_record = context.state.config_records.get(_PINNED_KEY)
    pinned = str(pinned_record["lineage"]) if pinned_record is not None else None
    sent = config.get(LINEAGE_KEY)
    if sent is None:
        if pinned is not None:
            return pinned
        lineage = new_lineage()
        LOG.info(
            "[fedsilo] silo: the train config has no '%s'; drew a lineage of its own for "
            "this run (local-DP accounting will not survive a resume)",
            LINEAGE_KEY,
        )
    else:
        lineage = check_lineage(sent)
        if pinned is not None and lineage != pinned:
            raise ValueError(
                f"train config '{LINEAGE_KEY}' changed within this run ({pinned} → {lineage}); "
                "a silo keeps one lineage per run, since a new one would restart its "
                "privacy accounting. Start a new run instead."
            )
    context.state[_PINNED_KEY] = ConfigRecord({"lineage": lineage})
    return lineage


@dataclass
class SiloSecrets:
    """One silo's secret state for one lineage (see module doc).

    ``sampling`` and ``noise`` are live generators: use them, then :meth:`SiloStateStore.save`
    the object to persist where they got to.
    """

    lineage: str
    silo: str
    sampling: torch.Generator
    noise: torch.Generator
    accountant: dict[str, list] | None = None
    rounds: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The file content (generator states base64-encoded)."""
        return {
            "format": FORMAT,
            "lineage": self.lineage,
            "silo": self.silo,
            "generators": {
                "sampling": base64.b64encode(generator_state(self.sampling)).decode(),
                "noise": base64.b64encode(generator_state(self.noise)).decode(),
            },
            "accountant": self.accountant,
            "rounds": list(self.rounds),
        }


def state_dir(node_config: Mapping[str, Any]) -> Path:
    """The silo's state directory (node config, environment, or the default)."""
    chosen = node_config.get(STATE_DIR_NODE_KEY) or os.environ.get(STATE_DIR_ENV)
    return Path(str(chosen or DEFAULT_STATE_DIR)).expanduser()


class SiloStateStore:
    """Files of :class:`SiloSecrets` in one directory on the silo."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()

    @classmethod
    def for_node(cls, node_config: Mapping[str, Any]) -> SiloStateStore:
        """The store :func:`state_dir` names for this node."""
        return cls(state_dir(node_config))

    def path(self, lineage: str, silo: str) -> Path:
        """The file of ``silo``'s state for ``lineage``."""
        return self.directory / f"{check_lineage(lineage)}-{silo}.json"

    def load(self, lineage: str, silo: str) -> SiloSecrets:
        """The saved state, or a fresh one from OS entropy if this lineage is new here."""
        path = self.path(lineage, silo)
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return SiloSecrets(lineage, silo, secret_generator(), secret_generator())
        try:
            blob = json.loads(raw)
            if blob.get("format") != FORMAT or blob.get("lineage") != lineage:
                raise ValueError(f"format {blob.get('format')}, lineage {blob.get('lineage')}")
            gens = blob["generators"]
            return SiloSecrets(
                lineage,
                silo,
                restore_generator(base64.b64decode(gens["sampling"])),
                restore_generator(base64.b64decode(gens["noise"])),
                blob.get("accountant"),
                [int(r) for r in blob.get("rounds", [])],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"silo state file {path} is unreadable ({exc}). It holds this silo's secret "
                "DP randomness and accounting for the run; if it is lost, start a new run "
                "(a new lineage) rather than deleting it mid-run, which would restart the "
                "accounting."
            ) from None

    def save(self, state: SiloSecrets) -> Path:
        """Write ``state`` atomically with mode 0600; returns the file's path."""
        path = self.path(state.lineage, state.silo)
        write_atomic(path, json.dumps(state.to_json()).encode())
        return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync,
    ``os.replace``) with mode 0600, creating the directory with mode 0700: a crash leaves
    the old file or the new one, never a torn one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates it with mode 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
