"""Library API of the ``compress`` and ``finetune`` stages.

``compress_run`` starts from a trained run: it rebuilds the model and optimizer on this
world size, loads the checkpoint, wraps the optimizer in :class:`UMECOptimizer`, trains
under the budgets, hard-prunes, evaluates and writes a new run (``masks.json``, the UMEC
state in the checkpoint, resources in ``metrics.json``). ``finetune_run`` trains a
compressed run on with the masks fixed.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from umec_torchrec.distributed import DistContext
from umec_torchrec.runs import Run
from umec_torchrec.train.api import (_prepare_run, build_training, check_out_dir, check_resume, fit, format_metrics,
                                     restore_or_start, say)
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.ckpt_manager import CHECKPOINTS, CheckpointManager, CheckpointPolicy
from umec_torchrec.train.loop import num_train_steps
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.train.optim import TrainConfig
from umec_torchrec.umec.groups import GroupSpec, discover_groups
from umec_torchrec.umec.masked_optimizer import MaskedOptimizer
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer
from umec_torchrec.umec.resources import resources_of_masks

MASKS_FILE = "masks.json"


def umec_blob(state: Dict[str, Any]) -> bytes:
    """The UMEC state as bytes (a DCP leaf that loads whatever its template holds)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_umec_blob(blob: bytes) -> Dict[str, Any]:
    return torch.load(io.BytesIO(blob), weights_only=False)


def _load_source(src: Run, dmp: Any, optimizer: Any, ctx: DistContext) -> None:
    """Load the source run's final checkpoint; a checkpoint of another model, or optimizer
    state laid out for another world size, is a clear ``ValueError`` naming the source run."""
    try:
        load_checkpoint(src.checkpoint_dir, dmp, optimizer)
    except FileNotFoundError:
        raise FileNotFoundError(f"{src.checkpoint_dir}: no checkpoint; {src.path} is not a finished run") from None
    except ValueError as e:
        msg = str(e).strip().splitlines()[0]
        if "does not match" not in msg and "cannot load" not in msg:
            raise
        ws = src.config.get("world_size")
        if ws is not None and int(ws) != ctx.world_size and "optim" in msg:
            raise ValueError(
                f"{src.path}: its optimizer state was written on {ws} rank(s) and the sharding planner lays the "
                f"tables out differently on {ctx.world_size}; run on {ws} rank(s), or train the source run with "
                f"a pinned --sharding ({msg})") from None
        raise ValueError(f"{src.path}: its checkpoint does not fit the model in its config.json "
                         f"(a checkpoint of another model?): {msg}") from None


def _start_stage(out_dir: str, force: bool, ctx: DistContext, policy: CheckpointPolicy, cfg: Dict[str, Any],
                 bundle: Any, tcfg: TrainConfig, dmp: Any, optimizer: Any,
                 extra_template: Optional[Dict[str, Any]] = None) -> Tuple[Run, Any, Any]:
    """Create (or, with ``--resume``, reopen and check) the stage's run directory, write its
    config, and restore the newest good checkpoint: ``(run, checkpoint manager, resumed)``."""
    cfg["world_size"] = ctx.world_size
    run = _prepare_run(out_dir, force, ctx, resume=policy.resume)
    if run.resumed:
        check_resume(run, {k: cfg[k] for k in ("model", "data", "train", "umec")}, ctx, bundle.train, tcfg)
    elif ctx.rank == 0:
        run.write_config(**cfg)
    mgr = CheckpointManager(run.file(CHECKPOINTS), policy)
    kw = {} if extra_template is None else {"extra_template": extra_template}
    return run, mgr, restore_or_start(mgr, run, ctx, dmp, optimizer, **kw)


