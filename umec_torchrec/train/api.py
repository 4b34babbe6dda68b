"""High-level training API used by the CLI (and by later stages: compress, finetune)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import DistContext
from umec_torchrec.models import ModelConfig, build_model
from umec_torchrec.runs import Run, check_data_matches, data_record
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.ckpt_manager import (CHECKPOINTS, CheckpointManager, CheckpointPolicy, Resumed,
                                              mine, progress_record, set_rng_state)
from umec_torchrec.train.guard import NonFiniteError, RunInterrupted
from umec_torchrec.train.loop import LoopState, num_train_steps, train_batches, train_steps
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.train.optim import LRSchedule, TrainConfig, apply_embedding_optimizer, build_optimizer
from umec_torchrec.train.sharding import plan_summary, shard_model

DEFAULT_DATA = "synthetic"
DEFAULT_BOTTOM = [512, 256, 64, 16]


def say(ctx: Optional[DistContext], msg: str) -> None:
    """Print ``msg`` on rank 0 (stdout)."""
    if ctx is None or ctx.rank == 0:
        print(msg, flush=True)


def resolve_data(data: Any, options: Any = None) -> Tuple[Any, Optional[str], Any]:
    """``(bundle, spec or None, options)`` from a spec string or a ready bundle.

    A bundle is anything with ``.train`` and ``.test`` :class:`CTRData` (e.g. a
    ``DataBundle``, or ``types.SimpleNamespace(train=..., test=...)`` in tests).
    """
    if isinstance(data, str):
        from umec_torchrec.data import DataOptions, load_data

        opts = options if options is not None else DataOptions()
        return load_data(data, opts), data, opts
    if not (hasattr(data, "train") and hasattr(data, "test")):
        raise TypeError(f"expected a data spec string or a bundle with .train/.test, got {type(data).__name__}")
    spec = getattr(data, "spec", None)
    info = getattr(data, "info", None)
    if spec is None and isinstance(info, dict):
        spec = info.get("source") or info.get("spec")
    return data, spec if isinstance(spec, str) else None, options


def make_model_config(train: CTRData, overrides: Optional[Dict[str, Any]] = None) -> ModelConfig:
    """A :class:`ModelConfig` sized from ``train`` (features, table sizes, dense width).

    ``overrides`` may set ``kind`` (default ``"cat"``), ``embedding_dim``, ``bottom``,
    ``top``, ``dcn_num_layers``, ``dcn_low_rank_dim``. When only ``embedding_dim`` is given
    the bottom MLP's last layer follows it.
    """
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    for k in ("feature_names", "table_sizes", "dense_in_features"):
        if k in ov:
            raise ValueError(f"model override {k!r} is taken from the data and cannot be set")
    if "embedding_dim" in ov and "bottom" not in ov:
        ov["bottom"] = DEFAULT_BOTTOM[:-1] + [int(ov["embedding_dim"])]
    ov.setdefault("kind", "cat")
    return ModelConfig(
        feature_names=list(train.feature_names),
        table_sizes=[int(s) for s in train.table_sizes],
        dense_in_features=int(train.dense.shape[1]),
        **ov,
    )


def build_training(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    ctx: DistContext,
    tables_on_meta: bool = False,
) -> Tuple[nn.Module, Any]:
    """Seeded ``DLRMTrain`` -> fused table optimizer -> DMP -> ``CombinedOptimizer``.

    Args:
        model_cfg / train_cfg: what to build.
        ctx: the distributed context.
        tables_on_meta: let DMP initialise the tables per shard (for huge tables; the init
            then depends on the world size). Otherwise the seeded unsharded init is copied in.

    Returns:
        ``(dmp, optimizer)``.
    """
    torch.manual_seed(train_cfg.seed)
    model = build_model(
        model_cfg,
        device=torch.device("cpu"),
        tables_device=torch.device("meta") if tables_on_meta else torch.device("cpu"),
    )
    apply_embedding_optimizer(model, train_cfg)
    local_bs = max(1, train_cfg.batch_size // ctx.world_size)
    dmp = shard_model(model, ctx, train_cfg.sharding, batch_size=local_bs)
    return dmp, build_optimizer(dmp, train_cfg)


def fit(
    model: nn.Module,
    optimizer: Any,
    train: CTRData,
    train_cfg: TrainConfig,
    ctx: DistContext,
    *,
    progress: bool = True,
    batch_transform: Optional[Callable] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
    log: Optional[Callable[[str], None]] = None,
    checkpoints: Optional[CheckpointManager] = None,
    resumed: Optional[Resumed] = None,
    state_optimizer: Any = None,
    checkpoint_extra: Optional[Callable[[], Dict[str, Any]]] = None,
    stage: str = "train",
) -> Dict[str, float]:
    """Train ``model`` on ``train`` for ``train_cfg.epochs`` (or ``steps``) with the lr
    schedule of ``train_cfg``; returns the loop statistics.

    Fault tolerance (all optional):

    Args:
        checkpoints: write periodic checkpoints (every ``policy.every`` steps, at the end,
            and when a stop signal arrives, after which :class:`RunInterrupted` is raised).
        resumed: continue from this restored checkpoint (:meth:`CheckpointManager.restore`
            already loaded model and optimizer): loop counters, schedule, RNG states and
            the data position are taken from it.
        state_optimizer: the optimizer whose ``state_dict`` is checkpointed (default
            ``optimizer``; the compress stage passes the one inside ``UMECOptimizer``).
        checkpoint_extra: more DCP state per checkpoint, e.g. ``{"umec": {"blob": ...}}``.
        stage: recorded in the checkpoints.

    A non-finite loss on any rank raises :class:`~umec_torchrec.train.guard.NonFiniteError`
    naming the step and the last good checkpoint.
    """
    total = num_train_steps(train, train_cfg.batch_size, ctx.world_size, train_cfg.epochs, train_cfg.steps)
    per_epoch = num_train_steps(train, train_cfg.batch_size, ctx.world_size, 1, None)
    sched = LRSchedule(optimizer, train_cfg, total)
    state = LoopState()
    if resumed is not None:
        p = resumed.progress
        if (int(p.get("per_epoch", per_epoch)) != per_epoch
                or int(p.get("batch_size", train_cfg.batch_size)) != train_cfg.batch_size):
            raise ValueError(f"{resumed.path}: cannot resume: the checkpoint's data order ({p.get('per_epoch')} batches "
                             f"of {p.get('batch_size')} per epoch) differs from this run's ({per_epoch} of "
                             f"{train_cfg.batch_size} on {ctx.world_size} rank(s))")
        own = mine(p["ranks"], ctx.rank, ctx.world_size)
        state = LoopState.from_dict(own["loop"])
        if p.get("sched"):
            sched.base = list(p["sched"]["base"])
            sched.step_count = int(p["sched"]["step_count"])
            sched._apply()
        set_rng_state(own["rng"])
    batches = train_batches(
        train, train_cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size,
        epochs=train_cfg.epochs, steps=train_cfg.steps, seed=train_cfg.seed, start_step=state.steps,
    )
    sopt = state_optimizer if state_optimizer is not None else optimizer

    def after_step(st: LoopState, stop: Optional[int]) -> None:
        saved = None
        if checkpoints is not None and (checkpoints.due(st.steps, total) or stop):
            rec = progress_record(stage, st, sched, ctx.world_size, train_cfg.batch_size, per_epoch, total,
                                  train_cfg.seed)
            saved = checkpoints.save(st.steps, model, sopt, rec, checkpoint_extra() if checkpoint_extra else None)
        if stop:
            raise RunInterrupted(stop, st.steps, saved)

    try:
        return train_steps(
            model, optimizer, batches, on_step=on_step, batch_transform=batch_transform,
            progress=progress, log_every=train_cfg.log_every, scheduler=sched, total=max(0, total - state.steps),
            device=ctx.device, log=log, state=state, after_step=after_step,
        )
    except NonFiniteError as e:
        latest = checkpoints.latest if checkpoints is not None else None
        raise e.with_checkpoint(e.checkpoint or latest) from None


def check_out_dir(out_dir: str, force: bool = False, resume: bool = False, source: Optional[str] = None) -> str:
    """Refuse an output run directory that cannot be written, before any work is done.

    Raises ``ValueError`` / ``FileExistsError`` naming the path: ``--resume`` together
    with ``--force``; the output equal to the source run; a path whose parent is a file or
    not writable; an existing non-empty directory without ``--force`` or ``--resume``.
    Writes nothing. Returns the absolute path.
    """
    path = os.path.abspath(out_dir)
    if resume and force:
        raise ValueError("--resume and --force exclude each other (--resume continues RUN, --force deletes it)")
    if source is not None and os.path.abspath(source) == path:
        raise ValueError(f"{path}: the output run is the source run; choose another --out")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path}: exists and is not a directory")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ValueError(f"{path}: cannot create the run directory: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot write the run directory: {probe} is not writable")
    if os.path.isdir(path) and os.listdir(path) and not (force or resume):
        raise FileExistsError(f"{path}: run directory already exists; pass --force to overwrite it "
                              "or --resume to continue it")
    return path


def _prepare_run(out_dir: str, force: bool, ctx: DistContext, resume: bool = False) -> Run:
    """Create (or, with ``resume``, reopen) the output run; ``run.resumed`` says which."""
    path = check_out_dir(out_dir, force, resume)
    # every rank checks first, so a refusal raises everywhere instead of hanging a barrier
    if resume and os.path.isdir(path) and os.listdir(path):
        run = Run.open(path)
        run.resumed = True  # type: ignore[attr-defined]
        return run
    ctx.barrier()
    try:
        run = Run.create(path, force=force) if ctx.rank == 0 else Run(path)
    except (PermissionError, NotADirectoryError) as e:
        raise ValueError(f"{path}: cannot create the run directory ({e.strerror or e})") from None
    ctx.barrier()
    run.resumed = False  # type: ignore[attr-defined]
    return run


def _diff(a: Any, b: Any, prefix: str) -> Optional[str]:
    """The first differing key path of two JSON-like values, or ``None``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{prefix}.{k}"
            d = _diff(a[k], b[k], f"{prefix}.{k}")
            if d:
                return d
        return None
    return None if a == b else prefix


