"""Local DP-SGD with real Opacus on the breast-cancer task's silo data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.rdp import RdpAccountant
from flwr.app import ConfigRecord, RecordDict
from opacus.validators import ModuleValidator
from torch import nn

from fl_app.config import RunConfig
from strategies.privacy.accountant import FederatedAccountant
from strategies.privacy.local import LOCAL_DP_STATE_KEY, make_private_trainer
from strategies.privacy.randomness import secret_generator
from tasks import get_task
from tasks.base import DataSection
from tasks.models import MLP, SmallCNN

DELTA = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def silo():
    task = get_task("breast-cancer")
    return task, task.load_partition(0, 2, DataSection(), seed=42)


def fresh_model(task, data):
    torch.manual_seed(0)
    model = task.build_model()
    task.set_input_scaling(model, [task.feature_moments(data)])
    return model


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def one_round(task, model, data, state, seed, **kwargs):
    """What the ClientApp does in a round: build, train, store the accountant state."""
    params = {"batch_size": 16, "max_grad_norm": 1.0, "delta": DELTA, "noise_multiplier": 1.0}
    params.update(kwargs)
    epochs = params.pop("train_epochs", 2)
    restored = dict(state[LOCAL_DP_STATE_KEY]) if LOCAL_DP_STATE_KEY in state else None
    with make_private_trainer(
        model, sgd(model), data, accountant_state=restored, generator=seed, **params
    ) as trainer:
        metrics = trainer.train(epochs)
        state[LOCAL_DP_STATE_KEY] = ConfigRecord(trainer.accountant_state())
        return trainer, metrics


def test_models_pass_opacus_module_validator():
    assert ModuleValidator.validate(SmallCNN(), strict=False) == []
    assert ModuleValidator.validate(MLP(30), strict=False) == []


def test_two_rounds_accumulate_epsilon_through_persistent_state(silo):
    task, part = silo
    model = fresh_model(task, part.train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = RecordDict()  # the node's context.state

    trainer1, m1 = one_round(task, model, part.train, state, seed=1)
    steps_per_epoch = trainer1.steps_per_epoch
    assert steps_per_epoch == int(np.ceil(len(part.train) / 16))
    assert m1["dp-steps"] == 2 * steps_per_epoch
    assert np.isfinite(m1["train-loss"]) and m1["dp-skipped"] == 0.0
    assert 0 < m1["dp-epsilon"] < np.inf

    # The model trained in place, kept its keys, and Opacus' hooks are gone.
    after = model.state_dict()
    assert list(after) == list(before)
    assert not torch.equal(after["net.0.weight"], before["net.0.weight"])
    torch.testing.assert_close(after["standardize.mean"], before["standardize.mean"])
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not model._forward_hooks and not model.net[0]._forward_hooks

    _, m2 = one_round(task, model, part.train, state, seed=2)
    assert m2["dp-steps"] == 4 * steps_per_epoch
    assert m2["dp-epsilon"] > m1["dp-epsilon"]

    # A fresh accountant given the combined history reports the same ε …
    combined = FederatedAccountant("rdp")
    combined.load_state_dict(dict(state[LOCAL_DP_STATE_KEY]))
    assert combined.history == [(1.0, 1 / steps_per_epoch, 4 * steps_per_epoch)]
    assert m2["dp-epsilon"] == pytest.approx(combined.epsilon(DELTA))
    # … and so does an independent implementation (Google's dp-accounting), within 1 %.
    independent = RdpAccountant()
    independent.compose(
        PoissonSampledDpEvent(1 / steps_per_epoch, GaussianDpEvent(1.0)), 4 * steps_per_epoch
    )
    assert m2["dp-epsilon"] == pytest.approx(independent.get_epsilon(DELTA), rel=0.01)


def test_dp_sgd_learns_the_task(silo):
    task, part = silo
    model = fresh_model(task, part.train)
    with make_private_trainer(
        model,
        sgd(model),
        part.train,
        batch_size=16,
        max_grad_norm=1.0,
        delta=DELTA,
        noise_multiplier=0.5,
        generator=0,
    ) as trainer:
        trainer.train(3)
    assert task.evaluate(model, part.val)["accuracy"] > 0.85


def test_same_seed_same_model(silo):
    task, part = silo
    models = []
    for _ in range(2):
        model = fresh_model(task, part.train)
        one_round(task, model, part.train, RecordDict(), seed=7, train_epochs=1)
        models.append(model.state_dict())
    for key in models[0]:
        torch.testing.assert_close(models[0][key], models[1][key])


def test_target_epsilon_is_calibrated_and_never_exceeded(silo):
    task, part = silo
    model = fresh_model(task, part.train)
    state = RecordDict()
    plan = {"noise_multiplier": None, "target_epsilon": 2.0, "epochs": 4, "train_epochs": 2}
    trainer, m1 = one_round(task, model, part.train, state, seed=1, **plan)
    assert trainer.noise_multiplier > 0
    _, m2 = one_round(task, model, part.train, state, seed=2, **plan)
    assert m1["dp-epsilon"] < m2["dp-epsilon"] <= 2.0
    assert m2["dp-epsilon"] >= 2.0 - 0.02  # the planned run ends at the target
    # A third, unplanned round would exceed the budget: skipped, model unchanged.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, m3 = one_round(task, model, part.train, state, seed=3, **plan)
    assert m3["dp-skipped"] == 1.0 and m3["dp-epsilon"] == m2["dp-epsilon"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_small_cnn_trains_on_images():
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, size=64)
    model = SmallCNN()
    with make_private_trainer(
        model,
        sgd(model),
        (x, y),
        batch_size=16,
        max_grad_norm=1.0,
        delta=1e-3,
        noise_multiplier=1.0,
        generator=0,
    ) as trainer:
        metrics = trainer.train(1)
    assert np.isfinite(metrics["train-loss"]) and metrics["dp-epsilon"] > 0


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(x))


def _data(n=50):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, size=n)


def test_incompatible_model_is_refused_with_the_fix():
    model = WithBatchNorm()
    with pytest.raises(ValueError, match=r"not compatible with Opacus.*BatchNorm.*GroupNorm"):
        make_private_trainer(
            model,
            sgd(model),
            _data(),
            batch_size=8,
            max_grad_norm=1.0,
            delta=1e-3,
            noise_multiplier=1.0,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_grad_norm": 0.0}, "max_grad_norm must be a finite number > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"noise_multiplier": None, "target_epsilon": 0.0, "epochs": 3}, "target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": -2.0, "epochs": 3}, "target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": 2.0}, "epochs"),
        ({"target_epsilon": 2.0, "epochs": 3}, "exactly one of noise_multiplier"),
        ({"noise_multiplier": None}, "exactly one of noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier must be ≥ 0"),
        ({"delta": 0.05}, r"delta = 0.05 is not below 1/n_records = 1/50"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs, message):
    model = MLP(4)
    params = {"batch_size": 8, "max_grad_norm": 1.0, "delta": 1e-3, "noise_multiplier": 1.0}
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_private_trainer(model, sgd(model), _data(), **params)


def test_empty_data_is_refused():
    model = MLP(4)
    x, y = _data()
    with pytest.raises(ValueError, match="empty"):
        make_private_trainer(
            model,
            sgd(model),
            (x[:0], y[:0]),
            batch_size=8,
            max_grad_norm=1.0,
            delta=1e-3,
            noise_multiplier=1.0,
        )


def test_without_a_generator_batches_and_noise_are_secret_and_differ_per_run(silo):
    """The default draws both generators from OS entropy: the same data, model and
    settings give different models (a seeded run gives the same one, see above)."""
    task, part = silo
    models = []
    for _ in range(2):
        model = fresh_model(task, part.train)
        one_round(task, model, part.train, RecordDict(), seed=None, train_epochs=1)
        models.append(model.state_dict())
    assert not torch.equal(models[0]["net.0.weight"], models[1]["net.0.weight"])


def test_explicit_noise_generator_drives_the_noise_and_continues_across_rounds(silo):
    """The ClientApp's path: the silo's own sampling and noise generators, kept between
    rounds. Restored copies of their states reproduce a round exactly; continuing the
    live generators gives fresh noise."""
    from strategies.privacy.randomness import generator_state, restore_generator

    task, part = silo
    sampling, noise = secret_generator(), secret_generator()
    saved = [generator_state(sampling), generator_state(noise)]
    runs = []
    for gens in ((sampling, noise), tuple(restore_generator(s) for s in saved), (sampling, noise)):
        model = fresh_model(task, part.train)
        with make_private_trainer(
            model, sgd(model), part.train, batch_size=16, max_grad_norm=1.0, delta=DELTA,
            noise_multiplier=1.0, generator=gens[0], noise_generator=gens[1],
        ) as trainer:  # fmt: skip
            trainer.train(1)
        runs.append(model.state_dict()["net.0.weight"])
    assert not torch.equal(runs[0], runs[2])  # the live generators moved on: fresh noise
    # A restored copy of the state before round 1 replays round 1 exactly.
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(
    ("generators", "message"),
    [
        ({"generator": 3, "noise_generator": "g"}, "noise_generator needs generator"),
        ({"generator": None, "noise_generator": "g"}, "noise_generator needs generator"),
        ({"generator": "same", "noise_generator": "same"}, "two distinct generators"),
    ],
)
def test_noise_generator_needs_its_own_sampling_generator(generators, message):
    model = MLP(4)
    shared = torch.Generator()
    resolved = {
        k: (shared if v == "same" else torch.Generator() if v == "g" else v)
        for k, v in generators.items()
    }
    with pytest.raises(ValueError, match=message):
        make_private_trainer(
            model, sgd(model), _data(), batch_size=8, max_grad_norm=1.0, delta=1e-3,
            noise_multiplier=1.0, **resolved,
        )  # fmt: skip


def test_fraud_trains_without_class_weights_under_local_dp(tmp_path, caplog, monkeypatch):
    """The ClientApp's local-DP round on a fraud silo equals DP-SGD without class weights
    on the same batches and noise (dp-reproducible-noise makes both derivable here), not
    DP-SGD with the weights from the silo's label counts; it says so once."""
    from flwr.app import ArrayRecord, ConfigRecord, Message

    import fl_app.client_app as client_module
    from fl_app.inprocess import InProcessGrid
    from fl_app.silo_state import new_lineage
    from fl_core.seeding import derive_seed, seed_everything

    cfg = RunConfig.from_flower({
        **RunConfig().to_flower(), "task": "fraud", "dp.local": True, "training.local-epochs": 1,
        "dp.reproducible-noise": True, "num-server-rounds": 1, "seed": 3,
    })  # fmt: skip
    task = get_task("fraud")
    grid = InProcessGrid(client_module.app, cfg.to_flower(), 30,
                         node_configs=[{"silo-state-dir": str(tmp_path)}] * 30)  # fmt: skip
    data = client_module.silo_data(task, cfg, grid.contexts[1001]).train
    assert task.class_weights(data)[1] > 2.0  # the weights the silo would otherwise use
    torch.manual_seed(0)
    sent = task.build_model()
    task.set_input_scaling(sent, [task.feature_moments(data)])
    arrays = ArrayRecord(sent.state_dict())

    def reference(class_weights):
        model = task.build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        seeded = seed_everything(derive_seed(cfg.seed, "train", 0, 1))
        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.training.learning_rate, momentum=cfg.training.momentum
        )
        with make_private_trainer(
            model,
            optimizer,
            data,
            batch_size=cfg.training.batch_size,
            max_grad_norm=cfg.dp.max_grad_norm,
            delta=cfg.dp.target_delta,
            noise_multiplier=cfg.dp.local_noise_multiplier,
            generator=seeded,
            class_weights=class_weights,
        ) as trainer:
            trainer.train(1)
        return model.state_dict()

    monkeypatch.setattr(client_module, "_CLASS_WEIGHTS_NOTED", set())
    config = ConfigRecord({"server-round": 1, "lineage": new_lineage()})
    with caplog.at_level("WARNING"):
        for _ in range(2):
            message = Message(RecordDict({"arrays": arrays, "config": config}),
                              dst_node_id=1001, message_type="train")  # fmt: skip
            (reply,) = grid.send_and_receive([message])
            assert not reply.has_error(), reply.error.reason
    trained = reply.content["arrays"].to_torch_state_dict()
    unweighted, weighted = reference(None), reference(task.class_weights(data))
    for key, value in unweighted.items():
        assert torch.equal(trained[key], value), key
    assert not torch.equal(trained["net.0.weight"], weighted["net.0.weight"])
    notes = [r for r in caplog.records if "trains without its class weights" in r.getMessage()]
    assert len(notes) == 1
