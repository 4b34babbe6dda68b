"""The ``train`` and ``evaluate`` stages: a dense run from data, and the held-out metrics
of a finished run."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional, Tuple, Union

from umec_torchrec.distributed import DistContext
from umec_torchrec.log import say
from umec_torchrec.runs import Run, check_out_dir, data_record
from umec_torchrec.stages.lifecycle import (
    defined_metrics,
    finish_stage,
    format_metrics,
    load_run_model,
    resolve_data,
    stage_data,
    stage_plan,
    start_stage,
)
from umec_torchrec.train.build import build_training, make_model_config
from umec_torchrec.train.checkpoint import save_checkpoint
from umec_torchrec.train.ckpt_manager import CheckpointPolicy
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.fit import fit
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.train.sharding import plan_summary

__all__ = ["train_run", "evaluate_run", "format_metrics", "check_sizes", "recorded_spec", "MAX_SEED"]

#: the largest seed every generator takes (torch's and numpy's seeds are unsigned 64-bit;
#: torch's ``manual_seed`` reads it as a signed 64-bit integer first)
MAX_SEED = 2 ** 63 - 1


def _memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_sizes(model_cfg: Any, train_cfg: TrainConfig) -> None:
    """``ValueError`` naming the flag for sizes nothing can be built from: an embedding dim
    below 1, a seed outside ``[0, 2^63)``, or tables (weights and optimizer state, 4-byte
    floats) larger than this machine's memory.

    Example::

        check_sizes(make_model_config(bundle.train, {"embedding_dim": 16}), TrainConfig())
    """
    dim = int(model_cfg.embedding_dim)
    if dim < 1:
        raise ValueError(f"--embedding-dim must be >= 1, got {dim}")
    if not 0 <= int(train_cfg.seed) <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, 2^63 - 1], got {train_cfg.seed}")
    rows = sum(int(n) for n in model_cfg.table_sizes)
    need = rows * dim * 4 * (2 if train_cfg.embedding_optimizer == "adagrad" else 1) + rows * 4
    have = _memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"the embedding tables need {need / 2 ** 30:.1f} GiB ({rows} rows of dim {dim} with optimizer state), "
            f"this machine has {have / 2 ** 30:.1f} GiB: lower --hash-size (or raise --min-count) or "
            f"--embedding-dim")


def recorded_spec(spec: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``(spec to record, absolute input path or None)``: the path made absolute, so later
    stages reload it from any working directory."""
    if spec is None:
        return None, None
    from umec_torchrec.data.errors import DataError
    from umec_torchrec.data.spec import absolute_spec

    try:
        return absolute_spec(spec)
    except DataError:
        return spec, None


def train_run(
    data: Union[str, Any],
    model_cfg_overrides: Optional[Dict[str, Any]],
    train_cfg: TrainConfig,
    out_dir: str,
    ctx: DistContext,
    *,
    data_options: Any = None,
    force: bool = False,
    progress: bool = True,
    batch_transform: Optional[Callable] = None,
    checkpoints: Optional[CheckpointPolicy] = None,
) -> Dict[str, Any]:
    """Train a DLRM and write a run directory; the ``umec train`` command.

    Args:
        data: a data spec string (``"synthetic"``, ``"criteo:PATH"``, ...) or a loaded bundle
            (its spec and ``data_options`` are recorded so later stages can reload it).
        model_cfg_overrides: see :func:`~umec_torchrec.train.build.make_model_config`.
        train_cfg: optimisation settings.
        out_dir: run directory to create (``config.json``, ``metrics.json``, ``checkpoint/``).
        ctx: from :func:`umec_torchrec.distributed.init_distributed`.
        data_options: ``DataOptions`` for a spec string (or the ones a bundle was loaded with).
        force: overwrite an existing run directory.
        progress: tqdm bar on rank 0.
        batch_transform: applied to each batch before the model (training and evaluation).
        checkpoints: periodic checkpoints under ``RUN/checkpoints`` and ``resume``
            (default :class:`CheckpointPolicy`: every 1000 steps and at the end, keep 2).

    Returns:
        the metrics written to ``metrics.json``: ``{"train": {steps, samples, loss,
        seconds, samples_per_s, ...}, "test": {auc, log_loss, accuracy, rows}}``.

    Example::

        with session() as ctx:
            m = train_run("synthetic:rows=2000", {"kind": "cat"}, TrainConfig(), "runs/r1", ctx)
    """
    policy = checkpoints or CheckpointPolicy()
    check_out_dir(out_dir, force, policy.resume)
    t0 = time.perf_counter()
    bundle, spec, opts = resolve_data(data, data_options)
    say(ctx, f"data: {spec or 'in-memory'}: {len(bundle.train)} train rows, {len(bundle.test)} test rows, "
             f"{len(bundle.train.feature_names)} sparse features ({sum(bundle.train.table_sizes)} table rows), "
             f"{bundle.train.dense.shape[1]} dense")
    model_cfg = make_model_config(bundle.train, model_cfg_overrides)
    check_sizes(model_cfg, train_cfg)  # before anything is built or an existing run replaced
    rec_spec, source = recorded_spec(spec)
    cfg = dict(model=model_cfg.to_dict(),
               data=data_record(rec_spec, opts, bundle.train, getattr(bundle, "info", None), source=source),
               train=train_cfg.to_dict())
    # a resumed run keeps the layout it recorded, on any world size
    dmp, optimizer = build_training(model_cfg, train_cfg, ctx, table_plan=stage_plan(None, out_dir, policy.resume))
    run, mgr, resumed = start_stage(out_dir, force, ctx, policy, cfg, bundle, train_cfg, dmp, optimizer)
    try:
        return _train(run, mgr, resumed, ctx, bundle, model_cfg, train_cfg, dmp, optimizer, progress,
                      batch_transform, t0)
    finally:
        run.unlock()


