"""ClientApp: one silo. Trains and evaluates the task's model on its own partition.

Messages:
* ``query``   → the silo's partition id (the server's roll call before round 1).
* ``train``   → local training from the received global model; replies the new weights,
  ``train-loss``, ``num-examples``, ``local-train-seconds`` (its local training's wall
  time) and a ``meta`` record with the partition id. Under local
  DP the silo's secret randomness and accounting are kept per the config's ``lineage``
  (:mod:`fl_app.silo_state`).
  When the instruction asks for it (``report-loss-before``; q-FedAvg) it adds
  ``train-loss-before``, the received model's loss on the silo's training data.
* ``evaluate``→ metrics of the received global model on the silo's validation split,
  under the task's metric names, and under ``personalization.method`` those of the silo's
  personal model as ``personal-<metric>`` (see :data:`MODEL_METRIC_PREFIX`). The personal
  state lives on the silo, per lineage (:mod:`fl_app.personal_state`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_app import LOG
from fl_app.config import RunConfig
from fl_app.heterogeneity import (
    SimulatedDropout,
    apply_defect,
    drops_out,
    pace,
    silo_profile,
    sim_seconds,
)
from fl_app.personal_state import SiloPersonalization
from fl_app.silo_state import SiloStateStore, silo_lineage
from fl_app.transport import packing_mod
from fl_app.vertical.client import register as register_vertical
from fl_core.records import (
    LOCAL_TRAIN_SECONDS_KEY,
    LOSS_BEFORE_KEY,
    META_KEY,
    REPORT_LOSS_BEFORE_KEY,
)
from fl_core.seeding import derive_seed, seed_everything
from strategies.compression import compress_train_content
from strategies.compression.records import ESTIMATE_STEP_KEY
from strategies.robust.simulation import byzantine_partitions
from strategies.secagg.client import register as register_secagg
from strategies.secagg.client import secagg_mod
from tasks import get_task
from tasks.base import MOMENTS_KEY, ArrayDataset
from tasks.personalization import PERSONAL_PREFIX

app = ClientApp(mods=[packing_mod])  # packed instructions in, packed replies out (fl_app.transport)
register_vertical(app)  # vertical mode's handlers: query.vertical_*, train.vertical_step
register_secagg(app)  # secure aggregation's handlers: query.secagg_*


def silo_partition(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the SuperNode's node config."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise KeyError(
            f"SuperNode node config lacks {exc}; start it with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None


def silo_data(task, cfg: RunConfig, context: Context):
    """This silo's train/validation data: its own source when its node config names one
    (``data-source=…``, e.g. its Blob prefix in a real federation), else its partition of
    the shared source (simulation)."""
    source = context.node_config.get("data-source")
    if source:
        return task.load_silo(str(source), cfg.data, cfg.seed)
    pid, n = silo_partition(context)
    return task.load_partition(pid, n, cfg.data, cfg.seed)


#: One model object per task and process, reused by every message (see :func:`_model`).
_MODELS: dict[str, torch.nn.Module] = {}


def _model(task, cfg: RunConfig) -> torch.nn.Module:
    """A model of ``task`` to load the received weights into: built once per process and
    reused (building one cost ~2 ms per message, more for larger models). Reuse is exact:
    ``load_state_dict`` (strict) overwrites every parameter and buffer, gradients are
    reset to ``None`` and the mode to training, as on a fresh model; the weights a reply
    carries are copied into its ArrayRecord. A ClientApp process handles one message at a
    time (Ray actor, SuperNode, in-process grid), so the model is never shared between two
    messages in flight. Local DP (Opacus wraps the model it trains) gets a fresh model."""
    if cfg.dp.local:
        return task.build_model()
    model = _MODELS.get(task.name)
    if model is None:
        model = _MODELS[task.name] = task.build_model()
    model.zero_grad(set_to_none=True)
    return model.train()


def _setup(msg: Message, context: Context):
    torch.set_num_threads(1)
    cfg = RunConfig.from_flower(context.run_config)
    task = get_task(cfg.task)
    pid, n = silo_partition(context)
    model = _model(task, cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, task, pid, n, model


def _meta(pid: int) -> ConfigRecord:
    return ConfigRecord({"partition-id": pid})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Roll call: this silo's partition id and, for tasks that standardise inputs, the
    per-feature count/sum/sum-of-squares of its training rows (never the rows)."""
    cfg = RunConfig.from_flower(context.run_config)
    task = get_task(cfg.task)
    pid, n = silo_partition(context)
    content = RecordDict({META_KEY: ConfigRecord({"partition-id": pid, "num-partitions": n})})
    moments = task.feature_moments(silo_data(task, cfg, context).train)
    if moments is not None:
        content[MOMENTS_KEY] = MetricRecord(moments)
    return Message(content, reply_to=msg)


