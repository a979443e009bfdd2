"""The personalisation methods as pure torch functions on tiny inputs: what each keeps,
what it trains, where Ditto's proximal term pulls, and the silo's per-round history."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fl_app.config import RunConfig
from fl_app.personal_state import KEEP, PersonalHistory, load_personal, save_personal
from fl_app.silo_state import new_lineage
from tasks import get_task
from tasks.base import ArrayDataset
from tasks.models import MLP, SmallCNN
from tasks.personalization import PERSONALIZATION, Local, batch_norm_keys, get_method, head_keys
from tasks.training import train_classifier


def _digits(n: int = 64, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)
    )


def _cfg(method: str, task: str = "digits", **section) -> RunConfig:
    return RunConfig(task=task, personalization={"method": method, **section})


def _model(seed: int = 0, **kwargs) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(**kwargs)


def _equal(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_registry_lists_the_five_methods():
    assert sorted(PERSONALIZATION) == ["ditto", "fedbn", "fedper", "fedrep", "finetune"]
    assert get_method("none") is None


def test_head_is_the_last_linear_layer_or_the_named_prefixes():
    assert head_keys(SmallCNN()) == ["head.weight", "head.bias"]
    assert head_keys(MLP(4)) == ["net.4.weight", "net.4.bias"]
    assert head_keys(MLP(4), "net.2, net.4") == [
        "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"personalization\.head.*names none"):
        head_keys(SmallCNN(), "header")
    with pytest.raises(ValueError, match="selects every parameter"):
        head_keys(SmallCNN(), "features,head")


def test_fedper_keeps_the_head_and_takes_the_body():
    cfg = _cfg("fedper")
    method, task = get_method("fedper"), get_task("digits")
    received, personal_source = _model(0).state_dict(), _model(1)
    personal = {
        k: v.clone() for k, v in personal_source.state_dict().items() if k.startswith("head")
    }
    model = _model(0)
    method.prepare(model, personal)
    state = model.state_dict()
    assert _equal(state, personal, personal)  # its own head
    body = [k for k in state if not k.startswith("head")]
    assert _equal(state, received, body)  # the federation's body
    gen = torch.Generator().manual_seed(0)
    method.train(
        model, Local(task, _digits(), cfg.training, cfg.personalization, gen), proximal_mu=0.0
    )
    kept = method.update(
        model, received, personal, Local(task, _digits(), cfg.training, cfg.personalization, gen)
    )
    assert sorted(kept) == ["head.bias", "head.weight"]
    assert _equal(kept, model.state_dict(), kept)  # the head as trained
    assert not torch.equal(kept["head.weight"], personal["head.weight"])
    # Evaluation: the received model with the silo's head; the received one is unchanged.
    glob = _model(0)
    mine = method.personal_model(
        glob, kept, Local(task, _digits(), cfg.training, cfg.personalization, gen)
    )
    assert _equal(mine.state_dict(), kept, kept)
    assert _equal(glob.state_dict(), received, received)


def test_fedrep_trains_the_head_first_then_only_the_body():
    cfg = _cfg("fedrep", head_epochs=2)
    method, task, data = get_method("fedrep"), get_task("digits"), _digits()
    model, start = _model(0), _model(0).state_dict()
    method.train(
        model,
        Local(task, data, cfg.training, cfg.personalization, torch.Generator().manual_seed(3)),
        proximal_mu=0.0,
    )
    # The head after FedRep is the head after its own phase alone: the body's epochs
    # (which follow, with the same generator) did not touch it.
    head_only = _model(0)
    for name, p in head_only.named_parameters():
        p.requires_grad_(name.startswith("head"))
    task.train(head_only, data, cfg.training.model_copy(update={"local_epochs": 2}),
               generator=torch.Generator().manual_seed(3))  # fmt: skip
    head = ["head.weight", "head.bias"]
    assert _equal(model.state_dict(), head_only.state_dict(), head)
    assert not _equal(model.state_dict(), start, head)
    assert not torch.equal(model.state_dict()["features.0.weight"], start["features.0.weight"])
    assert all(p.requires_grad for p in model.parameters())  # nothing left frozen


def test_fedbn_keeps_every_batch_norm_tensor_and_refuses_a_model_without():
    model = _model(0, batch_norm=True)
    keys = batch_norm_keys(model)
    assert keys == [
        f"features.{i}.{s}" for i in (1, 5)
        for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]  # fmt: skip
    assert batch_norm_keys(SmallCNN()) == []
    # The plain model's layers (and so its seeded initialisation) are unchanged.
    assert _model(0).state_dict().keys() == SmallCNN().state_dict().keys()
    cfg = _cfg("fedbn", task="digits-bn")
    method, task = get_method("fedbn"), get_task("digits-bn")
    received = copy.deepcopy(model.state_dict())
    method.train(
        model,
        Local(task, _digits(), cfg.training, cfg.personalization, torch.Generator().manual_seed(0)),
        proximal_mu=0.0,
    )
    kept = method.update(
        model, received, None, Local(task, _digits(), cfg.training, cfg.personalization, None)
    )
    assert sorted(kept) == sorted(keys)
    assert kept["features.1.num_batches_tracked"] > 0  # its own running statistics
    fresh = _model(5, batch_norm=True)
    method.prepare(fresh, kept)
    assert _equal(fresh.state_dict(), kept, keys)
    with pytest.raises(ValueError, match="digits-bn"):
        method.check(SmallCNN(), cfg.personalization)


def test_the_proximal_term_pulls_towards_the_anchor():
    """One full-batch SGD step without momentum: the proximal term adds −lr·λ·(v − a), so
    the step with it minus the step without it points from v towards the anchor a."""
    data, lr, lam = _digits(16), 0.1, 2.0
    start = _model(0)
    anchor = [p.detach() + 0.5 for p in start.parameters()]
    steps = []
    for mu in (0.0, lam):
        model = copy.deepcopy(start)
        train_classifier(model, data.x, data.y, epochs=1, batch_size=16, learning_rate=lr,
                         momentum=0.0, proximal_mu=mu, proximal_anchor=anchor,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
        steps.append([p.detach() for p in model.parameters()])
    for with_prox, without, v0, a in zip(
        steps[1], steps[0], start.parameters(), anchor, strict=True
    ):
        torch.testing.assert_close(with_prox - without, -lr * lam * (v0.detach() - a))


def test_ditto_trains_its_own_model_and_leaves_the_reply_alone():
    cfg = _cfg("ditto", ditto_lambda=1.0, personal_epochs=2)
    method, task, data = get_method("ditto"), get_task("digits"), _digits()
    received = _model(0).state_dict()
    reply = _model(0)
    method.prepare(reply, None)  # Ditto puts nothing into the model it sends
    assert _equal(reply.state_dict(), received, received)
    task.train(reply, data, cfg.training, generator=torch.Generator().manual_seed(0))
    sent = copy.deepcopy(reply.state_dict())
    mine = method.update(
        reply,
        received,
        None,
        Local(task, data, cfg.training, cfg.personalization, torch.Generator().manual_seed(1)),
    )
    assert _equal(reply.state_dict(), sent, sent)  # the reply is unchanged
    assert not _equal(mine, sent, ["head.weight"]) and not _equal(mine, received, ["head.weight"])

    # A larger λ keeps the personal model closer to the global one.
    def distance(lam: float) -> float:
        section = cfg.personalization.model_copy(update={"ditto_lambda": lam})
        v = method.update(
            reply,
            received,
            None,
            Local(task, data, cfg.training, section, torch.Generator().manual_seed(1)),
        )
        return sum(float((v[k].float() - received[k].float()).norm()) for k in received)

    assert distance(10.0) < distance(0.0)
    evaluated = method.personal_model(
        _model(0), mine, Local(task, data, cfg.training, cfg.personalization, None)
    )
    assert _equal(evaluated.state_dict(), mine, mine)


def test_finetune_trains_a_copy_and_keeps_nothing():
    cfg = _cfg("finetune", finetune_epochs=2)
    method, task = get_method("finetune"), get_task("digits")
    glob = _model(0)
    received = copy.deepcopy(glob.state_dict())
    assert not method.stateful
    assert (
        method.update(
            glob, received, None, Local(task, _digits(), cfg.training, cfg.personalization, None)
        )
        is None
    )
    mine = method.personal_model(
        glob,
        None,
        Local(task, _digits(), cfg.training, cfg.personalization, torch.Generator().manual_seed(0)),
    )
    assert _equal(glob.state_dict(), received, received)  # the global model is untouched
    assert not torch.equal(mine.state_dict()["head.weight"], received["head.weight"])


def test_history_answers_each_round_from_the_state_before_it():
    h = PersonalHistory(new_lineage(), "p0", "ditto")
    states = {r: {"w": torch.full((2,), float(r))} for r in (1, 3, 4, 6)}
    assert h.before(1) is None and h.at(1) is None
    for r, s in states.items():
        h.record(r, s)
    assert len(h.rounds) == KEEP and h.dropped == 1
    assert h.before(4) is states[3] and h.at(4) is states[4]  # a replayed round 4
    assert h.before(5) is states[4] and h.at(5) is states[4]  # not trained in round 5
    with pytest.raises(ValueError, match="needed for round 3 was dropped"):
        h.before(3)  # needs round 1's state, dropped


def test_history_survives_a_new_flower_run_through_the_silo_file(tmp_path):
    node = {"silo-state-dir": str(tmp_path)}
    lineage = new_lineage()
    first = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    h = load_personal(first, lineage, "p2", "fedbn")
    h.record(2, {"features.1.running_mean": torch.arange(3.0),
                 "features.1.num_batches_tracked": torch.tensor(7)})  # fmt: skip
    path = save_personal(first, h)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_personal(first, lineage, "p2", "fedbn")  # from context.state
    second = Context(run_id=2, node_id=1, node_config=node, state=RecordDict(), run_config={})
    resumed = load_personal(second, lineage, "p2", "fedbn")  # from the file
    for got in (again, resumed):
        assert _equal(got.at(2), h.at(2), h.at(2))
        assert got.at(2)["features.1.num_batches_tracked"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"personalization\.method = 'fedbn', not 'ditto'"):
        load_personal(second, lineage, "p2", "ditto")