def _finish_stage(run: Run, ctx: DistContext, masks: PruningMasks, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``masks.json`` and ``metrics.json`` (rank 0), wait for every rank, report."""
    if ctx.rank == 0:
        masks.save(run.file(MASKS_FILE))
        run.write_metrics(metrics)
    ctx.barrier()
    say(ctx, format_metrics(metrics["test"], "test"))
    say(ctx, f"run written to {run.path}")
    return metrics


def _train_cfg(run: Run, epochs: Optional[int], steps: Optional[int], **overrides: Any) -> TrainConfig:
    cfg = run.train_config()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if epochs is not None:
        changes["epochs"] = epochs
    if steps is not None:
        changes["steps"] = steps
    return dataclasses.replace(cfg, **changes)


def compression_report(spec: GroupSpec, masks: PruningMasks) -> Dict[str, Any]:
    """What ``metrics.json`` reports about an architecture: resources (absolute and relative
    to dense), kept features, kept units per layer."""
    return {
        "resources": resources_of_masks(spec, masks),
        "kept_features": list(masks.kept_features),
        "pruned_features": masks.pruned_features,
        "kept_units": masks.kept_units(),
        "layer_widths": dict(masks.layer_widths),
    }


def format_report(rep: Dict[str, Any]) -> str:
    res = rep["resources"]
    parts = [f"{k}: {v['value']:.4g} of {v['dense']:.4g} ({100 * v['fraction']:.1f}% of dense)" for k, v in res.items()]
    return (f"{'; '.join(parts)}\nkept {len(rep['kept_features'])} features: {', '.join(rep['kept_features'])}\n"
            f"kept units: {rep['kept_units']}")


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
) -> Dict[str, Any]:
    """Compress a trained run under ``budgets`` (the ``umec compress`` command).

    ``checkpoints``: periodic checkpoints of the search (model, optimizer and the UMEC
    state) under ``OUT/checkpoints`` and ``resume`` (see :class:`CheckpointPolicy`).

    Returns the metrics written to ``metrics.json``.
    """
    policy = checkpoints or CheckpointPolicy()
    src = Run.open(from_run)
    check_out_dir(out_dir, force, policy.resume, source=src.path)
    tcfg = _train_cfg(src, epochs, steps)
    bundle = src.load_data()
    model_cfg = src.model_config()
    dmp, optimizer = build_training(model_cfg, tcfg, ctx, tables_on_meta=True)
    _load_source(src, dmp, optimizer, ctx)
    spec = discover_groups(dmp, prune_features=prune_features, prune_bottom=prune_bottom,
                           prune_top=prune_top, prune_dense=prune_dense)
    ucfg = umec_config or UMECConfig()
    umec = UMECOptimizer(optimizer, dmp, list(budgets), ucfg, groups=spec)  # validates budgets first
    groups = {"prune_features": prune_features, "prune_bottom": prune_bottom, "prune_top": prune_top,
              "prune_dense": prune_dense}
    cfg = dict(src.config)
    cfg["train"] = tcfg.to_dict()
    cfg["umec"] = {"stage": "compress", "source_run": src.path, "budgets": [str(b) for b in umec.budgets],
                   "config": dataclasses.asdict(ucfg), "groups": groups,
                   "sets": {s.name: s.size for s in spec.sets}}
    run, mgr, resumed = _start_stage(out_dir, force, ctx, policy, cfg, bundle, tcfg, dmp, optimizer,
                                     extra_template={"umec": {"blob": b""}})
    t0 = time.perf_counter()
    if resumed is not None:
        umec.load_umec_state_dict(load_umec_blob(resumed.extra["umec"]["blob"]))
    say(ctx, f"compress {src.path} -> {run.path}: budgets {', '.join(str(b) for b in umec.budgets)}; "
             f"{len(spec.sets)} group sets ({', '.join(f'{s.name}:{s.size}' for s in spec.sets)})")

    total = num_train_steps(bundle.train, tcfg.batch_size, ctx.world_size, tcfg.epochs, tcfg.steps)
    every = max(1, min(log_every, total // 5)) if log_every else 0

    def on_step(step: int, loss: float) -> None:
        if every and ((step + 1) % every == 0 or step + 1 == total):
            rep = umec.budget_report()
            say(ctx, f"  step {step + 1}: " + ", ".join(
                f"{k} {100 * v['fraction']:.1f}% (budget {100 * v['budget']:.1f}%)" for k, v in rep.items()))

    stats = fit(dmp, umec, bundle.train, tcfg, ctx, progress=progress,
                batch_transform=lambda b: umec.feature_mask(b), on_step=on_step,
                checkpoints=mgr, resumed=resumed, state_optimizer=optimizer, stage="compress",
                checkpoint_extra=lambda: {"umec": {"blob": umec_blob(umec.umec_state_dict())}})
    masks = umec.finalize()
    rep = compression_report(spec, masks)
    say(ctx, f"hard-pruned (budget repair: {umec.repair_groups} extra groups pruned, "
             f"{umec.restored_groups} given back)\n{format_report(rep)}")
    test = evaluate(dmp, bundle.test, tcfg.eval_batch_size, ctx, batch_transform=umec.feature_mask)
    save_checkpoint(run.checkpoint_dir, dmp, optimizer, extra={"umec": {"blob": umec_blob(umec.umec_state_dict())}})
    metrics = {
        "train": {k: float(v) for k, v in stats.items()},
        "test": test,
        "budgets": {b.resource: f for b, f in zip(umec.budgets, umec._fraction)},
        **rep,
        "budget_repair": {"pruned": umec.repair_groups, "restored": umec.restored_groups},
        "umec_state": {"s": umec.s.tolist(), "y": umec.y.tolist(), "z": umec.z.tolist()},
        "wall_seconds": time.perf_counter() - t0,
    }
    return _finish_stage(run, ctx, masks, metrics)


def load_masks(run: Run) -> PruningMasks:
    """The masks of a compressed run (clear error when the run is not compressed)."""
    import os

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
    rewind: bool = False,
) -> Dict[str, Any]:
    """Train a compressed run on with its masks fixed (the ``umec finetune`` command).

    ``checkpoints``: periodic checkpoints under ``OUT/checkpoints`` and ``resume``.
    ``rewind``: start from the weights of the dense run the compress stage started from
    (its ``source_run``), with the masks applied, instead of the weights the UMEC search
    left (whose kept groups the prox has been shrinking). On the Criteo sample this is as
    good as or better than continuing (see the README's results)."""
    policy = checkpoints or CheckpointPolicy()
    src = Run.open(from_run)
    masks = load_masks(src)
    weights = src
    if rewind:
        origin = src.config.get("umec", {}).get("source_run")
        if not origin:
            raise ValueError(f"{src.path}: --rewind needs a compressed run that records its source run")
        weights = Run.open(origin)
    check_out_dir(out_dir, force, policy.resume, source=src.path)
    tcfg = _train_cfg(src, epochs, steps)
    bundle = src.load_data()
    dmp, optimizer = build_training(src.model_config(), tcfg, ctx, tables_on_meta=True)
    _load_source(weights, dmp, optimizer, ctx)
    opt = MaskedOptimizer(optimizer, dmp, masks)
    spec = discover_groups(dmp, prune_dense=not masks.dense_kept)
    cfg = dict(src.config)
    cfg["train"] = tcfg.to_dict()
    cfg["umec"] = dict(src.config.get("umec", {}), stage="finetune", source_run=src.path,
                       weights_from=weights.path)
    run, mgr, resumed = _start_stage(out_dir, force, ctx, policy, cfg, bundle, tcfg, dmp, optimizer)
    t0 = time.perf_counter()
    say(ctx, f"finetune {src.path} -> {run.path}: {len(masks.kept_features)} of {len(masks.feature_names)} "
             f"features, units {masks.kept_units()}")
    stats = fit(dmp, opt, bundle.train, tcfg, ctx, progress=progress, batch_transform=opt.feature_mask,
                checkpoints=mgr, resumed=resumed, state_optimizer=optimizer, stage="finetune")
    test = evaluate(dmp, bundle.test, tcfg.eval_batch_size, ctx, batch_transform=opt.feature_mask)
    save_checkpoint(run.checkpoint_dir, dmp, optimizer)
    rep = compression_report(spec, masks)
    src_metrics = src.read_metrics()
    metrics = {"train": {k: float(v) for k, v in stats.items()}, "test": test,
               "budgets": src_metrics.get("budgets", {}), **rep,
               "wall_seconds": time.perf_counter() - t0}
    return _finish_stage(run, ctx, masks, metrics)