def silo_train_data(task, cfg: RunConfig, context: Context, pid: int, n: int, profile):
    """What this silo trains on: its partition's train split with the simulated defect of
    its profile and, for a simulated label-flip attacker, flipped labels."""
    data = silo_data(task, cfg, context)
    train_data = apply_defect(profile, data.train, task.num_classes, cfg.seed, pid)
    if cfg.attack.kind == "label-flip" and pid in byzantine_partitions(
        n, cfg.attack.fraction, cfg.seed
    ):
        # Simulated data poisoning (threat-model tool): this silo learns flipped labels.
        # Padding labels (< 0, sequence tasks) stay padding.
        flipped = np.where(train_data.y >= 0, task.num_classes - 1 - train_data.y, train_data.y)
        train_data = ArrayDataset(train_data.x, flipped)
    return train_data


def _personalization(cfg: RunConfig, task, context: Context, pid: int, config):
    """This message's personalisation (fl_app.personal_state), or ``None`` without one."""
    if cfg.personalization.method == "none":
        return None
    return SiloPersonalization(cfg, task, context, pid, config)


@app.train(mods=[secagg_mod])  # masks the reply when the message asks for secure aggregation
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this silo's partition (with the silo's personal
    parts first, under a personalisation method that keeps some)."""
    started = time.perf_counter()
    cfg, task, pid, n, model = _setup(msg, context)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    profile = silo_profile(cfg.simulation, cfg.seed, pid, n, context.node_config)
    if drops_out(profile, cfg.seed, pid, server_round):
        raise SimulatedDropout(
            f"silo {pid} dropped out of round {server_round} (simulation.dropout = "
            f"{profile.dropout})"
        )
    train_data = silo_train_data(task, cfg, context, pid, n, profile)
    # The received model's loss on what this silo trains on (q-FedAvg's F_k(w)); the
    # evaluation draws no random numbers, so training below is unchanged.
    loss_before = (
        task.evaluate(model, train_data)["loss"] if config.get(REPORT_LOSS_BEFORE_KEY) else None
    )
    personal = _personalization(cfg, task, context, pid, config)
    if personal is not None:
        personal.before_train(model)
    generator = seed_everything(derive_seed(cfg.seed, "train", pid, server_round))
    proximal_mu = float(config.get("proximal-mu", 0.0))
    train_started = time.perf_counter()
    if cfg.dp.local:
        metrics = _train_local_dp(
            model, train_data, task, cfg, context, pid, server_round, config, generator
        )
    elif personal is not None:
        metrics = personal.train(model, train_data, proximal_mu=proximal_mu, generator=generator)
    else:
        metrics = task.train(
            model, train_data, cfg.training, proximal_mu=proximal_mu, generator=generator
        )
    if personal is not None:
        personal.after_train(model, train_data)
    # The silo's own training work (wall seconds of its local epochs), apart from the
    # round's messaging: benchmarks.centralized sets it against the centralised loop.
    metrics[LOCAL_TRAIN_SECONDS_KEY] = time.perf_counter() - train_started
    metrics["num-examples"] = len(train_data)
    if loss_before is not None:
        metrics[LOSS_BEFORE_KEY] = loss_before
    if cfg.simulation.speed_spread > 1 or "slowness" in context.node_config:
        seconds = sim_seconds(cfg.simulation, profile, len(train_data), cfg.training.local_epochs)
        metrics["sim-seconds"] = seconds
        if cfg.simulation.sleep:
            pace(seconds, started)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(metrics),
            META_KEY: _meta(pid),
        }
    )
    if cfg.compression.method != "none":
        content = _compress(content, msg, cfg, context, pid, server_round)
    return Message(content, reply_to=msg)


def _compress(content, msg: Message, cfg: RunConfig, context: Context, pid: int, server_round: int):
    """The reply with its model delta compressed (strategies.compression); the error
    feedback state (residual, or EF21 estimate for top-k) lives in the node's persistent
    state. A top-k warm-up round (``compression.topk-warmup-rounds``) uploads with the
    warm-up codec, without error feedback: top-k's starts after the warm-up."""
    spec, warmup = cfg.compression.round_spec(server_round)
    if spec.scheme == "none":  # a dense float32 warm-up round: the reply as it is
        return content
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "compress", pid, server_round))
    server_step = msg.content["config"].get(ESTIMATE_STEP_KEY)
    return compress_train_content(
        content,
        msg.content["arrays"],
        spec,
        state=context.state,
        error_feedback=cfg.compression.error_feedback and not warmup,
        generator=generator,
        feedback=cfg.compression.topk_feedback,
        server_step=None if server_step is None else int(server_step),
    )


