"""One federated run on any Flower ``Grid``: the body of the ServerApp.

``run_federation(grid, cfg)`` is what ``flwr run`` executes (through
:mod:`fl_app.server_app`) and what the in-process grid of the benchmarks executes, so
both run exactly the same code: roll call, model init and input scaling, the strategy
inside its wrappers (attack simulation, update validation, seeded sampling, reporting),
server-side evaluation after every round, and the run directory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fl_app import LOG, VERSION
from fl_app.audit import AUDIT_FILE, AuditLog, update_sha256
from fl_app.checkpointing import (
    CHECKPOINT_NAME,
    checkpoint_bytes,
    find_resume_point,
    settings_hash,
)
from fl_app.config import RunConfig
from fl_app.contribution import scores_reporter, utility_fn, write_contributions
from fl_app.heterogeneity import noisy_partitions
from fl_app.onnx_export import export_at_end
from fl_app.reliability import (
    QuorumError,
    Rejections,
    ReliableRounds,
    RollCallError,
    StragglerGrid,
    start_rounds,
)
from fl_app.runs import attach_run_log, detach_run_log
from fl_app.silo_state import LINEAGE_KEY, new_lineage
from fl_app.sinks import (
    DP_PRIVATE_KEY,
    ConsoleSink,
    MetricsSink,
    RunDirSink,
    Sinks,
    privacy_status,
    tracking_sinks,
)
from fl_app.stores import open_checkpoint_store
from fl_core.records import META_KEY, REPORT_LOSS_BEFORE_KEY
from fl_core.seeding import derive_seed, seed_everything
from strategies import STRATEGIES, build_strategy
from strategies.compression import CompressedUpdates
from strategies.contribution.wrapper import ContributionScores
from strategies.robust.collapse import collapse_warnings
from strategies.robust.defaults import PreAggregatorChoice
from strategies.robust.factories import pre_aggregator, pre_aggregator_choice
from strategies.robust.registry import RULES
from strategies.robust.simulation import SimulatedAttack, byzantine_partitions, model_attacks
from strategies.round_state import RoundState, share_round_state
from strategies.secagg import SecureAggregation
from strategies.secagg.client import SECAGG_STEPS
from strategies.selection import GUARD, Selection, make_policy
from strategies.selection.wrapper import ParticipantSelection
from strategies.traffic import TrafficMeter
from strategies.wrappers import RoundReporter, SeededSampling, ValidatedUpdates
from tasks import Task, get_task
from tasks.base import MOMENTS_KEY
from tasks.personalization import PERSONAL_PREFIX


def roll_call(grid: Grid, cfg: RunConfig) -> tuple[dict[int, int], list[dict]]:
    """Wait for ``sampling.min-available-nodes`` SuperNodes, then ask each for its partition id
    (and, for tabular tasks, its summed feature moments).

    Returns ``({node_id: partition_id}, [moments, …])``; the roster makes sampling and
    aggregation order seeded and independent of node ids. A silo whose reply is an error
    is left out (and logged); when no silo answers, raises :class:`RollCallError` with the
    silos' own reasons (e.g. each refused the run config).
    """
    deadline = time.monotonic() + cfg.sampling.round_timeout
    while len(node_ids := list(grid.get_node_ids())) < cfg.sampling.min_available_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(node_ids)} SuperNodes connected within sampling.round-timeout="
                f"{cfg.sampling.round_timeout}s; sampling.min-available-nodes="
                f"{cfg.sampling.min_available_nodes}"
            )
        time.sleep(0.5)
    messages = [
        Message(RecordDict({}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    roster: dict[int, int] = {}
    moments: list[dict] = []
    refusals: dict[str, list[int]] = {}
    for reply in grid.send_and_receive(messages, timeout=cfg.sampling.round_timeout):
        if reply.has_error():
            LOG.warning(
                "roll call: node %d failed: %s", reply.metadata.src_node_id, reply.error.reason
            )
            refusals.setdefault(reply.error.reason, []).append(reply.metadata.src_node_id)
            continue
        roster[reply.metadata.src_node_id] = int(reply.content[META_KEY]["partition-id"])
        if MOMENTS_KEY in reply.content:
            moments.append(dict(reply.content[MOMENTS_KEY]))
    if not roster:
        raise RollCallError(refusals, asked=len(messages))
    LOG.info("[fedsilo] roll call: %d silos, partitions %s", len(roster), sorted(roster.values()))
    return roster, moments


def warn_if_rule_collapses(cfg: RunConfig, num_silos: int) -> list[str]:
    """Log (and return) a warning for each condition of the robustness sweep under which
    the chosen rule collapsed and that this run meets (:mod:`strategies.robust.collapse`).
    The Byzantine fraction is ``robust.num-byzantine`` of the silos, or the simulated
    ``attack.fraction`` if larger; the skew is the simulation partitioner's."""
    fraction = cfg.robust.num_byzantine / num_silos if num_silos else 0.0
    if cfg.attack.kind != "none":
        fraction = max(fraction, cfg.attack.fraction)
    iid = cfg.data.partitioner == "iid"
    alpha = cfg.data.dirichlet_alpha if cfg.data.partitioner == "dirichlet" else None
    messages = collapse_warnings(cfg.strategy, pre_aggregator(cfg), fraction, alpha, iid=iid)
    for message in messages:
        LOG.warning("[fedsilo] %s", message)
    return messages