def _train(run: Run, mgr: Any, resumed: Any, ctx: DistContext, bundle: Any, model_cfg: Any, train_cfg: TrainConfig,
           dmp: Any, optimizer: Any, progress: bool, batch_transform: Optional[Callable], t0: float) -> Dict[str, Any]:
    plans = sorted(set(v.split(" ")[0] for v in plan_summary(dmp).values()))
    say(ctx,
        f"model: {model_cfg.kind} DLRM, D={model_cfg.embedding_dim}, bottom {model_cfg.bottom}, top {model_cfg.top}; "
             f"{ctx.world_size} rank(s), tables {', '.join(plans)}; "
             f"optimizers: {train_cfg.embedding_optimizer} (tables, lr {train_cfg.emb_lr}) + "
             f"{train_cfg.dense_optimizer} (dense, lr {train_cfg.dense_lr})")
    stats = fit(dmp, optimizer, bundle.train, train_cfg, ctx, progress=progress, batch_transform=batch_transform,
                checkpoints=mgr, resumed=resumed, stage="train")
    say(ctx, f"trained {stats['steps']} steps ({stats['samples']} samples) in {stats['seconds']:.1f}s, "
             f"{stats['samples_per_s']:.0f} samples/s, final loss {stats['loss']:.4f}")
    test = evaluate(dmp, bundle.test, train_cfg.eval_batch_size, ctx, batch_transform=batch_transform)
    save_checkpoint(run.checkpoint_dir, dmp, optimizer, extra={"progress": {"steps": int(stats["steps"])}})
    metrics = {"train": {k: float(v) for k, v in stats.items()}, "test": test,
               "wall_seconds": time.perf_counter() - t0}
    return finish_stage(run, ctx, metrics)


def evaluate_run(
    run_dir: str,
    ctx: DistContext,
    *,
    data: Any = None,
    batch_size: Optional[int] = None,
    batch_transform: Optional[Callable] = None,
    write: bool = True,
) -> Dict[str, Any]:
    """Evaluate a trained run on its held-out split (the ``umec evaluate`` command).

    Args:
        run_dir: the run.
        ctx: the distributed context (any world size).
        data: a spec or an already-loaded bundle (same vocabulary: checked against the
            recorded table sizes); default: rebuilt from the run's recorded spec and options.
        batch_size: evaluation batch size (default: the run's ``eval_batch_size``).
        batch_transform: applied to each batch before the model.
        write: merge the metrics into ``metrics.json`` under ``"evaluate"``.

    Returns:
        ``{"auc", "log_loss", "accuracy", "rows"}``.
    """
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    run = Run.open(run_dir)
    run.check_complete()
    bundle = stage_data(run, data)
    dmp, _, _ = load_run_model(run, ctx)
    bs = batch_size or run.train_config().eval_batch_size
    m = defined_metrics(evaluate(dmp, bundle.test, bs, ctx, batch_transform=batch_transform), ctx)
    if write and ctx.rank == 0:
        run.write_metrics(m, section="evaluate")
    ctx.barrier()
    return m