def _train_local_dp(
    model, data, task, cfg: RunConfig, context: Context, pid: int, server_round: int, config,
    seeded: torch.Generator,
) -> dict:  # fmt: skip
    """DP-SGD with Opacus. Batches and noise come from the silo's secret generators and
    the accountant history from its state file (fl_app.silo_state), both per lineage: the
    reported ``dp-epsilon`` is cumulative over the run, resumes included, and a replayed
    round gets fresh noise and is accounted again. Under ``dp.reproducible-noise`` the
    ``seeded`` generator (from seed, partition, round) drives both instead: research only,
    the server can regenerate the noise."""
    # Lazy: Opacus is heavy (~5 s to import) and only local-DP runs train with it (today
    # fl_app.config still loads it, through strategies.privacy.config).
    from strategies.privacy.local import make_private_trainer

    budget = (
        {"target_epsilon": cfg.dp.local_target_epsilon,
         "epochs": cfg.training.local_epochs * cfg.num_server_rounds}
        if cfg.dp.local_target_epsilon > 0
        else {"noise_multiplier": cfg.dp.local_noise_multiplier}
    )  # fmt: skip
    store = SiloStateStore.for_node(context.node_config)
    state = store.load(silo_lineage(config, context), f"p{pid}")
    if cfg.dp.reproducible_noise:
        generators = {"generator": seeded}
    else:
        generators = {"generator": state.sampling, "noise_generator": state.noise}
    if task.class_weights(data) is not None:
        _note_class_weights_off(task.name)
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
        accountant_state=state.accountant,
        mechanism=cfg.dp.accountant,
        class_weights=None,  # label counts are outside the DP bound (strategies.privacy.local)
        **generators,
        **budget,
    ) as trainer:
        metrics = trainer.train(cfg.training.local_epochs)
        state.accountant = trainer.accountant_state()
    # This silo's own statement; the round reports the minimum over silos.
    metrics["dp-private"] = 0.0 if cfg.dp.reproducible_noise else 1.0
    state.rounds.append(server_round)
    store.save(state)  # before the reply leaves: a lost reply is still accounted
    return metrics


_CLASS_WEIGHTS_NOTED: set[str] = set()


def _note_class_weights_off(task_name: str) -> None:
    """Log once per task and process that local DP trains without class weights."""
    if task_name not in _CLASS_WEIGHTS_NOTED:
        _CLASS_WEIGHTS_NOTED.add(task_name)
        LOG.warning(
            "[fedsilo] local DP: task '%s' trains without its class weights (weights from "
            "this silo's label counts are not covered by the DP guarantee)",
            task_name,
        )


#: Each model a silo evaluates, and the prefix of its metrics in the evaluate reply. The
#: global model keeps the task's names (``accuracy``, ``loss``, …); the silo's personal
#: model (``personalization.method``) reports under ``personal-`` (docs/personalization.md).
MODEL_METRIC_PREFIX = {"global": "", "personal": PERSONAL_PREFIX}


def evaluate_models(task, models: dict[str, torch.nn.Module], val: ArrayDataset) -> dict:
    """The task's metrics of each of ``models`` (by :data:`MODEL_METRIC_PREFIX` name) on
    the silo's validation split ``val``, prefixed by the model's prefix."""
    metrics: dict[str, float] = {}
    for name, model in models.items():
        prefix = MODEL_METRIC_PREFIX[name]
        metrics.update({prefix + k: v for k, v in task.evaluate(model, val).items()})
    return metrics


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this silo's validation split and, under a
    personalisation method, the silo's personal model too."""
    cfg, task, pid, n, model = _setup(msg, context)
    data = silo_data(task, cfg, context)
    models = {"global": model}
    personal = _personalization(cfg, task, context, pid, msg.content["config"])
    if personal is not None:
        profile = silo_profile(cfg.simulation, cfg.seed, pid, n, context.node_config)
        train_data = silo_train_data(task, cfg, context, pid, n, profile)
        models["personal"] = personal.personal_model(model, train_data)
    metrics = evaluate_models(task, models, data.val)
    metrics["num-examples"] = len(data.val)
    return Message(
        RecordDict({"metrics": MetricRecord(metrics), META_KEY: _meta(pid)}), reply_to=msg
    )


def _warm_registries() -> None:
    """Resolve the default run config once, at import: it loads the registries every
    message's config reads (their modules and entry points). A ClientApp process would do
    it on its first message anyway; done here, a warm SuperNode's zygote (which imports this
    module) holds them and every task it forks inherits them instead of scanning the
    installed packages' entry points again (adapters/supernode)."""
    RunConfig.from_flower({})


_warm_registries()
