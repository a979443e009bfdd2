"""Each task: data, partitions, local training that learns, and its metrics."""

import re

import numpy as np
import pytest
import torch

from fl_app.config import RunConfig
from tasks import available_tasks, get_task
from tasks.base import DataSection, pooled_moments
from tasks.fraud import FEATURES, frame_to_dataset, generate_fraud_frame


def _trained(task_name: str, epochs: int = 3, **training):
    cfg = RunConfig(task=task_name, training={"local-epochs": epochs, **training})
    task = get_task(task_name)
    parts = [task.load_partition(i, 4, cfg.data, cfg.seed) for i in range(4)]
    torch.manual_seed(0)
    model = task.build_model()
    task.set_input_scaling(model, [task.feature_moments(p.train) for p in parts])
    before = task.evaluate(model, task.load_test(cfg.data, cfg.seed))
    for p in parts:
        task.train(model, p.train, cfg.training, generator=torch.Generator().manual_seed(0))
    return task, cfg, parts, before, task.evaluate(model, task.load_test(cfg.data, cfg.seed))


@pytest.mark.parametrize("name", available_tasks())
def test_partitions_do_not_overlap_the_servers_test_set(name):
    task = get_task(name)
    cfg = RunConfig(task=name)
    test = task.load_test(cfg.data, cfg.seed)
    parts = [task.load_partition(i, 5, cfg.data, cfg.seed) for i in range(5)]
    rows = {r.tobytes() for p in parts for r in np.concatenate([p.train.x, p.val.x])}
    test_rows = {r.tobytes() for r in test.x}
    assert len(rows & test_rows) <= 2  # only exact duplicate rows already in the source
    assert sum(len(p.train) + len(p.val) + 0 for p in parts) + len(test) > 0
    again = task.load_partition(3, 5, cfg.data, cfg.seed)
    assert np.array_equal(again.train.y, parts[3].train.y)


def test_digits_learns_and_reports_macro_f1():
    _, _, _, before, after = _trained("digits")
    assert set(after) == {"loss", "accuracy", "f1-macro"}
    assert after["accuracy"] > 0.8 > before["accuracy"]
    assert after["loss"] < before["loss"]


@pytest.mark.parametrize("name", ["breast-cancer", "fraud"])
def test_binary_tasks_learn_and_report_auc(name):
    _, _, _, before, after = _trained(name, epochs=1, learning_rate=0.02)
    assert set(after) == {"loss", "accuracy", "roc-auc", "pr-auc", "f1", "balanced-accuracy"}
    assert after["roc-auc"] > 0.9
    assert after["pr-auc"] > before["pr-auc"]


def test_fraud_default_is_imbalanced_deterministic_and_in_the_public_layout():
    frame = generate_fraud_frame()
    assert list(frame.columns) == [*FEATURES, "Class"]
    assert 0 < frame["Class"].mean() <= 0.02
    assert frame.equals(generate_fraud_frame())


def test_fraud_reads_the_csv_layout_from_a_path(tmp_path):
    path = tmp_path / "creditcard.csv"
    generate_fraud_frame(n_rows=3000, seed=5).to_csv(path, index=False)
    task = get_task("fraud")
    pool, test = task.load_data(DataSection(source=str(path)))
    assert test is None and len(pool) == 3000
    expected = frame_to_dataset(generate_fraud_frame(n_rows=3000, seed=5))
    np.testing.assert_allclose(pool.x, expected.x, rtol=1e-6)


def test_fraud_csv_missing_columns_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    generate_fraud_frame(n_rows=100).drop(columns=["V7", "Amount"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['V7', 'Amount'\]"):
        get_task("fraud").load_data(DataSection(source=str(path)))


def test_missing_data_source_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match=re.escape("data source '/nonexistent/x.csv'")):
        get_task("fraud").load_data(DataSection(source="/nonexistent/x.csv"))


def test_digits_real_loader_reads_a_hugging_face_dataset_directory(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(12)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    split = {"image": images, "label": [i % 10 for i in range(12)]}
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(split, features=features),
            "test": datasets.Dataset.from_dict(split, features=features).select(range(4)),
        }
    )
    dd.save_to_disk(tmp_path / "mnist-like")
    task = get_task("digits")
    pool, test = task.load_data(DataSection(source=str(tmp_path / "mnist-like")))
    assert pool.x.shape == (12, 1, 28, 28) and test.x.shape == (4, 1, 28, 28)
    assert pool.x.max() <= 1.0 and pool.y.tolist()[:3] == [0, 1, 2]
    # The same CNN takes 28×28 inputs.
    assert task.build_model()(torch.from_numpy(pool.x)).shape == (12, 10)


def test_breast_cancer_rejects_other_sources():
    with pytest.raises(ValueError, match=r'data.source = ""'):
        get_task("breast-cancer").load_data(DataSection(source="x"))


def test_pooled_moments_equal_the_global_mean_and_std():
    task = get_task("breast-cancer")
    cfg = RunConfig(task="breast-cancer")
    parts = [task.load_partition(i, 6, cfg.data, cfg.seed).train for i in range(6)]
    mean, std = pooled_moments([task.feature_moments(p) for p in parts])
    allx = np.concatenate([p.x for p in parts]).astype(np.float64)
    np.testing.assert_allclose(mean, allx.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, allx.std(axis=0), rtol=1e-4)
    assert (
        task.feature_moments(get_task("digits").load_partition(0, 2, DataSection(), seed=42).train)
        is not None
        or get_task("digits").feature_moments(parts[0]) is None
    )


def test_partition_id_out_of_range_names_the_node_config():
    with pytest.raises(ValueError, match="--node-config"):
        get_task("digits").load_partition(5, 5, DataSection(), seed=42)


def test_seeded_training_is_bitwise_reproducible():
    a = _trained("breast-cancer", epochs=1)[4]
    b = _trained("breast-cancer", epochs=1)[4]
    assert a == b


def test_silos_with_their_own_data_sources_federate(tmp_path):
    """Deployment mode: each silo's node config names its own CSV (a path here; a Blob URL
    in Azure goes through the same resolver)."""
    from fl_app.client_app import app as client_app
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    frame = generate_fraud_frame()  # same generator as the server's held-out set
    sources = []
    for i in range(3):
        path = tmp_path / f"silo-{i}.csv"
        frame.iloc[i * 2000 : (i + 1) * 2000].to_csv(path, index=False)
        sources.append({"data-source": str(path)})
    cfg = RunConfig(
        task="fraud",
        num_server_rounds=2,
        output={"run-dir": str(tmp_path / "runs")},
        training={"learning-rate": 0.01},
    )
    grid = InProcessGrid(client_app, cfg.to_flower(), 3, node_configs=sources)
    result, _ = run_federation(grid, cfg)
    assert result.train_metrics_clientapp[2]["num-examples"] == pytest.approx(3 * 1800)
    assert result.evaluate_metrics_serverapp[2]["roc-auc"] > 0.8


def test_balanced_accuracy_is_sklearns_and_a_one_class_silos_recall():
    from sklearn.metrics import balanced_accuracy_score

    from tasks.training import balanced_accuracy

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    fraud_only = np.ones(8, dtype=int)  # a silo holding fraud rows only
    assert balanced_accuracy(fraud_only, np.array([1, 1, 1, 0, 0, 0, 0, 0])) == 0.375
    assert np.isnan(balanced_accuracy(np.zeros(0, dtype=int), np.zeros(0, dtype=int)))