def check_resume(run: Run, sections: Dict[str, Any], ctx: DistContext, train: CTRData, train_cfg: TrainConfig) -> None:
    """Refuse to resume ``run`` with different settings, or on a world size whose data
    order differs; ``sections`` are the config sections this invocation would write."""
    import json

    rec = json.loads(json.dumps(run.config))  # normalise tuples etc.
    now = json.loads(json.dumps(sections))
    for key, val in now.items():
        have = rec.get(key)
        if key == "data":
            val = {k: val.get(k) for k in ("spec", "options", "feature_names", "table_sizes")}
            have = {k: (have or {}).get(k) for k in val}
        d = _diff(have, val, key)
        if d is not None:
            raise ValueError(f"{run.path}: cannot resume with different settings: {d} differs from the run's "
                             "config.json; use the original command line, or start a new run")
    old_ws = int(run.config.get("world_size") or ctx.world_size)
    if old_ws != ctx.world_size:
        bs = train_cfg.batch_size
        if bs % ctx.world_size:
            raise ValueError(f"{run.path}: cannot resume on {ctx.world_size} rank(s): batch size {bs} does not divide "
                             f"by {ctx.world_size} (the run started on {old_ws})")
        a = num_train_steps(train, bs, old_ws, 1, None)
        b = num_train_steps(train, bs, ctx.world_size, 1, None)
        if a != b:
            raise ValueError(f"{run.path}: cannot resume on {ctx.world_size} rank(s): the run started on {old_ws} "
                             f"and the data order differs ({a} vs {b} batches per epoch); resume on {old_ws} rank(s)")