def log_pre_aggregator(cfg: RunConfig) -> PreAggregatorChoice | None:
    """For a strategy that takes a pre-aggregator (our robust rules), log (and return)
    the one this run uses and, for ``robust.pre-aggregator = "auto"``, why."""
    if cfg.strategy not in RULES:
        return None
    choice = pre_aggregator_choice(cfg)
    if choice.auto:
        LOG.info("[fedsilo] robust.pre-aggregator 'auto' → '%s' for %s: %s",
                 choice.value, cfg.strategy, choice.reason)  # fmt: skip
    else:
        LOG.info("[fedsilo] robust.pre-aggregator '%s' for %s", choice.value, cfg.strategy)
    return choice


def make_run_dir(cfg: RunConfig, kind: str = "") -> Path:
    """``<output.run-dir>/<UTC time>-<task>-<kind>-<config hash>`` (created); ``kind`` is
    the strategy unless given (vertical runs: ``"vertical"``)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = Path(cfg.output.run_dir).expanduser().resolve() / (
        f"{stamp}-{cfg.task}-{kind or cfg.strategy}-{cfg.fingerprint()}"
    )
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def server_evaluator(
    task: Task,
    cfg: RunConfig,
    sinks: MetricsSink,
    run_dir: Path,
    strategy: Strategy | None = None,
    audit: AuditLog | None = None,
    lineage: str | None = None,
):
    """Flower ``evaluate_fn``, called with the new global model after every round: reports
    its metrics on the server's held-out test set, then checkpoints the round (model,
    ``strategy``'s state, RNG states, the run's ``lineage``; atomically, verified by sha256; see
    fl_app.checkpointing and fl_app.stores) and audits the checkpoint."""
    test = task.load_test(cfg.data, cfg.seed)
    model = task.build_model()
    store = open_checkpoint_store(cfg.output.checkpoint_uri or str(run_dir / "checkpoints"))
    # End of the previous round (Flower calls this after round 0's evaluation, then after
    # every round; a resumed run's first call is its first new round).
    round_ended = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = task.evaluate(model, test)
        metrics["num-examples"] = len(test)
        digest = store.save(
            CHECKPOINT_NAME, checkpoint_bytes(server_round, arrays, cfg, strategy, lineage)
        )
        if audit is not None:
            audit.record("checkpoint", round=server_round, sha256=digest)
        now = time.perf_counter()
        if server_round > 0:  # round wall time: both silo phases, aggregation, this, checkpoint
            metrics["round-seconds"] = now - round_ended[0]
        round_ended[0] = now
        sinks.log_metrics(server_round, "server", metrics)
        return MetricRecord(metrics)

    return evaluate


def root_update_fn(task: Task, cfg: RunConfig) -> Callable[[ArrayRecord, int], ArrayRecord]:
    """The server's own update for FLTrust: the global model trained by the task on
    ``robust.fltrust-root-size`` clean rows the server holds (:meth:`Task.load_root`),
    seeded by (seed, round), not by a counter, so a resumed run trains the same."""
    root = task.load_root(cfg.data, cfg.seed, cfg.robust.fltrust_root_size)

    def server_update(global_arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        model = task.build_model()
        model.load_state_dict(global_arrays.to_torch_state_dict())
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "fltrust", server_round))
        task.train(model, root, cfg.training, generator=generator)
        return ArrayRecord(model.state_dict())

    return server_update


def central_dp(strategy: Strategy, cfg: RunConfig, num_silos: int, model) -> Strategy:
    """Wrap ``strategy`` in DP-FedAvg with its accountant (and budget) when
    ``dp.central`` is on; the innermost wrapper, so it sees exactly what is aggregated.

    The noise (and, with ``dp.sampling-amplification``, the secret Poisson sampling) comes
    from OS entropy; its generator state is kept in the server checkpoint only. Under the
    research key ``dp.reproducible-noise`` both are seeded from the public ``seed``
    instead, and the run is marked not private (:func:`fl_app.sinks.privacy_status`).
    """
    if not cfg.dp.central:
        return strategy
    # Lazy: strategies.privacy imports Opacus (heavy), which only DP runs need (today
    # fl_app.config still loads it, through strategies.privacy.config).
    from strategies.privacy import AdaptiveClipping, DPFedAvg, PrivacyBudget

    rate = cfg.sampling.fraction_train if cfg.dp.sampling_amplification else 1.0
    budget = (
        PrivacyBudget(cfg.dp.target_epsilon, cfg.dp.target_delta, n_records=num_silos)
        if cfg.dp.target_epsilon > 0
        else None
    )
    sigma = cfg.dp.noise_multiplier
    if budget is not None:
        sigma = budget.plan(
            cfg.dp.budget_mode,
            sample_rate=rate,
            rounds=cfg.num_server_rounds,
            noise_multiplier=None if cfg.dp.budget_mode == "calibrate" else cfg.dp.noise_multiplier,
            mechanism=cfg.dp.accountant,
        )
        LOG.info(
            "[fedsilo] central DP: budget ε=%g δ=%g (%s), σ=%.4f",
            cfg.dp.target_epsilon,
            cfg.dp.target_delta,
            cfg.dp.budget_mode,
            sigma,
        )
    adaptive = (
        AdaptiveClipping(cfg.dp.target_quantile, cfg.dp.clip_learning_rate)
        if cfg.dp.adaptive_clipping
        else None
    )
    noise = sampling = None  # None = DPFedAvg seeds them from os.urandom
    if cfg.dp.reproducible_noise:
        noise = torch.Generator().manual_seed(derive_seed(cfg.seed, "dp-noise"))
        sampling = torch.Generator().manual_seed(derive_seed(cfg.seed, "dp-sampling"))
    if cfg.dp.sampling_amplification:
        # DP-FedAvg draws the Poisson cohort itself among all silos the strategy addresses.
        strategy.fraction_train = 1.0
    return DPFedAvg(
        strategy,
        noise_multiplier=sigma,
        clip_norm=cfg.dp.clip_norm,
        delta=cfg.dp.target_delta,
        generator=noise,
        mechanism=cfg.dp.accountant,
        budget=budget,
        adaptive=adaptive,
        trained_keys=[name for name, _ in model.named_parameters()],
        sampling_amplification=cfg.dp.sampling_amplification,
        sample_rate=cfg.sampling.fraction_train if cfg.dp.sampling_amplification else None,
        num_clients=num_silos,
        sampling_generator=sampling,
    )


def _with_score(pid: int, score: float | None) -> str:
    return f"{pid}" if score is None or not math.isfinite(score) else f"{pid}({score:.3g})"


def selection_reporter(
    roster: Mapping[int, int], sinks: MetricsSink, audit: AuditLog | None
) -> Callable[[Selection], None]:
    """Reports each round's selection: the audit log gets the chosen silos and the reason
    for each; every silo of the roster gets the per-silo metrics ``selected`` (1/0) and,
    when chosen, ``selection-score`` (the policy's score; absent when it has none)."""

    def report(selection: Selection) -> None:
        if audit is not None:
            audit.record(
                "selection",
                round=selection.round,
                partitions=list(selection.partitions),
                reasons={str(p): selection.reasons.get(p, "") for p in selection.partitions},
            )
        chosen = set(selection.partitions)
        silos = sorted(set(roster.values()))
        guarded = [
            p for p in selection.partitions if selection.reasons.get(p, "").startswith(GUARD)
        ]
        scores = {selection.scores.get(p) for p in selection.partitions}
        shown = (
            "(all)"
            if len(chosen) == len(silos)
            else " ".join(
                # A score that is the same for every silo (uniform random) says nothing.
                _with_score(p, selection.scores.get(p) if len(scores) > 1 else None)
                for p in selection.partitions
            )
        )
        LOG.info(
            "[fedsilo] round %d selection: %d of %d silos %s%s",
            selection.round,
            len(chosen),
            len(silos),
            shown,
            f" (fairness guard: {guarded})" if guarded else "",
        )
        for pid in silos:
            values = {"selected": float(pid in chosen)}
            score = selection.scores.get(pid)
            if score is not None and math.isfinite(score):
                values["selection-score"] = float(score)
            sinks.log_silo_metrics(selection.round, "selection", pid, values)

    return report


def _layer(strategy: Strategy, cls: type[Strategy]) -> Strategy | None:
    """The first layer of type ``cls`` in a chain of wrappers, or ``None``."""
    while not isinstance(strategy, cls):
        if (inner := getattr(strategy, "__dict__", {}).get("inner")) is None:
            return None
        strategy = inner
    return strategy


def wrap_strategy(
    strategy: Strategy,
    cfg: RunConfig,
    roster: dict[int, int],
    sinks: MetricsSink,
    audit: AuditLog | None = None,
    utility: Callable[[ArrayRecord], float] | None = None,
) -> Strategy:
    """The app's wrappers around a registered strategy, outermost first: reliability
    (payload limit, quorum and retries, audit log; fl_app.reliability), reporting,
    traffic metering, decoding of compressed updates, traffic metering of the decoded
    replies, secure aggregation or attack simulation (if configured), participant
    selection, update validation, contribution scoring (if configured, with ``utility``
    the server-side value of a candidate model: :func:`fl_app.contribution.utility_fn`),
    seeded sampling. Built from the inside out: each wrapper gets its finished inner.
    Every layer reads one :class:`strategies.round_state.RoundState` (the roster, the
    round's global model and instructions), which reliability records."""
    rejections = Rejections()  # validation (inner) fills it, reliability (outer) audits it
    sizes: dict = {}  # the two traffic meters measure a reply the decoder kept as is once
    # The round's state, kept once: reliability (outermost) records each round into it,
    # every other layer reads it (strategies.round_state).
    state = RoundState(roster)
    share_round_state(strategy, state)  # the strategy (and central DP), built before
    wrapped: Strategy = SeededSampling(strategy, cfg.seed, round_state=state)
    policy = make_policy(cfg.selection, cfg.seed)
    if cfg.contribution.method != "none":  # sees the validated, decoded updates
        if utility is None:
            raise ValueError("contribution.method != 'none' needs the server's utility function")
        wrapped = ContributionScores(
            wrapped, cfg.contribution, cfg.seed, utility, scores_reporter(sinks, audit),
            round_state=state,
        )  # fmt: skip
        if cfg.selection.quality_aware:
            policy.use_contribution(wrapped.mean_score, cfg.contribution.weight_floor)
    wrapped = ValidatedUpdates(
        wrapped,
        max_norm_ratio=cfg.robust.max_update_norm_ratio,
        on_reject=rejections,
        outliers=cfg.robust.norm_outliers,
        on_clip=rejections.clip,
        round_state=state,
    )
    wrapped = ParticipantSelection(
        wrapped,
        policy,
        on_select=selection_reporter(roster, sinks, audit),
        round_state=state,
    )
    if cfg.attack.kind in model_attacks():
        byzantine = byzantine_partitions(len(roster), cfg.attack.fraction, cfg.seed)
        wrapped = SimulatedAttack(
            wrapped, cfg.attack.kind, byzantine, strength=cfg.attack.strength, seed=cfg.seed,
            round_state=state,
        )  # fmt: skip
    if cfg.secagg.enabled:  # receives masked updates; hands validation one aggregate
        wrapped = SecureAggregation(
            wrapped,
            threshold=cfg.secagg.threshold,
            clip_range=cfg.secagg.clip_range,
            bits=cfg.secagg.quantization_bits,
            timeout=cfg.sampling.round_timeout,
            round_state=state,
        )
    # Outside validation and attack simulation: they see decoded updates. Always on: a
    # reply it cannot decode is counted (undecodable-updates) and dropped. The traffic
    # meters around it measure every run: replies as decoded (bytes-uploaded-dense),
    # as received (bytes-uploaded) and instructions as sent (bytes-downloaded).
    wrapped = TrafficMeter(
        wrapped, uploaded_key="bytes-uploaded-dense", downloaded_key=None, timed=False,
        sizes=sizes, round_state=state,
    )  # fmt: skip
    wrapped = CompressedUpdates(wrapped, round_state=state)
    wrapped = TrafficMeter(wrapped, sizes=sizes, round_state=state)
    wrapped = RoundReporter(
        wrapped,
        sinks.log_metrics,
        sinks.log_silo_metrics,
        fairness_metrics=fairness_metrics(cfg),  # docs/personalization.md
        round_state=state,
    )
    # Outermost: payload limit, quorum/retries and the audit see replies as received.
    return ReliableRounds(
        wrapped,
        min_train_nodes=cfg.sampling.min_train_nodes,
        retries=cfg.sampling.round_retries,
        timeout=cfg.sampling.round_timeout,
        audit=audit,
        max_update_bytes=cfg.robust.max_update_bytes,
        rejections=rejections,
        round_state=state,
    )


def train_config(cfg: RunConfig, lineage: str) -> ConfigRecord:
    """The config every train instruction carries: the learning rate, the run's lineage
    and, for a strategy registered with ``needs_loss_before`` (q-FedAvg), the request to
    report the received model's loss before training (other strategies' instructions are
    unchanged)."""
    config = ConfigRecord({"learning-rate": cfg.training.learning_rate, LINEAGE_KEY: lineage})
    if STRATEGIES.get(cfg.strategy).extra.get("needs_loss_before"):
        config[REPORT_LOSS_BEFORE_KEY] = True
    return config


def fairness_metrics(cfg: RunConfig) -> tuple[str, ...]:
    """The silo metrics summarised across silos every round: the task's main metric and,
    under a personalisation method, the personal model's (``personal-<metric>``)."""
    main = get_task(cfg.task).main_metric
    if cfg.personalization.method == "none":
        return (main,)
    return (main, PERSONAL_PREFIX + main)


def evaluate_config(cfg: RunConfig, lineage: str) -> ConfigRecord | None:
    """The config every evaluate instruction carries: under a personalisation method the
    run's lineage (the silo's personal state is kept per lineage); else none (Flower's
    default, so the instructions are as before)."""
    if cfg.personalization.method == "none":
        return None
    return ConfigRecord({LINEAGE_KEY: lineage})


def run_federation(
    grid: Grid, cfg: RunConfig, extra_sinks: tuple[MetricsSink, ...] = ()
) -> tuple[Result, Path]:
    """Run the federation described by ``cfg`` on ``grid``; returns Flower's Result and
    the run directory."""
    task = get_task(cfg.task)
    if cfg.sampling.straggler_timeout > 0:  # stop waiting for dead silos once the quorum is in
        grid = StragglerGrid(
            grid,
            grace=cfg.sampling.straggler_timeout,
            needed={
                "train": cfg.sampling.min_train_nodes,
                "evaluate": cfg.sampling.min_evaluate_nodes,
                "query": cfg.sampling.min_available_nodes,  # the roll call
                # Secure aggregation's key, share and unmask steps: a silo that died
                # after round 1 must not hold them for the whole sampling.round-timeout.
                **dict.fromkeys(SECAGG_STEPS, cfg.sampling.min_train_nodes),
            },
        )
    resume = find_resume_point(cfg)  # None unless output.resume = true and a checkpoint exists
    run_dir = resume.run_dir if resume is not None and resume.run_dir else make_run_dir(cfg)
    done = resume.round if resume is not None else 0
    # Public id of this run's chain of resumes: silos key their secret local-DP state by it.
    lineage = resume.lineage if resume is not None and resume.lineage else new_lineage()
    privacy = privacy_status(cfg)  # None without DP; warns when the noise is reproducible
    sinks = Sinks(
        ConsoleSink(),
        RunDirSink(run_dir, resume_after=done if resume is not None else None, privacy=privacy),
        *tracking_sinks(cfg, run_dir),
        *extra_sinks,
        privacy=privacy,
    )
    sinks.log_params(
        {**cfg.to_flower(), "config-hash": cfg.fingerprint(), "fedsilo-version": VERSION}
    )
    run_log = attach_run_log(run_dir)  # run.log: what `fedsilo runs show` prints of a failure
    try:
        audit = AuditLog(run_dir / AUDIT_FILE, cfg.fingerprint(), on_record=sinks.log_event)
        audit.record(
            "run-start",
            task=cfg.task,
            strategy=cfg.strategy,
            rounds=cfg.num_server_rounds,
            seed=cfg.seed,
            **{"settings-hash": settings_hash(cfg), "resumed-from": resume and resume.source,
               "resumed-after-round": done, "lineage": lineage,
               **({DP_PRIVATE_KEY: privacy.private} if privacy is not None else {})},
        )  # fmt: skip
        LOG.info(
            "[fedsilo] task=%s strategy=%s rounds=%d; outputs in %s",
            cfg.task, cfg.strategy, cfg.num_server_rounds, run_dir,
        )  # fmt: skip

        strategy = build_strategy(cfg)
        if STRATEGIES.get(cfg.strategy).extra.get("needs_server_update"):
            strategy.server_update_fn = root_update_fn(task, cfg)
        try:
            roster, moments = roll_call(grid, cfg)
        except RollCallError as exc:  # stop with the silos' reason, not a later symptom
            LOG.error("[fedsilo] %s", exc)
            audit.record("run-aborted", round=done, reason=str(exc))
            sinks.log_artifact(audit.path)
            sinks.close()
            raise
        noisy_partitions(cfg.simulation, len(roster), cfg.seed)  # simulation.noisy-silos ≤ silos
        log_pre_aggregator(cfg)
        warn_if_rule_collapses(cfg, len(roster))
        seed_everything(derive_seed(cfg.seed, "init"))
        model = task.build_model()
        task.set_input_scaling(model, moments)
        initial = ArrayRecord(model.state_dict())
        strategy = central_dp(strategy, cfg, len(roster), model)

        utility = utility_fn(task, cfg) if cfg.contribution.method != "none" else None
        wrapped = wrap_strategy(strategy, cfg, roster, sinks, audit, utility)
        evaluate_fn = server_evaluator(task, cfg, sinks, run_dir, wrapped, audit, lineage)
        if resume is not None:  # continue after the checkpointed round, states restored
            LOG.info("[fedsilo] resuming after round %d from %s", done, resume.source)
            initial = resume.arrays
            resume.restore(wrapped)
        try:
            result = start_rounds(
                wrapped,
                grid,
                initial,
                first_round=done + 1,
                num_rounds=cfg.num_server_rounds,
                timeout=cfg.sampling.round_timeout,
                train_config=train_config(cfg, lineage),
                evaluate_config=evaluate_config(cfg, lineage),
                evaluate_fn=evaluate_fn,
            )
        except QuorumError as exc:  # end cleanly: checkpoint of the last round stays valid
            LOG.error("[fedsilo] %s", exc)
            audit.record("run-aborted", round=exc.server_round, reason=str(exc))
            for path in (run_dir / "metrics.json", run_dir / "metrics.csv", audit.path):
                sinks.log_artifact(path)
            sinks.close()
            raise
        except Exception as exc:  # a crash: the audit log says why (the sinks' event hook
            # sees it too: the Prometheus exporter stops serving), then the run fails as before
            LOG.exception("[fedsilo] run failed")
            audit.record("run-failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
            raise

        if len(result.arrays) == 0:  # no round aggregated (e.g. DP budget spent before round 1)
            result.arrays = initial
        if (scorer := _layer(wrapped, ContributionScores)) is not None:
            write_contributions(
                run_dir, scorer.totals, cfg.contribution.method, cfg.num_server_rounds, sinks, audit
            )
        model_path = run_dir / "model.pt"
        torch.save(result.arrays.to_torch_state_dict(), model_path)
        onnx_files = export_at_end(task, result.arrays.to_torch_state_dict(), cfg, run_dir, audit)
        audit.record(
            "run-end", round=cfg.num_server_rounds, **{"model-sha256": update_sha256(result.arrays)}
        )
        # The audit log last: the MLflow sink appends its model-registry decision to it when
        # handed the model.
        files = (model_path, *onnx_files, run_dir / "metrics.json", run_dir / "metrics.csv")
        for path in (*files, audit.path):
            sinks.log_artifact(path)
        sinks.close()
        final = result.evaluate_metrics_serverapp.get(cfg.num_server_rounds, {})
        LOG.info(
            "[fedsilo] done: server test %s; model saved to %s",
            " ".join(f"{k}={v:.4f}" for k, v in final.items() if k != "num-examples"),
            model_path,
        )
        return result, run_dir
    finally:
        detach_run_log(run_log)
