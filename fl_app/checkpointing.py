"""Checkpoints that a run can resume from, bit for bit.

After every round the server saves ``latest.pt`` (atomically, verified by sha256; see
:mod:`adapters.blob.checkpoints`) with

* ``round`` and ``state_dict``: the global model after that round;
* ``strategy``: the state of every strategy layer that has one — FedAdam/FedYogi/
  FedAdagrad moments (``m_t``, ``v_t``), FedAvgM's momentum and current model, the robust
  rules' previous aggregate (centred clipping), DP-FedAvg's accountant history and
  (adaptive) clipping norm and the states of its noise and Poisson-sampling
  generators (seeded from OS entropy: the checkpoint is where that secret lives);
* ``rng``: the Python, NumPy and torch generator states of the server process;
* ``settings``: the run-config keys that determine the model (everything but the
  transient keys, :data:`fl_app.config.TRANSIENT_KEYS`), so that a run is only ever
  resumed with the settings it ran with, and ``config-hash``. Settings stored by older
  versions (flat keys) are read under today's dotted keys
  (:func:`fl_app.config.legacy_settings`);
* ``lineage``: the run's public lineage id (:mod:`fl_app.silo_state`), sent to the silos
  in every train config so that, on resume, they continue their secret local-DP state
  (absent in checkpoints of older versions: such a resume starts a new lineage).

Everything is a tensor, a number, a string or a list/dict of those, so checkpoints load
with ``torch.load(weights_only=True)``: a tampered checkpoint cannot run code.

``output.resume = true`` continues from the newest checkpoint of a run with the same settings
(:func:`find_resume_point`); client training is seeded by (seed, partition, round) and
sampling by (seed, round), so the resumed rounds are the rounds the interrupted run would
have run. Local DP's secret batches and noise continue from each silo's state file (same
lineage): a round a silo had already answered before the crash gets fresh noise.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fl_app import LOG, RUN_INFO_KEYS
from fl_app.legacy import legacy_settings
from fl_app.stores import open_checkpoint_store, store_scheme
from fl_core.config import Section, transient, transient_keys
from fl_core.errors import ConfigError
from strategies.wrappers import load_strategy_state, strategy_state

if TYPE_CHECKING:
    from fl_app.config import RunConfig

CHECKPOINT_NAME = "latest.pt"
FORMAT = 3
#: Formats :func:`load_checkpoint` reads (2: strategy layers as a list, see above).
READABLE_FORMATS = (2, 3)


class OutputSection(Section):
    """Where a run writes its model, metrics and checkpoints, and what it resumes from."""

    checkpoint_uri: str = transient(
        "",
        description="Where the global model is checkpointed after every round: a directory or "
        'a Blob URL (…/<container>/<prefix>); "" = <run directory>/checkpoints.',
    )
    run_dir: str = transient(
        "outputs", description="Directory under which each run writes model, metrics, config."
    )
    resume: bool = transient(
        False,
        description="Continue from the last complete round of the newest run with the same "
        "settings under `output.run-dir` (or `output.resume-from`); starts afresh when there "
        "is none.",
    )
    resume_from: str = transient(
        "",
        description="Run directory, checkpoint directory, checkpoint file or Blob URL to "
        "resume from (needs `output.resume` = true).",
    )


def training_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run-config keys that determine the model (all but the transient ones), dotted."""
    transient = transient_keys(type(cfg))
    return {k: v for k, v in cfg.to_flower().items() if k not in transient}


