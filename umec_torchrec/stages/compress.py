"""The ``compress`` and ``finetune`` stages.

``compress_run`` starts from a trained run: it rebuilds the model and optimizer on this
world size, loads the checkpoint, wraps the optimizer in :class:`UMECOptimizer`, trains
under the budgets, hard-prunes, evaluates and writes a new run (``masks.json``, the UMEC
state in the checkpoint, resources in ``metrics.json``). ``finetune_run`` trains a
compressed run on with the masks fixed. Both accept the data already loaded (``data=``),
so a pipeline loads it once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Literal, Optional, Sequence, get_args

import torch
import torch.distributed as dist

from umec_torchrec.distributed import DistContext
from umec_torchrec.history import HISTORY_FILE, append_record, truncate_history
from umec_torchrec.log import say, warn
from umec_torchrec.models import build_model
from umec_torchrec.runs import MASKED_STAGES, Run, check_out_dir
from umec_torchrec.stages.lifecycle import (
    MASKS_FILE,
    finish_stage,
    load_source,
    stage_data,
    stage_plan,
    stage_train_config,
    start_stage,
)
from umec_torchrec.train.build import build_training
from umec_torchrec.train.checkpoint import save_checkpoint
from umec_torchrec.train.ckpt_manager import CheckpointPolicy
from umec_torchrec.train.compact import CompactArch, load_compact_state, table_state_bytes
from umec_torchrec.train.fit import fit
from umec_torchrec.train.loop import num_train_steps
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.umec.allocation import resources_of_masks
from umec_torchrec.umec.groups import GroupSpec, discover_groups
from umec_torchrec.umec.latency import latency_report, reported_resources
from umec_torchrec.umec.masked_optimizer import MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.optimizer import SStep, UMECConfig, UMECOptimizer
from umec_torchrec.umec.resources import with_ids_per_sample

__all__ = [
    "attach_validation", "compress_run", "finetune_run", "compression_report", "format_report", "load_masks",
    "history_record", "repair_warning", "MASKS_FILE", "finetune_arch", "finetune_report", "load_compact_source",
    "FINETUNE_MODELS"]

#: ``finalize()`` repairing more groups than this (and than :data:`REPAIR_WARN_FRACTION` of
#: all groups) means the search ended away from its budget: the compress stage warns
REPAIR_WARN_GROUPS = 3
REPAIR_WARN_FRACTION = 0.01


def compression_report(spec: GroupSpec, masks: PruningMasks) -> Dict[str, Any]:
    """What ``metrics.json`` reports about an architecture: resources (absolute and relative
    to dense), kept features, kept units per layer; with a latency table, its calibration and the
    dtype each table's lookups were priced at (``latency_model``)."""
    out = {
        "resources": resources_of_masks(spec, masks, reported_resources(spec)),  # latency: with a latency table
        "kept_features": list(masks.kept_features),
        "pruned_features": masks.pruned_features,
        "kept_units": masks.kept_units(),
        "layer_widths": dict(masks.layer_widths),
    }
    lat = latency_report(spec)
    if lat is not None:
        out["latency_model"] = lat
    return out


def format_report(rep: Dict[str, Any]) -> str:
    """Three lines for a person: resources against dense, kept features, kept units."""
    res = rep["resources"]
    parts = [f"{k}: {v['value']:.4g} of {v['dense']:.4g} ({100 * v['fraction']:.1f}% of dense)" for k, v in res.items()]
    return (f"{'; '.join(parts)}\nkept {len(rep['kept_features'])} features: {', '.join(rep['kept_features'])}\n"
            f"kept units: {rep['kept_units']}")


def history_record(umec: UMECOptimizer, step: int, loss: float) -> Dict[str, Any]:
    """One line of ``RUN/history.jsonl``: the step, the loss, each budgeted resource against
    its budget at the current hard decision, ``s`` per group set and ``z`` per budget."""
    rep = umec.budget_report()
    return {"step": int(step), "loss": float(loss), "resources": rep,
            "s": dict(zip((gs.name for gs in umec.spec.sets), umec.s.tolist())),
            "z": dict(zip((b.resource for b in umec.budgets), umec.z.tolist()))}


