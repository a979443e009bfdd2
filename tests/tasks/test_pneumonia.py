"""Pneumonia task: generated default, the medmnist ``.npz`` layout, HF directories,
partitions, and a federation that learns."""

import numpy as np
import pytest
import torch

from fl_app.config import RunConfig
from tasks import get_task
from tasks.base import DataSection
from tasks.pneumonia import (
    PNEUMONIA_RATE,
    generate_pneumonia_images,
    images_to_dataset,
    load_medmnist_npz,
    to_medmnist_npz,
)


def test_generated_default_is_deterministic_and_shaped_like_pneumoniamnist():
    images, labels = generate_pneumonia_images(n_images=200, seed=3)
    again, labels_again = generate_pneumonia_images(n_images=200, seed=3)
    other, _ = generate_pneumonia_images(n_images=200, seed=4)

    assert images.shape == (200, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(images, other)
    assert labels.mean() == pytest.approx(PNEUMONIA_RATE, abs=0.01)
    # Pneumonia (consolidation) images are brighter inside the lung fields on average.
    lungs = images[:, 6:22, [6, 7, 8, 19, 20, 21]].astype(float).mean(axis=(1, 2))
    assert lungs[labels == 1].mean() > lungs[labels == 0].mean()

    pool, test = get_task("pneumonia").load_data(DataSection())
    assert test is None and pool.x.shape == (3000, 1, 28, 28) and pool.x.dtype == np.float32
    assert pool.x.min() >= 0.0 and pool.x.max() <= 1.0


def test_npz_in_the_medmnist_layout_round_trips(tmp_path):
    images, labels = generate_pneumonia_images(n_images=100, seed=1)
    path = to_medmnist_npz(tmp_path / "pneumoniamnist.npz", images, labels, (0.7, 0.1, 0.2))
    with np.load(path) as raw:
        assert sorted(raw.files) == sorted(
            f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")
        )
        assert raw["train_images"].shape == (70, 28, 28) and raw["train_labels"].shape == (70, 1)

    pool, test = get_task("pneumonia").load_data(DataSection(source=str(path)))
    expected = images_to_dataset(images, labels)
    assert len(pool) == 80 and len(test) == 20
    np.testing.assert_array_equal(pool.x, expected.x[:80])
    np.testing.assert_array_equal(test.y, labels[80:])
    # The file's own test split is the server's held-out set.
    cfg = RunConfig(task="pneumonia", data={"source": str(path)})
    np.testing.assert_array_equal(
        get_task("pneumonia").load_test(cfg.data, cfg.seed).x, expected.x[80:]
    )


def test_npz_layout_errors_name_the_problem(tmp_path):
    bad = tmp_path / "other.npz"
    np.savez(bad, x=np.zeros((3, 28, 28)), y=np.zeros(3))
    with pytest.raises(ValueError, match="medmnist layout train_images/train_labels"):
        load_medmnist_npz(bad)
    with pytest.raises(ValueError, match="28×28 PneumoniaMNIST"):
        images_to_dataset(np.zeros((3, 64, 64), dtype=np.uint8), np.zeros(3))
    with pytest.raises(ValueError, match="labels must be 0/1"):
        images_to_dataset(np.zeros((3, 28, 28), dtype=np.uint8), np.array([0, 1, 2]))
    with pytest.raises(FileNotFoundError, match=r"data source '/nonexistent/p\.npz'"):
        get_task("pneumonia").load_data(DataSection(source="/nonexistent/p.npz"))


def test_hugging_face_directory_is_read_and_resized(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(6)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["normal", "pneumonia"])}
    )
    split = {"image": images, "label": [0, 1, 1, 0, 1, 1]}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(split, features=features),
            "validation": datasets.Dataset.from_dict(split, features=features).select(range(2)),
            "test": datasets.Dataset.from_dict(split, features=features).select(range(3)),
        }
    ).save_to_disk(tmp_path / "pneumonia-hf")
    pool, test = get_task("pneumonia").load_data(DataSection(source=str(tmp_path / "pneumonia-hf")))
    assert pool.x.shape == (8, 1, 28, 28) and test.x.shape == (3, 1, 28, 28)
    assert pool.y.tolist() == [0, 1, 1, 0, 1, 1, 0, 1]


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_deterministic_and_disjoint(partitioner):
    task = get_task("pneumonia")
    cfg = RunConfig(task="pneumonia", data={"partitioner": partitioner})
    parts = [task.load_partition(i, 5, cfg.data, cfg.seed) for i in range(5)]
    again = [task.load_partition(i, 5, cfg.data, cfg.seed) for i in range(5)]
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a.train.x, b.train.x)
        np.testing.assert_array_equal(a.val.y, b.val.y)
    pool, _ = task.split(cfg.data, cfg.seed)
    assert sum(len(p.train) + len(p.val) for p in parts) == len(pool)
    other = task.load_partition(0, 5, cfg.data, seed=7)
    assert not np.array_equal(other.train.y, parts[0].train.y)


def test_federation_learns_pneumonia(tmp_path):
    """The real ServerApp body and ClientApp on the in-process grid: 2 rounds, 10 silos
    (3 sampled per round), one local epoch."""
    from fl_app.client_app import app as client_app
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    cfg = RunConfig(
        task="pneumonia",
        num_server_rounds=2,
        training={"local-epochs": 1},
        sampling={"fraction-train": 0.3, "fraction-evaluate": 0.0},
        output={"run-dir": str(tmp_path / "runs")},
    )
    task = get_task("pneumonia")
    torch.manual_seed(0)
    untrained = task.evaluate(task.build_model(), task.load_test(cfg.data, cfg.seed))
    result, _ = run_federation(InProcessGrid(client_app, cfg.to_flower(), 10), cfg)
    final = result.evaluate_metrics_serverapp[2]
    assert set(final) >= {"accuracy", "roc-auc", "pr-auc", "f1"}
    assert final["roc-auc"] > 0.75
    assert final["roc-auc"] > untrained["roc-auc"] + 0.15
    assert final["loss"] < untrained["loss"]
