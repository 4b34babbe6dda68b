"""The life of a stage's run directory, shared by train, compress and finetune.

A stage (1) checks its output before any work (:func:`~umec_torchrec.runs.check_out_dir`),
(2) gets its data once (:func:`resolve_data`, or a bundle handed on by the caller),
(3) builds its model and optimizer, (4) :func:`start_stage`: creates the run, or with
``--resume`` reopens it, refuses changed settings, and restores the newest good periodic
checkpoint, (5) trains with :func:`~umec_torchrec.train.fit.fit`, and (6)
:func:`finish_stage`: writes ``metrics.json`` (and ``masks.json``) on rank 0 and reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional, Tuple, Union

import torch.distributed as dist
from torch import nn

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import DistContext
from umec_torchrec.log import say
from umec_torchrec.runs import (
    Run,
    acquire_lock,
    check_data_matches,
    check_fingerprint,
    check_out_dir,
    entries,
    release_lock,
    remove_own_temp_files,
)
from umec_torchrec.train.build import build_training
from umec_torchrec.train.checkpoint import load_checkpoint
from umec_torchrec.train.ckpt_manager import CHECKPOINTS, CheckpointManager, CheckpointPolicy, Resumed
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.loop import num_train_steps
from umec_torchrec.train.sharding import plan_record
from umec_torchrec.umec.masks import PruningMasks

__all__ = [
    "MASKS_FILE",
    "resolve_data",
    "stage_data",
    "prepare_in_run",
    "RUN_DATA_DIR",
    "open_run",
    "agree",
    "clean_stale",
    "defined_metrics",
    "say_err",
    "check_resume",
    "restore_or_start",
    "start_stage",
    "finish_stage",
    "format_metrics",
    "load_run_model",
    "load_source",
    "stage_train_config",
    "stage_plan",
    "PLAN_KEY",
]

MASKS_FILE = "masks.json"
#: the ``config.json`` section with the sharding plan a stage ran with
#: (:func:`~umec_torchrec.train.sharding.plan_record`)
PLAN_KEY = "sharding_plan"
#: the ``config.json`` sections a resumed stage must reproduce exactly
RESUME_SECTIONS = ("model", "data", "train", "umec")


def resolve_data(data: Any, options: Any = None) -> Tuple[Any, Optional[str], Any]:
    """``(bundle, spec or None, options)`` from a spec string or a ready bundle.

    A bundle is anything with ``.train`` and ``.test`` :class:`CTRData` (e.g. a
    ``DataBundle``, or ``types.SimpleNamespace(train=..., test=...)`` in tests); its spec is
    ``bundle.spec`` or ``bundle.info["source"]`` when present.

    Example::

        bundle, spec, opts = resolve_data("synthetic:rows=2000")
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


def stage_data(run: Run, data: Any = None) -> Any:
    """The data of a stage that starts from ``run``: ``data`` (a spec or a loaded bundle,
    checked against the run's recorded features and table sizes) or, when ``None``, the
    run's data: the prepared copy its pipeline's first stage wrote (``data.prepared``,
    memory-mapped, after the recorded source's fingerprint check), else rebuilt from its
    recorded spec and options."""
    if data is None:
        rec = run.config.get("data") or {}
        copy = rec.get("prepared")
        from umec_torchrec.data.prepared import is_prepared

        if not copy or not is_prepared(copy):
            return run.load_data()
        warning = check_fingerprint(rec, where=run.file("config.json"))
        if warning:
            from umec_torchrec.distributed import get_rank

            if get_rank() == 0:
                import sys

                print(f"umec: warning: {warning}", file=sys.stderr, flush=True)
        from umec_torchrec.data import load_data

        bundle = load_data(f"prepared:{copy}")
        check_data_matches(bundle.train, rec, where=run.file("config.json"))
        return bundle
    bundle, _, _ = resolve_data(data, None)
    check_data_matches(bundle.train, run.config["data"], where=run.file("config.json"))
    return bundle


#: where a stage writes the prepared copy of a spec that is not prepared (``RUN/data``)
RUN_DATA_DIR = "data"


def prepare_in_run(run: Run, record: Optional[Dict[str, Any]], bundle: Any) -> Optional[str]:
    """Write ``bundle`` (a file source's spec, already loaded in memory) as a prepared
    directory ``RUN/data`` and return its path: the first stage of a pipeline does it once,
    and every later stage (``stage_data``) maps it instead of parsing the source again.
    ``None`` (nothing written) for generated data, a ``prepared:`` spec, a record that has a
    copy already (a stage started from a run) or a bundle without its vocabulary."""
    spec = (record or {}).get("spec")
    if not spec or (record or {}).get("prepared") or getattr(bundle, "vocabulary", None) is None:
        return None
    from umec_torchrec.data.spec import FILE_KINDS, parse_spec

    if parse_spec(spec).kind not in FILE_KINDS or parse_spec(spec).kind == "prepared":
        return None
    from umec_torchrec.data.prepared import write_prepared

    path = run.file(RUN_DATA_DIR)
    write_prepared(bundle, path)
    return path


