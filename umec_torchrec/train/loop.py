"""The training loop: forward, backward, ``optimizer.step()``, ``optimizer.zero_grad()``.

An equivalent of ``TrainPipelineSparseDist`` without the input-dist overlap (which buys
nothing on CPU). It only calls ``.step()`` / ``.zero_grad()`` on the optimizer, so any
wrapper (e.g. the UMEC optimizer around the ``CombinedOptimizer``) can be passed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import rank_world as _rank_world
from umec_torchrec.train.guard import StepGuard

StepCallback = Callable[[int, float], None]
BatchTransform = Callable[[Batch], Batch]


@dataclass
class LoopState:
    """The loop's counters; saved in periodic checkpoints so that a resumed run reports the
    same statistics as an uninterrupted one.

    Args:
        steps: completed steps (global, over the whole run).
        samples: global samples seen.
        loss_sum: sum of this rank's step losses (the mean over ranks is reported).
        win_loss / win_n: the current log window (sum of this rank's losses, steps).
        last_window_loss: mean loss of the last closed window (over ranks).
        seconds: training seconds spent before this process started (resumed runs).
    """

    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    win_loss: float = 0.0
    win_n: int = 0
    last_window_loss: float = float("nan")
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LoopState":
        return cls(**d)

    @classmethod
    def over_ranks(cls, per_rank: Sequence[Dict[str, Any]]) -> "LoopState":
        """The counters to continue from on another world size, from those saved by each
        of ``len(per_rank)`` ranks (:meth:`to_dict` of each, in rank order).

        The loss sums (``loss_sum``, ``win_loss``) are per rank and the figures reported are
        their mean over the ranks, so every new rank continues from the mean of the saved
        ones: the new ranks' mean is then the same as the old ranks' would have been. The
        global counters are the same on every rank; ``seconds`` is the slowest rank's.

        Example::

            state = LoopState.over_ranks([r["loop"] for r in progress["ranks"]])
        """
        if not per_rank:
            raise ValueError("no per-rank loop state to continue from")
        states = [cls.from_dict(d) for d in per_rank]
        out = states[0]
        for st in states[1:]:
            if (st.steps, st.samples, st.win_n) != (out.steps, out.samples, out.win_n):
                raise ValueError(f"the ranks' saved loop counters disagree: {out} vs {st}")
        k = len(states)
        out.loss_sum = sum(st.loss_sum for st in states) / k
        out.win_loss = sum(st.win_loss for st in states) / k
        out.seconds = max(st.seconds for st in states)
        return out


def _global_mean(x: float) -> float:
    _, world = _rank_world()
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


def train_steps(
    model: nn.Module,
    optimizer: Any,
    batches: Iterable[Batch],
    *,
    on_step: Optional[StepCallback] = None,
    batch_transform: Optional[BatchTransform] = None,
    progress: bool = True,
    log_every: int = 50,
    scheduler: Optional[Any] = None,
    total: Optional[int] = None,
    device: Optional[torch.device] = None,
    log: Optional[Callable[[str], None]] = None,
    desc: str = "train",
    state: Optional[LoopState] = None,
    after_step: Optional[Callable[[LoopState, Optional[int]], None]] = None,
    guard: Optional[StepGuard] = None,
) -> Dict[str, float]:
    """Train ``model`` on ``batches``; every rank must get the same number of batches.

    Args:
        model: a ``DLRMTrain`` or a DMP around one: ``model(batch) -> (loss, ...)``.
        optimizer: anything with ``step()`` and ``zero_grad()``.
        batches: this rank's batches (e.g. :func:`train_batches`).
        on_step: called after each step with ``(step, local loss)`` (0-based step).
        batch_transform: applied to each batch before the model (e.g. a feature mask).
        progress: show a tqdm bar on rank 0 (stderr).
        log_every: every this many steps rank 0 logs ``step, loss (mean over ranks and the
            window), steps/s, samples/s``; 0 disables.
        scheduler: optional object with ``step()`` called after each optimizer step.
        total: number of batches, for the progress bar.
        device: move batches here (default: stay where they are).
        log: line logger (default: print to stderr on rank 0).
        desc: progress-bar label.
        state: counters to continue from (a resumed run); updated in place.
        after_step: called after each step with ``(state, stop)``, ``stop`` being the signal
            number all ranks agreed to stop on (or ``None``); it may write a checkpoint
            and raise to end the loop (see :mod:`umec_torchrec.train.ckpt_manager`).
        guard: the per-step check (default :class:`~umec_torchrec.train.guard.StepGuard`):
            a non-finite loss on any rank raises
            :class:`~umec_torchrec.train.guard.NonFiniteError` naming the step.

    Returns:
        ``{"steps", "samples" (global), "loss" (mean of the last window, over ranks),
        "mean_loss" (all steps, over ranks), "seconds", "steps_per_s", "samples_per_s"}``;
        every rank gets the same figures.
    """
    rank, world = _rank_world()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (CI logs keep the line log only)
        bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False,
                   disable=None)
    if log is None:
        def log(msg: str) -> None:
            if rank == 0:
                if bar is not None and not bar.disable:
                    bar.write(msg, file=sys.stderr)
                else:
                    print(msg, file=sys.stderr, flush=True)
    model.train()
    st = state if state is not None else LoopState()
    guard = guard if guard is not None else StepGuard()
    t0 = time.perf_counter()
    t_win, win_steps = t0, 0
    try:
        for batch in batches:
            if device is not None:
                batch = batch.to(device)
            if batch_transform is not None:
                batch = batch_transform(batch)
            batch = guard.poison(st.steps + 1, batch)
            loss, _ = model(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
            lv = float(loss.detach().item())
            stop = guard.check(st.steps + 1, lv)  # raises NonFiniteError on any rank's NaN
            n = int(batch.labels.shape[0])
            st.loss_sum += lv
            st.win_loss += lv
            st.win_n += 1
            win_steps += 1
            st.samples += n * world
            if on_step is not None:
                on_step(st.steps, lv)
            st.steps += 1
            if bar is not None:
                bar.update(1)
                if st.steps % 10 == 0:
                    bar.set_postfix(loss=f"{lv:.4f}")
            if log_every and st.steps % log_every == 0:
                st.last_window_loss = _global_mean(st.win_loss / st.win_n)
                now = time.perf_counter()
                sps = win_steps / max(now - t_win, 1e-9)
                log(f"step {st.steps}: loss {st.last_window_loss:.4f}, {sps:.2f} steps/s, {sps * n * world:.0f} "
                    f"samples/s")
                t_win, win_steps = now, 0
                st.win_loss, st.win_n = 0.0, 0
            if after_step is not None:
                st.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                after_step(st, stop)
    finally:
        if bar is not None:
            bar.close()
    last_window_loss = st.last_window_loss
    if st.win_n:
        last_window_loss = _global_mean(st.win_loss / st.win_n)
    secs = st.seconds + (time.perf_counter() - t0)
    steps, samples = st.steps, st.samples
    return {
        "steps": steps,
        "samples": samples,
        "loss": last_window_loss,
        "mean_loss": _global_mean(st.loss_sum) / max(steps, 1),
        "seconds": secs,
        "steps_per_s": steps / max(secs, 1e-9),
        "samples_per_s": samples / max(secs, 1e-9),
    }


def train_batches(
    data: CTRData,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    epochs: int = 1,
    steps: Optional[int] = None,
    seed: int = 0,
    shuffle: bool = True,
    start_step: int = 0,
):
    """This rank's share of the global training batches, for ``epochs`` passes (or
    exactly ``steps`` batches when given, cycling epochs as needed).

    Global batch ``i`` is the same for every world size; a final partial batch too small
    to give every rank a row is dropped, so all ranks take the same number of steps.
    ``start_step`` skips the first batches (a resumed run): the order depends only on
    ``(seed, epoch)``, so the remaining batches are those of an uninterrupted run.
    """
    n = len(data)
    if n == 0:
        raise ValueError("the training split is empty")
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not divide by world size {world_size}")
    rem = n % batch_size
    drop_last = 0 < rem < world_size
    per_epoch = data.num_batches(batch_size, drop_last)
    if per_epoch == 0:
        raise ValueError(f"the training split ({n} rows) is smaller than the number of ranks ({world_size})")
    count = steps if steps is not None else per_epoch * epochs
    done, epoch = start_step, start_step // per_epoch
    while done < count:
        first = done - epoch * per_epoch
        for b in data.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                              world_size=world_size, drop_last=drop_last, start=first):
            if done >= count:
                return
            yield b
            done += 1
        epoch += 1


def num_train_steps(data: CTRData, batch_size: int, world_size: int = 1, epochs: int = 1,
                    steps: Optional[int] = None) -> int:
    """Number of batches :func:`train_batches` yields."""
    if steps is not None:
        return steps
    rem = len(data) % batch_size
    return data.num_batches(batch_size, 0 < rem < world_size) * epochs


__all__ = ["LoopState", "train_steps", "train_batches", "num_train_steps", "StepCallback", "BatchTransform"]
