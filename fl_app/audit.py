"""The audit log of a run: ``audit.jsonl`` in the run directory.

One JSON object per line, appended and fsync'd before the run goes on, so a crash loses
at most the line being written. Every line carries ``seq`` (0, 1, …), ``time`` (UTC ISO
8601), ``event``, ``config-hash`` (:meth:`RunConfig.fingerprint`) and ``prev``: the sha256
of the previous line's text (``""`` for the first), a hash chain that makes an edited,
removed or reordered line detectable with :func:`verify_audit_log`. A resumed run appends
to the same file and continues the chain.

Events (see docs/security.md, "Reliability"): ``run-start``, ``train`` and ``evaluate``
(per round: the silos asked, the ones that replied, sha256 and size of every received
update, missing silos, error replies, rejected updates with the reason, retries, ε spent),
``checkpoint`` (round and sha256 of the checkpoint), ``onnx-export`` (``export.onnx``:
exporter, parity, sha256, or why it was refused; fl_app/onnx_export.py), ``run-end`` /
``run-aborted``, then ``model-registry`` (the MLflow sink's champion decision, appended as
it logs the model; adapters/mlflow/registry.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

AUDIT_FILE = "audit.jsonl"


def update_sha256(record: ArrayRecord) -> str:
    """sha256 of an update as received: for each array in record order, its key, then its
    dtype, shape and serialised bytes (``Array.data``)."""
    digest = hashlib.sha256()
    for key, arr in record.items():
        digest.update(key.encode())
        digest.update(f"|{arr.dtype}|{tuple(arr.shape)}|".encode())
        digest.update(arr.data)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class AuditLog:
    """Append-only, hash-chained JSONL (see module doc)."""

    def __init__(
        self,
        path: Path,
        config_hash: str,
        on_record: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.config_hash = config_hash
        #: Called with every entry once it is written (e.g. the metrics sinks' ``log_event``).
        self.on_record = on_record
        self.seq, self.prev = 0, ""
        if self.path.is_file():  # a resumed run continues the chain
            lines = [ln for ln in self.path.read_text(encoding="utf-8").splitlines() if ln]
            if lines:
                self.seq = int(json.loads(lines[-1]).get("seq", len(lines) - 1)) + 1
                self.prev = hashlib.sha256(lines[-1].encode()).hexdigest()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event (``fields`` with kebab-case keys) and fsync it; return it."""
        entry = {
            "seq": self.seq,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "event": event,
            "config-hash": self.config_hash,
            **_jsonable(fields),
            "prev": self.prev,
        }
        text = json.dumps(entry, sort_keys=False, allow_nan=False)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.seq += 1
        self.prev = hashlib.sha256(text.encode()).hexdigest()
        if self.on_record is not None:
            self.on_record(entry)
        return entry


def read_audit_log(path: Path) -> list[dict[str, Any]]:
    """The entries of an audit log, in order."""
    return [json.loads(ln) for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln]


def verify_audit_log(path: Path) -> int:
    """Check the hash chain and sequence numbers; return the number of entries.

    Raises ``ValueError`` naming the first line that was edited, removed or reordered.
    """
    prev = ""
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln]
    for i, line in enumerate(lines):
        entry = json.loads(line)
        if entry.get("prev") != prev or entry.get("seq") != i:
            raise ValueError(
                f"{path}: line {i + 1} (seq {entry.get('seq')}) breaks the hash chain; the log "
                "was edited, truncated or reordered at or before this line"
            )
        prev = hashlib.sha256(line.encode()).hexdigest()
    return len(lines)