def agree(msg: Optional[str], ctx: DistContext) -> Optional[str]:
    """Rank 0's ``msg`` on every rank (one broadcast; ``msg`` itself on one process)."""
    if ctx.world_size > 1 and dist.is_initialized():
        box = [msg]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return msg


def clean_stale(run: Run) -> None:
    """Remove what killed processes left in ``run`` (call on rank 0 while holding its lock):
    atomic-write temp files (``.tmp-*``), ``checkpoint.tmp`` and ``checkpoints/step-N.tmp``
    / ``.deleting-*`` directories, so a full disk freed by the kill stays free."""
    remove_own_temp_files(run.path)
    shutil.rmtree(run.checkpoint_dir + ".tmp", ignore_errors=True)
    root = run.file(CHECKPOINTS)
    if os.path.isdir(root):
        for n in os.listdir(root):
            if n.endswith(".tmp") or n.startswith(".deleting-"):
                shutil.rmtree(os.path.join(root, n), ignore_errors=True)


def open_run(out_dir: str, force: bool, ctx: DistContext, resume: bool = False) -> Run:
    """Create (or, with ``resume`` and an existing non-empty directory, reopen) the output
    run; :attr:`Run.resumed` says which. Takes the run's lock on rank 0 (a second process
    writing the same run is refused, naming the holder) and removes the leftovers of killed
    processes. Collective (a broadcast and two barriers on a new run)."""
    path = check_out_dir(out_dir, force, resume)
    # every rank checks first, so a refusal raises everywhere instead of hanging a barrier
    lock, err = None, None
    if ctx.rank == 0:
        try:
            lock = acquire_lock(path)
        except (FileExistsError, OSError) as e:
            err = str(e)
    err = agree(err, ctx)
    if err:
        raise FileExistsError(err)
    try:
        if resume and os.path.isdir(path) and entries(path):
            run = Run.open(path, resumed=True)
        else:
            ctx.barrier()
            try:
                run = Run.create(path, force=force) if ctx.rank == 0 else Run(path)
            except (PermissionError, NotADirectoryError) as e:
                raise ValueError(f"{path}: cannot create the run directory ({e.strerror or e})") from None
            ctx.barrier()
        if ctx.rank == 0:
            clean_stale(run)
    except BaseException:
        release_lock(lock)
        raise
    run.lock = lock
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
    rec = json.loads(json.dumps(run.config))  # normalise tuples etc.
    now = json.loads(json.dumps(sections))
    warning = check_fingerprint(rec.get("data") or {}, where=run.file("config.json"))
    if warning:
        say_err(ctx, f"umec: warning: {warning}")
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
    if not run.resumed:
        return None
    got = mgr.restore(model, optimizer, extra_template)
    if got is None:
        say(ctx, f"resume: no complete checkpoint in {mgr.root}; starting from the beginning")
    else:
        say(ctx, f"resume: continuing from {got.path} (step {got.step})")
    if ctx.rank == 0 and run.config.get("world_size") != ctx.world_size:
        run.write_config(world_size=ctx.world_size, **_plan_section(model))
    ctx.barrier()
    return got


def start_stage(out_dir: str, force: bool, ctx: DistContext, policy: CheckpointPolicy, cfg: Dict[str, Any],
                bundle: Any, tcfg: TrainConfig, model: nn.Module, optimizer: Any,
                extra_template: Optional[Dict[str, Any]] = None) -> Tuple[Run, CheckpointManager, Optional[Resumed]]:
    """Create (or, with ``policy.resume``, reopen and check) the stage's run directory, write
    its config (``cfg`` plus ``world_size``), and restore the newest good checkpoint. The
    returned run holds its lock: the caller releases it (``run.unlock()``) when the stage
    ends, however it ends.

    Returns:
        ``(run, checkpoint manager, resumed or None)``.
    """
    cfg = dict(cfg, world_size=ctx.world_size, **_plan_section(model))
    run = open_run(out_dir, force, ctx, resume=policy.resume)
    try:
        if run.resumed:
            check_resume(run, {k: cfg[k] for k in RESUME_SECTIONS if k in cfg}, ctx, bundle.train, tcfg)
        elif ctx.rank == 0:
            copy = prepare_in_run(run, cfg.get("data"), bundle)
            if copy:
                cfg["data"] = dict(cfg["data"], prepared=copy)
            run.write_config(**cfg)
            if getattr(bundle, "vocabulary", None) is not None:
                run.write_vocabulary(bundle.vocabulary)  # raw ids -> rows travel with the run
            run.discard_replaced()  # the run --force replaces goes once the new one has started
        mgr = CheckpointManager(run.file(CHECKPOINTS), policy)
        return run, mgr, restore_or_start(mgr, run, ctx, model, optimizer, extra_template)
    except BaseException:
        run.unlock()
        raise


def _plan_section(model: nn.Module) -> Dict[str, Any]:
    """``{"sharding_plan": ...}`` for a DMP-wrapped model, ``{}`` for a plain module."""
    return {PLAN_KEY: plan_record(model)} if hasattr(model, "plan") and hasattr(model.plan, "plan") else {}


