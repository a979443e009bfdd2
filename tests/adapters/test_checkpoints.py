"""Atomic, checksummed checkpoints on real Azurite and on a local directory."""

import subprocess
import sys

import pytest

import adapters.app
from adapters.blob import BlobCheckpointStore, BlobStore, LocalCheckpointStore
from fl_app.stores import CHECKPOINT_STORES, ChecksumError, open_checkpoint_store


def _failing_stream(first: bytes):
    yield first
    raise OSError("connection reset while streaming the checkpoint")


@pytest.fixture
def blob_store(azurite_env, blob_container):
    with BlobStore.from_uri(azurite_env.url(blob_container)) as store:
        yield store


def test_blob_checkpoint_round_trip_with_checksum(blob_store):
    ckpt = BlobCheckpointStore(blob_store, "federation-a/checkpoints")
    payload = bytes(range(256)) * 40_000  # 10 MB: several staged blocks
    digest = ckpt.save("round-3.pt", payload)
    assert ckpt.load("round-3.pt") == payload
    assert blob_store.exists("federation-a/checkpoints/round-3.pt")
    props = blob_store.container_client.get_blob_client(
        "federation-a/checkpoints/round-3.pt"
    ).get_blob_properties()
    assert props.metadata["sha256"] == digest


def test_a_failed_upload_leaves_the_previous_checkpoint_intact(blob_store):
    ckpt = BlobCheckpointStore(blob_store, "ckpt")
    ckpt.save("latest.pt", b"round 4 model")
    with pytest.raises(OSError, match="connection reset"):
        ckpt.save("latest.pt", _failing_stream(b"half of round 5"))
    assert ckpt.load("latest.pt") == b"round 4 model"


def test_a_corrupted_blob_is_detected_on_read(blob_store):
    ckpt = BlobCheckpointStore(blob_store, "ckpt")
    ckpt.save("latest.pt", b"good bytes")
    blob = blob_store.container_client.get_blob_client("ckpt/latest.pt")
    metadata = blob.get_blob_properties().metadata
    blob.upload_blob(b"tampered", overwrite=True, metadata=metadata)
    with pytest.raises(ChecksumError, match="corrupt"):
        ckpt.load("latest.pt")


def test_open_checkpoint_store_picks_blob_or_local(azurite_env, blob_container, tmp_path):
    blob = open_checkpoint_store(azurite_env.url(blob_container, "runs/x"))
    assert isinstance(blob, BlobCheckpointStore) and blob.prefix == "runs/x"
    blob.save("a.pt", b"1")
    assert blob.load("a.pt") == b"1"
    local = open_checkpoint_store(str(tmp_path / "ckpt"))
    assert isinstance(local, LocalCheckpointStore)


def test_local_checkpoints_are_atomic_and_verified(tmp_path):
    ckpt = LocalCheckpointStore(tmp_path)
    ckpt.save("latest.pt", b"round 1")
    with pytest.raises(OSError):
        ckpt.save("latest.pt", _failing_stream(b"partial"))
    assert ckpt.load("latest.pt") == b"round 1"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    (tmp_path / "latest.pt").write_bytes(b"bitrot")
    with pytest.raises(ChecksumError):
        ckpt.load("latest.pt")


def test_a_federation_checkpoints_its_global_model_to_blob(azurite_env, blob_container, tmp_path):
    import io

    import torch

    from fl_app.client_app import app as client_app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    url = azurite_env.url(blob_container, "federation/checkpoints")
    cfg = RunConfig(
        task="breast-cancer",
        num_server_rounds=2,
        output={"run-dir": str(tmp_path), "checkpoint-uri": url},
    )
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    checkpoint = torch.load(io.BytesIO(open_checkpoint_store(url).load("latest.pt")))
    assert checkpoint["round"] == 2 and checkpoint["config-hash"] == cfg.fingerprint()
    final = torch.load(run_dir / "model.pt")
    for key, value in final.items():
        assert torch.equal(checkpoint["state_dict"][key], value)


def test_the_core_alone_names_the_missing_store_and_the_wiring():
    """fl_app never imports adapters: without the composition root a Blob URL is a
    ConfigError naming the key, the scheme and where the Blob store comes from."""
    code = (
        "from fl_app.stores import open_checkpoint_store\n"
        "import sys\n"
        "try:\n"
        "    open_checkpoint_store('https://acct.blob.core.windows.net/c/p')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "print('adapters' in {m.split('.')[0] for m in sys.modules})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("ConfigError run-config 'output.checkpoint-uri'")
    assert "checkpoint store 'https'" in out and "adapters.app" in out
    assert out.strip().endswith("False")  # nothing under adapters/ was imported


def test_blob_schemes_are_registered_lazily_by_the_composition_root():
    for scheme in adapters.app.BLOB_SCHEMES:
        assert CHECKPOINT_STORES.get(scheme).obj.__module__ == "adapters.blob.checkpoints"
    assert CHECKPOINT_STORES.get("file").obj is LocalCheckpointStore
