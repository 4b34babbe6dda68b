"""``fit``: train a built model for a run's epochs/steps with its lr schedule, periodic
checkpoints, resume and the non-finite guard (the runtime every stage calls)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from torch import nn

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import DistContext
from umec_torchrec.train.ckpt_manager import CheckpointManager, Resumed, mine, progress_record, set_rng_state
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.guard import NonFiniteError, RunInterrupted, deferred_signals, stop_requested
from umec_torchrec.train.loop import LoopState, num_train_steps, train_batches, train_steps
from umec_torchrec.train.optim import LRSchedule

__all__ = ["fit"]


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
        checkpoint_extra: more DCP state per checkpoint (plain tensors and numbers).
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
            raise ValueError(f"{resumed.path}: cannot resume: the checkpoint's data order ({p.get('per_epoch')} "
                             f"batches "
                             f"of {p.get('batch_size')} per epoch) differs from this run's ({per_epoch} of "
                             f"{train_cfg.batch_size} on {ctx.world_size} rank(s))")
        own = mine(p["ranks"], ctx.rank, ctx.world_size)
        if len(p["ranks"]) == ctx.world_size:
            state = LoopState.from_dict(own["loop"])
        else:  # another world size: the loss sums of every saved rank, not rank 0's alone
            state = LoopState.over_ranks([r["loop"] for r in p["ranks"]])
        if p.get("sched"):
            sched.load_state_dict(p["sched"])
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
        with deferred_signals():  # a stop signal now ends the run after the current step, with a checkpoint
            out = train_steps(
                model, optimizer, batches, on_step=on_step, batch_transform=batch_transform,
                progress=progress, log_every=train_cfg.log_every, scheduler=sched,
                total=max(0, total - state.steps), device=ctx.device, log=log, state=state, after_step=after_step,
            )
        sig = stop_requested()
        if sig:  # arrived after the last step's check
            raise RunInterrupted(sig, state.steps, checkpoints.latest if checkpoints is not None else None)
        return out
    except NonFiniteError as e:
        latest = checkpoints.latest if checkpoints is not None else None
        raise e.with_checkpoint(e.checkpoint or latest) from None