def repair_warning(umec: UMECOptimizer) -> Optional[str]:
    """The warning after :meth:`UMECOptimizer.finalize` when its budget repair pruned more
    than a few groups beyond the search's ``s`` (the search ended away from its budget), with
    what to change; ``None`` otherwise."""
    total = sum(gs.size for gs in umec.spec.sets)
    n = int(umec.repair_groups)
    if n <= max(REPAIR_WARN_GROUPS, REPAIR_WARN_FRACTION * total):
        return None
    if umec.s_step is SStep.GRADIENT:
        how = "a larger --s-lr or --z-lr"
    else:
        how = f"a larger --s-lr (now {umec.config.s_lr:g}) or a smaller --target-every (now {umec.config.target_every})"
    return (f"finalize pruned {n} more groups ({100 * n / max(total, 1):.1f}% of {total}) than the search had, to meet "
            f"the budgets: the search ended away from its budget and the extra groups were chosen by score alone; "
            f"search longer (more --steps or --epochs) or let s move faster ({how})")


#: where ``finetune`` starts: the dense weights with the masks, or the UMEC search's weights
FinetuneStart = Literal["rewind", "continue"]
FINETUNE_STARTS = get_args(FinetuneStart)
#: what ``finetune`` trains: the physically smaller model of the masks, or the full model masked
FinetuneModel = Literal["compact", "masked"]
FINETUNE_MODELS = get_args(FinetuneModel)

#: validation rows the holdout score reads per refresh (the split's first rows; a refresh costs
#: about (features + 2) forward passes of the over arch over them)
HOLDOUT_ROWS = 4096


def attach_validation(umec: UMECOptimizer, valid: Any, batch_size: int, ctx: DistContext,
                      max_rows: int = HOLDOUT_ROWS) -> None:
    """Give ``umec`` this rank's share of the first ``max_rows`` rows of the validation split
    (a ``CTRData`` or ``None``) when its score needs it (``holdout``, ``mixed``); whole batches only on
    several ranks, so every rank runs as many."""
    if not umec.score_kind.needs_holdout:
        return
    if valid is None or len(valid) == 0:
        raise ValueError(f"score {umec.score_kind.value!r} needs a validation split: set --valid-fraction above 0")
    if len(valid) > max_rows:
        valid = valid.subset(torch.arange(max_rows))
    bs = batch_size
    umec.attach_holdout(lambda: valid.batches(bs, rank=ctx.rank, world_size=ctx.world_size,
                                              drop_last=ctx.world_size > 1))