def stage_plan(source: Optional[Run] = None, out_dir: Optional[str] = None,
               resume: bool = False) -> Optional[Dict[str, Any]]:
    """The sharding plan a stage reuses (:func:`~umec_torchrec.train.sharding.plan_record`):
    with ``resume``, the one its own run ``out_dir`` recorded (a resumed stage keeps its layout
    on any world size); else the ``source`` run's; ``None`` when neither records one (a run
    from before plans were recorded, or a stage without a source: the planner decides).

    Example::

        dmp, optimizer = build_training(cfg, tcfg, ctx, table_plan=stage_plan(src, out_dir, resume))
    """
    if resume and out_dir and os.path.isfile(os.path.join(out_dir, "config.json")):
        try:
            own = Run.open(out_dir).config.get(PLAN_KEY)
        except (OSError, ValueError):
            own = None
        if own:
            return own
    return (source.config.get(PLAN_KEY) or None) if source is not None else None


def finish_stage(run: Run, ctx: DistContext, metrics: Dict[str, Any],
                 masks: Optional[PruningMasks] = None) -> Dict[str, Any]:
    """Write ``metrics.json`` (and ``masks.json`` when given) on rank 0, wait for every
    rank, report the test metrics; returns ``metrics``."""
    metrics["test"] = defined_metrics(metrics["test"], ctx)
    if ctx.rank == 0:
        if masks is not None:
            masks.save(run.file(MASKS_FILE))
        run.write_metrics(metrics)  # written last: a run with metrics.json is complete
    ctx.barrier()
    say(ctx, format_metrics(metrics["test"], "test"))
    say(ctx, f"run written to {run.path}")
    return metrics


def say_err(ctx: DistContext, msg: str) -> None:
    """``msg`` on stderr from rank 0."""
    if ctx.rank == 0:
        import sys

        print(msg, file=sys.stderr, flush=True)


def defined_metrics(m: Dict[str, Any], ctx: DistContext) -> Dict[str, Any]:
    """``m`` with an undefined AUC (a split with one class: NaN) as ``None`` plus
    ``"auc_undefined"`` (the reason), with a warning on stderr."""
    auc = m.get("auc")
    if isinstance(auc, float) and auc != auc:
        n_pos = m.get("positives")
        why = "the evaluation split has only one class" + (f" ({n_pos} positives)" if n_pos is not None else "")
        say_err(ctx, f"umec: warning: AUC is undefined: {why}")
        m = dict(m, auc=None, auc_undefined=why)
    return m


def format_metrics(m: Dict[str, Any], name: str = "test") -> str:
    """One line: ``test: AUC 0.7712, log loss 0.4671, accuracy 0.7801 (4600 rows)``."""
    auc = "undefined" if m.get("auc") is None else f"{m['auc']:.4f}"
    return (f"{name}: AUC {auc}, log loss {m['log_loss']:.4f}, "
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
    run.check_complete()
    model_cfg = run.model_config()
    tcfg = train_cfg or run.train_config()
    dmp, optimizer = build_training(model_cfg, tcfg, ctx, tables_on_meta=True, table_plan=stage_plan(run))
    load_checkpoint(run.checkpoint_dir, dmp, optimizer if with_optimizer else None)
    return dmp, (optimizer if with_optimizer else None), run


def load_source(src: Run, dmp: Any, optimizer: Any, ctx: DistContext) -> None:
    """Load the source run's final checkpoint; a checkpoint of another model, or optimizer
    state laid out for another world size, is a clear ``ValueError`` naming the source run;
    an incomplete source run (its stage did not finish) is refused naming the missing file."""
    src.check_complete()
    try:
        load_checkpoint(src.checkpoint_dir, dmp, optimizer)
    except FileNotFoundError:
        raise FileNotFoundError(f"{src.checkpoint_dir}: no checkpoint; {src.path} is not a finished run") from None
    except ValueError as e:
        msg = str(e).strip().splitlines()[0]
        if "does not match" not in msg and "cannot load" not in msg:
            raise
        ws = src.config.get("world_size")
        if ws is not None and int(ws) != ctx.world_size and "optim" in msg and not src.config.get(PLAN_KEY):
            raise ValueError(
                f"{src.path}: its optimizer state was written on {ws} rank(s) and its config.json records no "
                f"sharding plan (a run from an older version), so the planner may lay the tables out differently "
                f"on {ctx.world_size}; run on {ws} rank(s) ({msg})") from None
        raise ValueError(f"{src.path}: its checkpoint does not fit the model in its config.json "
                         f"(a checkpoint of another model?): {msg}") from None


def stage_train_config(run: Run, epochs: Optional[int], steps: Optional[int], **overrides: Any) -> TrainConfig:
    """The source run's :class:`TrainConfig` with the stage's ``epochs`` / ``steps`` and other
    non-``None`` ``overrides`` applied."""
    cfg = run.train_config()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if epochs is not None:
        changes["epochs"] = epochs
    if steps is not None:
        changes["steps"] = steps
    return dataclasses.replace(cfg, **changes)