def restore_or_start(mgr: CheckpointManager, run: Run, ctx: DistContext, model: nn.Module, optimizer: Any,
                     extra_template: Optional[Dict[str, Any]] = None) -> Optional[Resumed]:
    """With ``run.resumed``: load the newest good checkpoint (or say that none exists and
    the stage starts from its beginning); records the new world size in ``config.json``."""
    if not getattr(run, "resumed", False):
        return None
    got = mgr.restore(model, optimizer, extra_template)
    if got is None:
        say(ctx, f"resume: no complete checkpoint in {mgr.root}; starting from the beginning")
    else:
        say(ctx, f"resume: continuing from {got.path} (step {got.step})")
    if ctx.rank == 0 and run.config.get("world_size") != ctx.world_size:
        run.write_config(world_size=ctx.world_size)
    ctx.barrier()
    return got


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
        data: a data spec string (``"synthetic"``, ``"criteo:PATH"``, ...) or a loaded bundle.
        model_cfg_overrides: see :func:`make_model_config`.
        train_cfg: optimisation settings.
        out_dir: run directory to create (``config.json``, ``metrics.json``, ``checkpoint/``).
        ctx: from :func:`umec_torchrec.distributed.init_distributed`.
        data_options: ``DataOptions`` for a spec string.
        force: overwrite an existing run directory.
        progress: tqdm bar on rank 0.
        batch_transform: applied to each batch before the model (training and evaluation).
        checkpoints: periodic checkpoints under ``RUN/checkpoints`` and ``resume``
            (default :class:`CheckpointPolicy`: every 1000 steps and at the end, keep 2).

    Returns:
        the metrics written to ``metrics.json``: ``{"train": {steps, samples, loss,
        seconds, samples_per_s, ...}, "test": {auc, log_loss, accuracy, rows}}``.
    """
    policy = checkpoints or CheckpointPolicy()
    check_out_dir(out_dir, force, policy.resume)
    t0 = time.perf_counter()
    bundle, spec, opts = resolve_data(data, data_options)
    say(ctx, f"data: {spec or 'in-memory'}: {len(bundle.train)} train rows, {len(bundle.test)} test rows, "
             f"{len(bundle.train.feature_names)} sparse features ({sum(bundle.train.table_sizes)} table rows), "
             f"{bundle.train.dense.shape[1]} dense")
    model_cfg = make_model_config(bundle.train, model_cfg_overrides)
    sections = dict(model=model_cfg.to_dict(), data=data_record(spec, opts, bundle.train, getattr(bundle, "info", None)),
                    train=train_cfg.to_dict())
    run = _prepare_run(out_dir, force, ctx, resume=policy.resume)
    if run.resumed:
        check_resume(run, sections, ctx, bundle.train, train_cfg)
    elif ctx.rank == 0:
        run.write_config(**sections, world_size=ctx.world_size)
    dmp, optimizer = build_training(model_cfg, train_cfg, ctx)
    mgr = CheckpointManager(run.file(CHECKPOINTS), policy)
    resumed = restore_or_start(mgr, run, ctx, dmp, optimizer)
    plans = sorted(set(v.split(" ")[0] for v in plan_summary(dmp).values()))
    say(ctx, f"model: {model_cfg.kind} DLRM, D={model_cfg.embedding_dim}, bottom {model_cfg.bottom}, top {model_cfg.top}; "
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
    if ctx.rank == 0:
        run.write_metrics(metrics)
    ctx.barrier()
    say(ctx, format_metrics(test, "test"))
    say(ctx, f"run written to {run.path}")
    return metrics


def format_metrics(m: Dict[str, Any], name: str = "test") -> str:
    """One line: ``test: AUC 0.7712, log loss 0.4671, accuracy 0.7801 (4600 rows)``."""
    return (f"{name}: AUC {m['auc']:.4f}, log loss {m['log_loss']:.4f}, "
            f"accuracy {m['accuracy']:.4f} ({m['rows']} rows)")


def load_run_model(
    run: Union[str, Run],
    ctx: DistContext,
    *,
    with_optimizer: bool = False,
    train_cfg: Optional[TrainConfig] = None,
) -> Tuple[nn.Module, Any, Run]:
    """Rebuild a run's model (DMP on this world size) and load its checkpoint.

    Args:
        run: a run directory or :class:`Run`.
        ctx: the distributed context (any world size: DCP reshards).
        with_optimizer: also rebuild the optimizer and load its state.
        train_cfg: optimiser settings to build with (default: the run's).

    Returns:
        ``(dmp, optimizer or None, run)``.
    """
    run = Run.open(run) if isinstance(run, str) else run
    model_cfg = run.model_config()
    tcfg = train_cfg or run.train_config()
    dmp, optimizer = build_training(model_cfg, tcfg, ctx, tables_on_meta=True)
    load_checkpoint(run.checkpoint_dir, dmp, optimizer if with_optimizer else None)
    return dmp, (optimizer if with_optimizer else None), run


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

    The data is rebuilt from the recorded spec and options (checked against the recorded
    table sizes) unless ``data`` (a spec or bundle) is given. The metrics are merged into
    ``metrics.json`` under ``"evaluate"`` when ``write``.
    """
    run = Run.open(run_dir)
    if data is None:
        bundle = run.load_data()
    else:
        bundle, _, _ = resolve_data(data, None)
        check_data_matches(bundle.train, run.config["data"], where=run.file("config.json"))
    dmp, _, _ = load_run_model(run, ctx)
    bs = batch_size or run.train_config().eval_batch_size
    m = evaluate(dmp, bundle.test, bs, ctx, batch_transform=batch_transform)
    if write and ctx.rank == 0:
        run.write_metrics(m, section="evaluate")
    ctx.barrier()
    return m


__all__ = [
    "DEFAULT_DATA",
    "say",
    "resolve_data",
    "make_model_config",
    "build_training",
    "fit",
    "check_out_dir",
    "check_resume",
    "restore_or_start",
    "train_run",
    "format_metrics",
    "load_run_model",
    "evaluate_run",
]