def compress_run(
    from_run: str,
    budgets: Sequence[str],
    out_dir: str,
    ctx: DistContext,
    *,
    umec_config: Optional[UMECConfig] = None,
    epochs: Optional[int] = None,
    steps: Optional[int] = None,
    prune_features: bool = True,
    prune_bottom: bool = True,
    prune_top: bool = True,
    prune_dense: bool = False,
    force: bool = False,
    progress: bool = True,
    log_every: int = 50,
    checkpoints: Optional[CheckpointPolicy] = None,
    data: Any = None,
) -> Dict[str, Any]:
    """Compress a trained run under ``budgets`` (the ``umec compress`` command).

    Args:
        from_run: the trained (dense) run.
        budgets: ``"flops=0.3"``, ``"embedding_bytes=abs:64MiB"``, ... (see
            :func:`~umec_torchrec.umec.budgets.parse_budgets`).
        out_dir: the compressed run to write.
        ctx: the distributed context.
        umec_config: the primal-dual settings (default :class:`UMECConfig`).
        epochs / steps: length of the search (default: the source run's epochs).
        prune_features / prune_bottom / prune_top / prune_dense: which group sets to prune.
        force: overwrite ``out_dir``.
        progress: tqdm bar on rank 0.
        log_every: steps between budget log lines (0: none).
        checkpoints: periodic checkpoints of the search (model, optimizer and the UMEC
            state) under ``OUT/checkpoints`` and ``resume`` (see :class:`CheckpointPolicy`).
        data: the source run's data already loaded (a bundle or spec, checked against the
            run's record); default: reloaded from the run's recorded spec.

    Returns:
        the metrics written to ``metrics.json``.
    """
    policy = checkpoints or CheckpointPolicy()
    src = Run.open(from_run)
    src.check_complete()
    if os.path.isfile(src.file(MASKS_FILE)) or (src.config.get("umec") or {}).get("stage") in MASKED_STAGES:
        origin = (src.config.get("umec") or {}).get("source_run")
        raise ValueError(f"{src.path}: already a compressed run (it has {MASKS_FILE}); compressing it again would "
                         "bring its pruned groups back: compress its dense source run"
                         + (f" {origin}" if origin else "") + " with the tighter budgets instead")
    check_out_dir(out_dir, force, policy.resume, source=src.path)
    tcfg = stage_train_config(src, epochs, steps)
    bundle = stage_data(src, data)
    model_cfg = src.model_config()
    dmp, optimizer = build_training(model_cfg, tcfg, ctx, tables_on_meta=True,
                                    table_plan=stage_plan(src, out_dir, policy.resume))  # the source's layout
    load_source(src, dmp, optimizer, ctx)
    spec = with_ids_per_sample(discover_groups(dmp, prune_features=prune_features, prune_bottom=prune_bottom,
                                               prune_top=prune_top, prune_dense=prune_dense),
                               model_cfg.ids_per_sample)
    ucfg = umec_config or UMECConfig()
    umec = UMECOptimizer(optimizer, dmp, list(budgets), ucfg, groups=spec)  # validates budgets first
    attach_validation(umec, getattr(bundle, "valid", None), tcfg.eval_batch_size, ctx)
    groups = {"prune_features": prune_features, "prune_bottom": prune_bottom, "prune_top": prune_top,
              "prune_dense": prune_dense}
    cfg = dict(src.config)
    cfg["train"] = tcfg.to_dict()
    cfg["umec"] = {"stage": "compress", "source_run": src.path, "budgets": [str(b) for b in umec.budgets],
                   "config": dataclasses.asdict(ucfg), "groups": groups,
                   "sets": {s.name: s.size for s in spec.sets}}
    # the UMEC state travels inside umec.state_dict() (plain tensors): "optim" = inner state + "umec"
    run, mgr, resumed = start_stage(out_dir, force, ctx, policy, cfg, bundle, tcfg, dmp, umec)
    try:
        return _compress(run, mgr, resumed, ctx, src, bundle, tcfg, dmp, optimizer, umec, spec, progress, log_every)
    finally:
        run.unlock()