def stored_settings(settings: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """Settings a checkpoint or a run directory's ``config.json`` holds, under today's
    dotted keys (older versions wrote flat keys), transient keys and the config hash
    left out: comparable with ``cfg``'s :func:`training_settings`."""
    transient = transient_keys(type(cfg))
    stored = {
        k: v
        for k, v in legacy_settings(settings).items()
        if k not in transient and k not in RUN_INFO_KEYS
    }
    # A key added after the run was written was at its default then: a new key's default
    # keeps the earlier behaviour (e.g. selection.policy = "random", robust.rule-params = "").
    return {**_defaults(type(cfg)), **stored}


@functools.cache
def _defaults(config_type: type) -> dict[str, Any]:
    """The default training settings of ``config_type``."""
    return training_settings(config_type())


def settings_hash(cfg: RunConfig) -> str:
    """Short sha256 of :func:`training_settings`."""
    blob = json.dumps(training_settings(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- values
def _encode(value: Any) -> Any:
    """A strategy attribute as tensors/lists/dicts (weights_only-loadable), tagged."""
    if value is None:
        return None
    if isinstance(value, ArrayRecord):
        return {"kind": "array-record", "value": value.to_torch_state_dict()}
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "value": value.detach().clone()}
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", "value": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, dict):
        return {"kind": "dict", "value": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"kind": "list", "value": [_encode(v) for v in value]}
    if isinstance(value, int | float | str | bool):
        return {"kind": "scalar", "value": value}
    raise TypeError(f"cannot checkpoint a strategy attribute of type {type(value).__name__}")


def _decode(blob: Any) -> Any:
    if blob is None:
        return None
    kind, value = blob["kind"], blob["value"]
    if kind == "array-record":
        return ArrayRecord(value)
    if kind == "tensor":
        return value
    if kind == "ndarray":
        return value.numpy()
    if kind == "dict":
        return {k: _decode(v) for k, v in value.items()}
    if kind == "list":
        return [_decode(v) for v in value]
    return value


# --------------------------------------------------------------------------- strategy
# A checkpoint's "strategy" entry is the outermost wrapper's state_dict()
# ({"class", "state", "inner"}, see strategies.wrappers.strategy_state), each layer's own
# state values encoded by _encode. Format 2 held a list of layers, outermost first, with
# keys "state-dict", "generator:<attribute>" and "attr:<attribute>"; it is read as the
# same layers (_format2_layers).
Layers = list[tuple[str, dict[str, Any]]]


def _flatten(state: dict[str, Any]) -> Layers:
    """A nested strategy state as ``[(class, own state), …]``, outermost first."""
    layers: Layers = []
    node: dict[str, Any] | None = state
    while node is not None:
        layers.append((node["class"], node["state"]))
        node = node.get("inner")
    return layers


def _nest(layers: Layers) -> dict[str, Any]:
    node: dict[str, Any] | None = None
    for name, own in reversed(layers):
        node = {"class": name, "state": own, **({"inner": node} if node is not None else {})}
    assert node is not None
    return node


def _format2_layers(saved: list[dict[str, Any]]) -> Layers:
    """Format 2's layer list in today's terms: the layer's own state_dict merged, and
    every "generator:NAME" / "attr:NAME" entry under NAME."""
    layers = []
    for entry in saved:
        own: dict[str, Any] = {}
        for key, value in entry["state"].items():
            kind, _, name = key.partition(":")
            if key == "state-dict":
                own.update(_decode(value))
            elif kind == "generator":
                own[name] = value
            elif kind == "attr":
                own[name] = _decode(value)
        layers.append((entry["class"], own))
    return layers


def capture_strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The state of every layer of ``strategy`` (its ``state_dict()``), encoded."""
    return _nest([(name, {k: _encode(v) for k, v in own.items()})
                  for name, own in _flatten(strategy_state(strategy))])  # fmt: skip


def saved_layers(saved: dict[str, Any] | list[dict[str, Any]]) -> Layers:
    """A checkpoint's ``strategy`` entry (any format) as ``[(class, own state), …]``,
    outermost first, values decoded."""
    if isinstance(saved, list):
        return _format2_layers(saved)
    return [(name, {k: _decode(v) for k, v in own.items()}) for name, own in _flatten(saved)]


def restore_strategy_state(
    strategy: Strategy, saved: dict[str, Any] | list[dict[str, Any]]
) -> None:
    """Load :func:`capture_strategy_state` output (or format 2's) into an identically
    built strategy. Layers that keep state must match class by class; layers that keep
    none may differ (a wrapper split in two still reads an older checkpoint)."""
    live = _flatten(strategy_state(strategy))
    layers = saved_layers(saved)
    have = [name for name, own in live if own]
    want = [name for name, own in layers if own]
    if have != want:
        raise ConfigError(
            f"the checkpoint's strategy layers {want} differ from this run's {have}; resume "
            "with the settings the checkpoint was written with"
        )
    states = iter(own for _, own in layers if own)
    load_strategy_state(
        strategy, _nest([(name, next(states) if own else {}) for name, own in live])
    )


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global generator states (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


# --------------------------------------------------------------------------- files
def checkpoint_bytes(
    server_round: int,
    arrays: ArrayRecord,
    cfg: RunConfig,
    strategy: Strategy | None = None,
    lineage: str | None = None,
) -> bytes:
    """A resumable checkpoint after ``server_round`` (see module doc)."""
    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "round": server_round,
            "config-hash": cfg.fingerprint(),
            "settings-hash": settings_hash(cfg),
            "settings": training_settings(cfg),
            "state_dict": arrays.to_torch_state_dict(),
            "strategy": capture_strategy_state(strategy) if strategy is not None else None,
            "rng": rng_state(),
            "lineage": lineage,
        },
        buffer,
    )
    return buffer.getvalue()


@dataclass
class ResumePoint:
    """Where a resumed run starts: after ``round``, from ``arrays`` and the states."""

    round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any] | list[dict[str, Any]] | None
    rng: dict[str, Any]
    source: str
    run_dir: Path | None
    #: The run's lineage id (None in checkpoints written before lineages existed).
    lineage: str | None = None

    def restore(self, strategy: Strategy) -> None:
        """Restore the strategy layers' and the process's generator states."""
        if self.strategy_state:
            restore_strategy_state(strategy, self.strategy_state)
        set_rng_state(self.rng)


def load_checkpoint(data: bytes, cfg: RunConfig, source: str, run_dir: Path | None):
    """Parse a checkpoint and check it was written with ``cfg``'s settings."""
    blob = torch.load(io.BytesIO(data), weights_only=True)
    if blob.get("format") not in READABLE_FORMATS:
        raise ConfigError(
            f"checkpoint {source} has no resumable state (format {blob.get('format')}); it "
            "was written by an older version: start the run afresh (output.resume=false)"
        )
    ours = training_settings(cfg)
    theirs = stored_settings(blob["settings"], cfg)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        details = ", ".join(f"'{k}': {theirs.get(k)!r} → {ours.get(k)!r}" for k in differ)
        raise ConfigError(
            f"cannot resume from {source}: run-config differs from the checkpoint's in "
            f"{details}. Resume with the checkpoint's values, or start afresh "
            "(output.resume=false)."
        )
    return ResumePoint(
        round=int(blob["round"]),
        arrays=ArrayRecord(blob["state_dict"]),
        strategy_state=blob["strategy"],
        rng=blob["rng"],
        source=source,
        run_dir=run_dir,
        lineage=blob.get("lineage"),
    )


def _settings_of_run(run_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    try:
        params = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return stored_settings(params, cfg)


def matching_runs(cfg: RunConfig) -> list[Path]:
    """Run directories under ``output.run-dir`` written with ``cfg``'s settings, newest first."""
    root = Path(cfg.output.run_dir).expanduser().resolve()
    if not root.is_dir():
        return []
    ours = training_settings(cfg)
    runs = [p for p in root.iterdir() if p.is_dir() and _settings_of_run(p, cfg) == ours]
    return sorted(runs, key=lambda p: p.name, reverse=True)


def _load(store_uri: str, name: str) -> bytes | None:
    try:
        return open_checkpoint_store(store_uri).load(name)
    except FileNotFoundError:
        return None


def _explicit_source(cfg: RunConfig) -> tuple[str, str, Path | None]:
    """``(store uri, checkpoint name, run dir)`` for ``output.resume-from``."""
    src = cfg.output.resume_from
    if store_scheme(src) != "file":
        return src, CHECKPOINT_NAME, None
    path = Path(src).expanduser().resolve()

    def run_of(ckpt_dir: Path) -> Path | None:
        parent = ckpt_dir.parent
        ok = ckpt_dir.name == "checkpoints" and (parent / "config.json").is_file()
        return parent if ok else None

    if path.is_file():
        return str(path.parent), path.name, run_of(path.parent)
    if (path / "config.json").is_file():
        local = path / "checkpoints"
        store = str(local) if (local / CHECKPOINT_NAME).is_file() else cfg.output.checkpoint_uri
        return store or str(local), CHECKPOINT_NAME, path
    if (path / CHECKPOINT_NAME).is_file():
        return str(path), CHECKPOINT_NAME, run_of(path)
    raise ConfigError(
        f"run-config 'output.resume-from' = {src!r}: no checkpoint there; give a run directory, a "
        f"checkpoint directory holding {CHECKPOINT_NAME}, a checkpoint file or a Blob URL"
    )


def find_resume_point(cfg: RunConfig) -> ResumePoint | None:
    """The checkpoint ``output.resume = true`` continues from, or ``None`` (start afresh).

    ``output.resume-from`` names it explicitly (an error if it holds none). Otherwise: the
    ``output.checkpoint-uri`` when set, else the newest run directory under
    ``output.run-dir`` with the same settings that has a checkpoint; the resumed run
    continues writing in that run directory (metrics, audit log).
    """
    if not cfg.output.resume:
        return None
    if cfg.output.resume_from:
        store, name, run_dir = _explicit_source(cfg)
        data = _load(store, name)
        if data is None:
            raise ConfigError(
                f"run-config 'output.resume-from' = {cfg.output.resume_from!r}: no checkpoint "
                f"{name} in {store}"
            )
        return load_checkpoint(data, cfg, f"{store}/{name}", run_dir)
    runs = matching_runs(cfg)
    if cfg.output.checkpoint_uri:
        data = _load(cfg.output.checkpoint_uri, CHECKPOINT_NAME)
        if data is not None:
            source = f"{cfg.output.checkpoint_uri}/{CHECKPOINT_NAME}"
            return load_checkpoint(data, cfg, source, runs[0] if runs else None)
    else:
        for run_dir in runs:
            data = _load(str(run_dir / "checkpoints"), CHECKPOINT_NAME)
            if data is not None:
                source = str(run_dir / "checkpoints" / CHECKPOINT_NAME)
                return load_checkpoint(data, cfg, source, run_dir)
    LOG.warning(
        "[fedsilo] output.resume=true but no checkpoint of a run with these settings under %s; "
        "starting afresh",
        cfg.output.checkpoint_uri or cfg.output.run_dir,
    )
    return None
