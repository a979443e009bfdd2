"""Privacy-attack benchmark: each attack's mechanics on small inputs, then ``--quick`` end to
end (the doc's structure, every figure a number). No timing assertions."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import privacy_attacks as pa

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digits(n: int = 400):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n] / 16.0, dtype=torch.float32)[:, None]
    return x, torch.tensor(d.target[:n])


# ------------------------------------------------------------------- metrics


def test_image_metrics_and_attack_figures_on_known_inputs():
    a = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    assert pa.psnr(a, a) == math.inf and pa.ssim(a, a) == pytest.approx(1.0)
    assert pa.psnr(torch.zeros(8, 8), torch.full((8, 8), 0.1)) == pytest.approx(20.0)
    assert pa.ssim(a, 1 - a) < 0.0
    member = np.array([True] * 50 + [False] * 50)
    perfect = member.astype(float)
    assert pa.roc_auc(perfect, member) == 1.0 and pa.tpr_at_fpr(perfect, member) == 1.0
    assert pa.roc_auc(-perfect, member) == 0.0 and pa.tpr_at_fpr(-perfect, member) == 0.0


# ------------------------------------------------------------------- membership inference


def _mlp_fit(x, y, seed, steps=300):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _lira_auc(target_model, x, y, member, shadows):
    phi_shadow = np.stack([pa.logit_confidence(m, x, y) for m, _ in shadows])
    shadow_in = np.stack([inside for _, inside in shadows])
    scores = pa.lira_offline_scores(pa.logit_confidence(target_model, x, y), phi_shadow,
                                    shadow_in)  # fmt: skip
    return pa.roc_auc(scores, member), pa.roc_auc(-pa.per_example_loss(target_model, x, y), member)


def test_lira_and_loss_attack_find_the_members_of_an_overfit_model_and_not_of_another():
    """Random labels: only memorisation can fit them. A model that memorised its members
    gives them away (AUC well above 0.5); a model trained on other rows does not (≈ 0.5)."""
    gen = torch.Generator().manual_seed(0)
    n = 120
    x = torch.randn(n, 20, generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    member = np.zeros(n, bool)
    member[: n // 2] = True
    rng = np.random.default_rng(1)
    shadows = []
    for k in range(8):
        inside = np.zeros(n, bool)
        inside[rng.choice(n, n // 2, replace=False)] = True
        shadows.append((_mlp_fit(x[inside], y[inside], seed=10 + k), inside))
    overfit = _mlp_fit(x[member], y[member], seed=3)
    lira, loss = _lira_auc(overfit, x, y, member, shadows)
    assert lira > 0.8 and loss > 0.8
    x_other = torch.randn(n // 2, 20, generator=gen)
    y_other = torch.randint(0, 2, (n // 2,), generator=gen)
    unrelated = _mlp_fit(x_other, y_other, seed=4)
    lira, loss = _lira_auc(unrelated, x, y, member, shadows)
    assert abs(lira - 0.5) < 0.15 and abs(loss - 0.5) < 0.15


def test_lira_uses_only_the_shadows_that_left_a_row_out():
    phi = np.array([[5.0, 0.0], [1.0, 0.0], [3.0, 2.0]])  # 3 shadows × 2 rows
    inside = np.array([[True, False], [False, False], [False, True]])
    scores = pa.lira_offline_scores(np.array([2.0, 1.0]), phi, inside)
    # OUT means: row 0 → (1 + 3) / 2 = 2, row 1 → (0 + 0) / 2 = 0; pooled σ of the OUT
    # residuals (-1, 1, 0, 0) is sqrt(0.5).
    np.testing.assert_allclose(scores, [0.0, 1.0 / math.sqrt(0.5)])


# ------------------------------------------------------------------- gradient inversion


def test_label_inference_is_exact_for_one_record_and_for_distinct_labels():
    x, y = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for i in range(5):
        g = pa.flat(pa.batch_gradient(model, x[i : i + 1], y[i : i + 1]))
        assert pa.infer_labels(g[-10:], 1).tolist() == [int(y[i])]
    pick = [int(torch.nonzero(y == c)[0]) for c in (1, 4, 7)]
    g = pa.flat(pa.batch_gradient(model, x[pick], y[pick]))
    assert pa.infer_labels(g[-10:], 3).tolist() == [1, 4, 7]
    assert pa.label_recovery(torch.tensor([1, 4, 7]), torch.tensor([1, 4, 4])) == pytest.approx(
        2 / 3
    )


def _invert(model, observed, count, seed):
    labels = pa.infer_labels(observed[-10:] / count, count)
    recon = pa.invert_gradients(model, observed, labels, iterations=100,
                                generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return recon, labels


def test_inversion_recovers_one_image_from_a_linear_models_gradient_but_not_from_a_secagg_sum():
    """An unprotected single-record gradient of a linear model: the image comes back (PSNR
    above 25 dB) with its exact label. The secure-aggregation sum with three other silos
    whose record has the same label mixes the images: the same attack does clearly worse."""
    x, y = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    plain, summed = [], []
    for trial in range(2):
        xi, yi = x[trial : trial + 1], y[trial : trial + 1]
        g = pa.flat(pa.batch_gradient(model, xi, yi))
        recon, labels = _invert(model, g, 1, trial)
        assert labels.tolist() == yi.tolist()
        plain.append(pa.match_quality(xi, recon)["psnr"])
        same = torch.nonzero(y == yi[0]).flatten()[1:4]
        total = g + sum(pa.flat(pa.batch_gradient(model, x[j : j + 1], y[j : j + 1]))
                        for j in same)  # fmt: skip
        recon, _ = _invert(model, total, 4, trial)
        summed.append(pa.match_quality(xi, recon)["psnr"])
    assert min(plain) > 25.0
    assert np.mean(summed) < np.mean(plain) - 5.0


def test_inversion_of_the_task_cnn_beats_the_mean_image_on_an_undefended_one_record_update():
    """The benchmark's own pipeline on the digits ``SmallCNN`` at a seeded initialisation:
    the plain update of one record, turned back into its gradient, labels inferred, 100
    Adam steps. Each reconstruction is far better than the data set's mean image (the first
    version matched the update itself, whose sign is opposite, and did far worse)."""
    from tasks import get_task

    x, y = _digits()
    mean_image = x.mean(0, keepdim=True)
    task = get_task("digits")
    for trial in range(2):
        torch.manual_seed(pa.SEED + trial)
        model = task.build_model()
        offsets = np.cumsum([0] + [p.numel() for p in model.parameters()]).tolist()
        xi, yi = x[10 * trial : 10 * trial + 1], y[10 * trial : 10 * trial + 1]
        update, mask, count = pa.server_view(
            "plain", model, xi, yi, [], offsets=offsets, topk_fraction=0.01, sigma=0.0,
            clip=1.0, generator=torch.Generator().manual_seed(trial),
        )  # fmt: skip
        gradient = pa.observed_gradient(update)
        torch.testing.assert_close(gradient, pa.flat(pa.batch_gradient(model, xi, yi)))
        labels = pa.infer_labels(gradient[offsets[-2] : offsets[-1]], count)
        assert labels.tolist() == yi.tolist()
        recon = pa.invert_gradients(model, gradient, labels, mask=mask, iterations=100,
                                    generator=torch.Generator().manual_seed(trial))  # fmt: skip
        quality = pa.match_quality(xi, recon)
        baseline = pa.match_quality(xi, mean_image)["psnr"]
        assert quality["psnr"] > baseline + 8.0, (quality, baseline)
        assert quality["ssim"] > 0.8 and quality["recovered"] == 1.0, quality


def test_verdicts_say_stopped_only_when_the_undefended_attack_worked():
    def mia(mode, auc, target=None, accuracy=0.9):
        return {"target": target or mode, "mode": mode, "lira_auc": auc, "lira_tpr": 0.0,
                "loss_auc": min(auc, 0.5), "test_accuracy": accuracy}  # fmt: skip

    chance = pa.mia_verdicts([mia("none", 0.51), mia("central", 0.50, "central DP ε = 1")])
    assert "no better than chance" in chance[0]
    assert "stopped" not in chance[1] and "shows nothing" in chance[1]
    leaky = pa.mia_verdicts([mia("none", 0.70), mia("central", 0.50, "a"),
                             mia("central", 0.58, "b"), mia("central", 0.69, "c")])  # fmt: skip
    assert "membership leaks" in leaky[0]
    assert "**a stopped" in leaky[1]
    assert "reduced" in leaky[2] and "did not stop" in leaky[2]
    assert "**c did not stop" in leaky[3]
    useless = pa.mia_verdicts([mia("none", 0.70), mia("local", 0.50, "d", accuracy=0.11)])
    assert "**d stopped membership inference only by destroying the model" in useless[1]

    def inv(view, psnr, batch=1):
        return {"view": view, "batch": batch, "psnr": psnr, "ssim": 0.0, "recovered": 0.0,
                "labels": 1.0, "baseline": 11.0}  # fmt: skip

    failing = pa.inversion_verdicts([inv("plain", 5.0), inv("secagg", 5.0)])
    assert "fails even without a defence" in failing[0]
    assert "stopped" not in failing[1] and "shows nothing" in failing[1]
    working = pa.inversion_verdicts([inv("plain", 30.0), inv("int8", 29.0), inv("top-k", 20.0),
                                     inv("local-dp", 11.5)])  # fmt: skip
    assert "reconstructs" in working[0]
    assert "did not stop" in working[1] and "degraded" in working[2]
    assert "stopped image reconstruction" in working[3]


def test_server_views_are_what_each_defence_reveals():
    x, y = _digits(40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    offsets = np.cumsum([0] + [p.numel() for p in model.parameters()]).tolist()
    others = [(x[10:12], y[10:12]), (x[12:14], y[12:14])]
    kw = dict(offsets=offsets, topk_fraction=0.1, sigma=2.0, clip=1.0)

    def view(name, seed=0):
        return pa.server_view(name, model, x[:2], y[:2], others,
                              generator=torch.Generator().manual_seed(seed), **kw)  # fmt: skip

    plain, mask, count = view("plain")
    assert mask is None and count == 2
    torch.testing.assert_close(
        plain, -pa.INVERSION_LR * pa.flat(pa.batch_gradient(model, x[:2], y[:2]))
    )
    top, mask, _ = view("top-k")
    assert int(mask.sum()) == math.ceil(0.1 * 650) and bool((top[~mask] == 0).all())
    int8, _, _ = view("int8")
    assert float((int8 - plain).abs().max()) < float(plain.abs().max()) / 50
    total, _, count = view("secagg")
    assert count == 6
    expected = plain + sum(-pa.INVERSION_LR * pa.flat(pa.batch_gradient(model, a, b))
                           for a, b in others)  # fmt: skip
    torch.testing.assert_close(total, expected)
    noisy_a, _, _ = view("local-dp", 1)
    noisy_b, _, _ = view("local-dp", 2)
    assert not torch.allclose(noisy_a, noisy_b)  # noised
    # Each record's gradient is clipped to 1, so without noise the update's norm ≤ lr · 1.
    no_noise = pa.server_view("local-dp", model, x[:2], y[:2], others,
                              generator=torch.Generator().manual_seed(0),
                              **{**kw, "sigma": 0.0})[0]  # fmt: skip
    assert float(no_noise.norm()) <= pa.INVERSION_LR * 1.0 + 1e-6


# ------------------------------------------------------------------- end to end


NUMBER = re.compile(r"^-?\d+(\.\d+)?%?$")


def _table(doc: str, header_start: str) -> list[list[str]]:
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_run_writes_the_doc_with_numbers_and_merges_a_part(tmp_path):
    out = tmp_path / "privacy-attacks.md"
    assert pa.main(["--quick", "--out", str(out)]) == 0
    doc = out.read_text()
    for heading in (
        "# Privacy attacks",
        "## Membership inference on the released global model",
        "## Gradient inversion against what the server sees of one silo",
        "## What each defence stopped and what it did not",
    ):
        assert heading in doc
    assert "load average" in doc and "Generated by `python -m benchmarks.privacy_attacks" in doc
    assert "{" not in doc and "}" not in doc, "an unformatted placeholder (missing f-string)"
    assert "None" not in doc and "nan" not in doc.lower()
    assert "### Setting `docs`" in doc and "### Setting `leaky`" in doc
    tables = doc.split("### Setting `")[1:]
    mia = []
    for part in tables:
        rows = _table(part, "| released model |")
        assert [r[0] for r in rows] == ["non-private FedAvg", "central DP ε = 4",
                                        "local DP ε = 8"]  # fmt: skip
        mia += rows
    for row in mia:
        for cell in row[2:]:
            assert NUMBER.match(cell), row
            assert 0.0 <= float(cell.rstrip("%")) <= 1.0
    inv = _table(doc, "| what the server sees |")
    assert {r[0] for r in inv} == {"plain", "int8", "top-k", "secagg", "local-dp"}
    for row in inv:
        assert all(NUMBER.match(c) for c in row[1:]), row
    verdicts = [line for line in doc.splitlines() if line.startswith("* ")]
    assert len(verdicts) == len(mia) + len(inv)
    said = (
        "stopped",
        "did not stop",
        "membership leaks",
        "no better than chance",
        "shows nothing",
        "reconstructs",
        "fails even without",
        "degraded",
    )
    assert all(any(s in v for s in said) for v in verdicts), verdicts
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["quick"] and len(data["membership"]) == 6 and data["meta"]["git"]
    assert {r["setting"] for r in data["membership"]} == {"docs", "leaky"}

    # Redo only the inversion part: the membership rows are kept from the report.
    assert pa.main(["--quick", "--parts", "inversion", "--merge", "--out", str(out)]) == 0
    merged = json.loads(out.with_suffix(".json").read_text())
    assert merged["membership"] == data["membership"]
    assert len(merged["inversion"]) == len(data["inversion"])