def _compress(run: Run, mgr: Any, resumed: Any, ctx: DistContext, src: Run, bundle: Any, tcfg: Any, dmp: Any,
              optimizer: Any, umec: UMECOptimizer, spec: GroupSpec, progress: bool, log_every: int) -> Dict[str, Any]:
    t0 = time.perf_counter()
    say(ctx, f"compress {src.path} -> {run.path}: budgets {', '.join(str(b) for b in umec.budgets)}; "
             f"{len(spec.sets)} group sets ({', '.join(f'{s.name}:{s.size}' for s in spec.sets)})")

    total = num_train_steps(bundle.train, tcfg.batch_size, ctx.world_size, tcfg.epochs, tcfg.steps)
    every = max(1, min(log_every, total // 5)) if log_every else 0

    history = run.file(HISTORY_FILE)
    if ctx.rank == 0 and run.resumed:  # the steps after the checkpoint are trained (and logged) again
        truncate_history(history, resumed.step if resumed is not None else 0)
    window = [0.0, 0]  # this rank's losses since the last log step

    def on_step(step: int, loss: float) -> None:
        window[0] += loss
        window[1] += 1
        if every and ((step + 1) % every == 0 or step + 1 == total):
            rec = history_record(umec, step + 1, _mean_over_ranks(window[0] / window[1], ctx))
            window[0], window[1] = 0.0, 0
            res = rec["resources"]
            say(ctx, f"  step {step + 1}: " + ", ".join(
                f"{k} {100 * v['fraction']:.1f}% (budget {100 * v['budget']:.1f}%)" for k, v in res.items()))
            if ctx.rank == 0:
                append_record(history, rec)

    stats = fit(dmp, umec, bundle.train, tcfg, ctx, progress=progress,
                batch_transform=lambda b: umec.feature_mask(b), on_step=on_step,
                checkpoints=mgr, resumed=resumed, stage="compress")
    masks = umec.finalize()
    rep = compression_report(spec, masks)
    say(ctx, f"hard-pruned (budget repair: {umec.repair_groups} extra groups pruned, "
             f"{umec.restored_groups} given back)\n{format_report(rep)}")
    advice = repair_warning(umec)
    if advice:
        warn(ctx, advice)
    if not umec.budgets_met:
        warn(ctx, "the budgets are not met: " + ", ".join(
            f"{k} {100 * v['fraction']:.2f}% > {100 * v['budget']:.2f}%" for k, v in umec.budget_report().items()
            if v["fraction"] > v["budget"] + 1e-9) + " of dense, even with every set pruned as far as its score order "
             "allows (e.g. the one feature that must stay is the largest table); raise the budget")
    test = evaluate(dmp, bundle.test, tcfg.eval_batch_size, ctx, batch_transform=umec.feature_mask)
    save_checkpoint(run.checkpoint_dir, dmp, umec)
    metrics = {
        "train": {k: float(v) for k, v in stats.items()},
        "test": test,
        "budgets": {k: v["budget"] for k, v in umec.budget_report().items()},
        **rep,
        "budget_repair": {"pruned": umec.repair_groups, "restored": umec.restored_groups,
                          "budgets_met": umec.budgets_met},
        "umec_state": {"s": umec.s.tolist(), "y": umec.y.tolist(), "z": umec.z.tolist()},
        "wall_seconds": time.perf_counter() - t0,
    }
    return finish_stage(run, ctx, metrics, masks)


def _mean_over_ranks(x: float, ctx: DistContext) -> float:
    """The mean of ``x`` over the ranks (one all-reduce; ``x`` on one process)."""
    if ctx.world_size == 1 or not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def load_masks(run: Run) -> PruningMasks:
    """The masks of a compressed run (clear error when the run is not compressed)."""
    path = run.file(MASKS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; {run.path} is not a compressed run (run umec compress first)")
    return PruningMasks.load(path)


def finetune_run(
    from_run: str,
    out_dir: str,
    ctx: DistContext,
    *,
    epochs: Optional[int] = None,
    steps: Optional[int] = None,
    force: bool = False,
    progress: bool = True,
    checkpoints: Optional[CheckpointPolicy] = None,
    start: FinetuneStart = "rewind",
    data: Any = None,
    finetune_model: FinetuneModel = "compact",
) -> Dict[str, Any]:
    """Train a compressed run on with its masks fixed (the ``umec finetune`` command).

    Args:
        from_run: the compressed run (has ``masks.json``).
        out_dir: the fine-tuned run to write.
        ctx: the distributed context.
        epochs / steps: length (default: the source run's epochs).
        force: overwrite ``out_dir``.
        progress: tqdm bar on rank 0.
        checkpoints: periodic checkpoints under ``OUT/checkpoints`` and ``resume``.
        start: ``"rewind"`` (default): start from the weights of the dense run the compress
            stage started from (its ``source_run``), with the masks applied; ``"continue"``:
            from the weights the UMEC search left (whose kept groups the prox has been
            shrinking). The default was chosen on the validation splits of the quality
            suite (README, Results).
        data: the run's data already loaded (checked against the run's record); default:
            reloaded from the recorded spec.
        finetune_model: ``"compact"`` (default): train the physically smaller model (kept
            tables only, narrowed layers; :mod:`umec_torchrec.train.compact`), sharded over
            the kept tables; its run records the compact ``ModelConfig`` under ``"model"``,
            masks that keep all of it, and the original dense model and masks in
            ``config.json["umec"]`` (``dense_model``, ``dense_masks``). ``"masked"``: the full
            model with the pruned weights held at zero (the reference; also the only choice
            when the dense-arch output was pruned).

    Returns:
        the metrics written to ``metrics.json``.
    """
    policy = checkpoints or CheckpointPolicy()
    src = Run.open(from_run)
    src.check_complete()
    masks = load_masks(src)
    weights = src
    if start not in FINETUNE_STARTS:
        raise ValueError(f"start must be one of {FINETUNE_STARTS}, got {start!r}")
    if finetune_model not in FINETUNE_MODELS:
        raise ValueError(f"finetune_model must be one of {FINETUNE_MODELS}, got {finetune_model!r}")
    if start == "rewind":
        origin = src.config.get("umec", {}).get("source_run")
        if not origin:
            raise ValueError(f"{src.path}: --start rewind needs a compressed run that records its source run; "
                             "use --start continue")
        weights = Run.open(origin)
    arch = finetune_arch(src, masks) if finetune_model == "compact" else None
    check_out_dir(out_dir, force, policy.resume, source=src.path)
    tcfg = stage_train_config(src, epochs, steps)
    bundle = stage_data(src, data)
    cfg = dict(src.config)
    cfg["train"] = tcfg.to_dict()
    cfg["umec"] = dict(src.config.get("umec", {}), stage="finetune", source_run=src.path,
                       weights_from=weights.path, finetune_model=finetune_model)
    if arch is None:
        dmp, optimizer = build_training(src.model_config(), tcfg, ctx, tables_on_meta=True,
                                        table_plan=stage_plan(weights, out_dir, policy.resume))
        load_source(weights, dmp, optimizer, ctx)
        opt: Any = MaskedOptimizer(optimizer, dmp, masks)
        transform, out_masks = opt.feature_mask, masks
        origin_arch = CompactArch.from_record(src.config.get("umec") or {})
        rep = (finetune_report(origin_arch.dense, origin_arch.masks) if origin_arch is not None
               else compression_report(with_ids_per_sample(discover_groups(dmp, prune_dense=not masks.dense_kept),
                                                           src.model_config().ids_per_sample), masks))
    else:
        dmp, optimizer = build_training(arch.config, tcfg, ctx, tables_on_meta=True,
                                        table_plan=stage_plan(weights, out_dir, policy.resume))
        load_compact_source(weights, arch, dmp, optimizer, ctx)
        opt, transform, out_masks = optimizer, arch.keep_features, arch.compact_masks
        rep = finetune_report(arch.dense, arch.masks)
        cfg["model"] = arch.config.to_dict()
        cfg["umec"].update(arch.record())
    run, mgr, resumed = start_stage(out_dir, force, ctx, policy, cfg, bundle, tcfg, dmp, optimizer)
    try:
        return _finetune(run, mgr, resumed, ctx, src, bundle, tcfg, dmp, optimizer, opt, transform, rep, out_masks,
                         progress)
    finally:
        run.unlock()


def finetune_arch(src: Run, masks: PruningMasks) -> CompactArch:
    """The compact architecture a fine-tune of ``src`` trains: the one ``src`` recorded (a
    compact fine-tuned run: its original dense model and masks), else ``src``'s model with
    ``masks``. ``ValueError`` naming ``src`` when the masks have no compact model (the
    dense-arch output pruned: use ``--finetune-model masked``)."""
    try:
        arch = CompactArch.from_record(src.config.get("umec") or {})
        if arch is None:
            return CompactArch.of(src.model_config(), masks)
    except ValueError as e:
        raise ValueError(f"{src.path}: no compact model for these masks ({e}); fine-tune with "
                         "--finetune-model masked") from None
    if arch.config != src.model_config():
        raise ValueError(f"{src.file('config.json')}: the recorded dense model and masks do not give this run's "
                         "model (config.json edited?)")
    return arch


def load_compact_source(weights: Run, arch: CompactArch, dmp: Any, optimizer: Any, ctx: DistContext) -> None:
    """Load the compact model and its optimizer from ``weights``' final checkpoint (a run of
    ``arch``'s dense model or of its compact model): the kept tables go straight into this
    world size's shards, the narrowed layers are sliced; a pruned table is never read."""
    weights.check_complete()
    if not os.path.isdir(weights.checkpoint_dir):
        raise FileNotFoundError(f"{weights.checkpoint_dir}: no checkpoint; {weights.path} is not a finished run")
    try:
        load_compact_state(weights.checkpoint_dir, weights.model_config(), arch, dmp, optimizer)
    except ValueError as e:
        msg = str(e).strip().splitlines()[0]
        ws = weights.config.get("world_size")
        if ws is not None and int(ws) != ctx.world_size and "optim" in msg:
            msg = (f"its optimizer state was written on {ws} rank(s) and the sharding planner lays the tables out "
                   f"differently on {ctx.world_size}; run on {ws} rank(s), or train the source run with a pinned "
                   f"--sharding ({msg})")
        raise ValueError(f"{weights.path}: cannot start the compact model from its checkpoint: {msg}") from None
    ctx.barrier()


def finetune_report(dense: Any, masks: PruningMasks) -> Dict[str, Any]:
    """:func:`compression_report` of ``masks`` against the dense model of config ``dense``
    (its groups discovered on a skeleton with tables on the ``meta`` device: no table memory)."""
    skeleton = build_model(dense, device=torch.device("cpu"), tables_device=torch.device("meta"))
    return compression_report(with_ids_per_sample(discover_groups(skeleton, prune_dense=not masks.dense_kept),
                                                  dense.ids_per_sample), masks)


def _finetune(run: Run, mgr: Any, resumed: Any, ctx: DistContext, src: Run, bundle: Any, tcfg: Any, dmp: Any,
              optimizer: Any, opt: Any, transform: Any, rep: Dict[str, Any], masks: PruningMasks,
              progress: bool) -> Dict[str, Any]:
    t0 = time.perf_counter()
    kind = run.config.get("umec", {}).get("finetune_model", "masked")
    say(ctx, f"finetune {src.path} -> {run.path} ({kind} model): {len(rep['kept_features'])} of "
             f"{len(rep['kept_features']) + len(rep['pruned_features'])} features, units {rep['kept_units']}")
    stats = fit(dmp, opt, bundle.train, tcfg, ctx, progress=progress, batch_transform=transform,
                checkpoints=mgr, resumed=resumed, state_optimizer=optimizer, stage="finetune")
    test = evaluate(dmp, bundle.test, tcfg.eval_batch_size, ctx, batch_transform=transform)
    save_checkpoint(run.checkpoint_dir, dmp, optimizer)
    src_metrics = src.read_metrics()
    metrics = {"train": {k: float(v) for k, v in stats.items()}, "test": test,
               "budgets": src_metrics.get("budgets", {}), **rep, "finetune_model": kind,
               "table_state_bytes": _table_bytes_over_ranks(dmp, optimizer, ctx),
               "wall_seconds": time.perf_counter() - t0}
    return finish_stage(run, ctx, metrics, masks)


def _table_bytes_over_ranks(dmp: Any, optimizer: Any, ctx: DistContext) -> int:
    """Bytes of the tables and their optimizer state over all ranks (one all-reduce)."""
    n = table_state_bytes(dmp, optimizer)
    if ctx.world_size == 1 or not dist.is_initialized():
        return n
    t = torch.tensor([n], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return int(t.item())
