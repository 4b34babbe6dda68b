"""Run guards: stop cleanly on SIGTERM/SIGINT, stop on non-finite losses or weights.

* :func:`stop_on_signals` installs SIGTERM/SIGINT handlers that only set a flag
  (:func:`stop_requested`); the training loop checks it after each step, all ranks agree
  (one all-reduce), a checkpoint is written and :class:`RunInterrupted` is raised. A second
  signal of the same kind gets the default behaviour (immediate exit).
* :class:`StepGuard` is the per-step check of the loop: one all-reduce of
  ``[any rank's loss non-finite, any rank asked to stop]`` (skipped on one rank), and
  :func:`weights_finite` checks every parameter/buffer (local shards of sharded tables)
  before a checkpoint is written, so a checkpoint never holds non-finite weights.
* Fault injection for tests: environment variable ``UMEC_FAULT_NAN_STEP=N`` makes the
  dense features of the ``N``-th training step (1-based) NaN on every rank, so the loss of
  that step is non-finite.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from typing import Any, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from umec_torchrec.distributed import get_world_size, local_tensors
from umec_torchrec.errors import NonFiniteError

FAULT_NAN_ENV = "UMEC_FAULT_NAN_STEP"

_STOP: Dict[str, Any] = {"signum": None, "deferred": False, "looped": False}


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name if signum in set(s.value for s in signal.Signals) else str(signum)


class StopRequested(BaseException):
    """SIGTERM/SIGINT outside the training loop (start-up, data loading, evaluation): the
    process stops at once. A ``BaseException``, so no ``except Exception`` on the way
    swallows it. ``exit_code`` is ``128 + signum``.

    Example::

        raise StopRequested(signal.SIGTERM, "before the training loop started")
    """

    def __init__(self, signum: int, when: str = "before the training loop started") -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {_signal_name(self.signum)} {when}; run the same command again "
                         "(with --resume if the run directory was created)")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunInterrupted(Exception):
    """SIGTERM/SIGINT stopped the run after a step; a checkpoint was written.

    Attributes:
        signum: the signal number; ``exit_code`` is ``128 + signum`` (143 / 130).
        step: completed steps; ``checkpoint``: where they were saved.
    """

    def __init__(self, signum: int, step: int, checkpoint: Optional[str], resume_hint: str = "") -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = _signal_name(signum)
        hint = resume_hint or "run the same command again with --resume to continue"
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"stopped by {name} after step {step}; {where}; {hint}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def stop_requested() -> Optional[int]:
    """The signal number that asked this process to stop, or ``None``."""
    return _STOP["signum"]


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask the training loop to stop after its current step (what the handlers do)."""
    _STOP["signum"] = int(signum)


def clear_stop() -> None:
    _STOP["signum"] = None


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block (the training loop), a stop signal only sets the flag that the loop
    checks after each step; outside it, the handlers of :func:`stop_on_signals` raise
    :class:`StopRequested` at once (a process blocked opening a FIFO stops too)."""
    before = _STOP["deferred"]
    _STOP["deferred"] = True
    try:
        yield
    finally:
        _STOP["deferred"] = before
        _STOP["looped"] = True


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT stop the run cleanly: inside
    :func:`deferred_signals` (the training loop) they set the stop flag checked after each
    step; elsewhere they raise :class:`StopRequested` at once.

    Only in the main thread (elsewhere this is a no-op). The previous handlers come back on
    exit; a second signal of the same kind while the flag is set restores the default
    handler and re-delivers it.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, frame):  # noqa: ARG001
        if _STOP["signum"] is not None:  # second signal: behave as if we had no handler
            signal.signal(signum, old.get(signum,
                                          signal.SIG_DFL) if signum != signal.SIGINT else signal.default_int_handler)
            signal.raise_signal(signum)
            return
        request_stop(signum)
        if not _STOP["deferred"]:
            raise StopRequested(signum, "after the training loop, before the stage's final files were written"
                                if _STOP["looped"] else "before the training loop started")

    clear_stop()
    _STOP["looped"] = False
    for s in signals:
        old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        clear_stop()


def _all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if get_world_size() > 1:
        backend = dist.get_backend()
        t = values.cuda() if backend == "nccl" else values
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu()
    return values


@torch.no_grad()
def weights_finite(model: nn.Module) -> bool:
    """True when every floating parameter/buffer of ``model`` (this rank's shards) is
    finite on every rank (one all-reduce)."""
    ok = True
    for v in model.state_dict().values():
        for t in local_tensors(v):
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                ok = False
                break
        if not ok:
            break
    bad = _all_reduce_max(torch.tensor([0.0 if ok else 1.0]))
    return float(bad[0]) == 0.0


class StepGuard:
    """The loop's per-step check: non-finite loss on any rank, stop requested on any rank.

    ``check(step, loss)`` (``step`` 1-based) raises :class:`NonFiniteError` when any rank's
    loss is not finite and returns the stop signal number (or ``None``) agreed by all ranks.
    """

    def __init__(self) -> None:
        v = os.environ.get(FAULT_NAN_ENV, "").strip()
        self.nan_step = int(v) if v.isdigit() else None

    def poison(self, step: int, batch: Any) -> Any:
        """Fault injection (tests): NaN dense features at 1-based step ``UMEC_FAULT_NAN_STEP``."""
        if self.nan_step is not None and step == self.nan_step:
            batch.dense_features = torch.full_like(batch.dense_features, float("nan"))
        return batch

    def check(self, step: int, loss: float) -> Optional[int]:
        bad = not math.isfinite(loss)
        sig = stop_requested()
        if get_world_size() > 1:
            flags = _all_reduce_max(torch.tensor([1.0 if bad else 0.0, float(sig or 0)], dtype=torch.float64))
            any_bad, sig = bool(flags[0] > 0), (int(flags[1]) or None)
        else:
            any_bad = bad
        if any_bad:
            raise NonFiniteError(step, "loss", f"{loss}" if bad else "on another rank")
        return sig


__all__ = [
    "NonFiniteError",
    "RunInterrupted",
    "StopRequested",
    "deferred_signals",
    "StepGuard",
    "stop_on_signals",
    "stop_requested",
    "request_stop",
    "clear_stop",
    "weights_finite",
    "FAULT_NAN_ENV",
]
