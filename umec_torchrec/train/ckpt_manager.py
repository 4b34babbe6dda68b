"""Periodic checkpoints inside a run, for resuming after a kill.

Layout::

    RUN/checkpoints/step-000120/   DCP shards + .metadata + manifest.json (written last)
    RUN/checkpoints/step-000240/
    RUN/checkpoint/                the final checkpoint of the stage (unchanged contract)

Each ``step-N`` directory holds the state after ``N`` completed steps: ``{"model",
"optim", "progress": {"blob"}, **stage extras}`` (the compress stage adds ``"umec":
{"blob"}``). The progress blob carries the loop counters (:class:`LoopState`), the
learning-rate schedule, the RNG states (torch, numpy, python; one per rank) and the world
size and data-order parameters. A directory is complete or absent (temp dir + rename,
manifest with sizes and SHA-256 written last); the newest ``keep`` are kept.

:meth:`CheckpointManager.restore` goes from the newest to the oldest, skips a torn or
unloadable one with a warning on stderr naming it, and loads the first good one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from umec_torchrec.distributed import barrier as _barrier
from umec_torchrec.distributed import rank_world as _rank_world
from umec_torchrec.io import from_blob, to_blob
from umec_torchrec.train.checkpoint import load_checkpoint, read_manifest, save_checkpoint, verify_checkpoint
from umec_torchrec.train.guard import NonFiniteError, weights_finite

CHECKPOINTS = "checkpoints"
_STEP = re.compile(r"^step-(\d+)$")


@dataclass
class CheckpointPolicy:
    """When to write periodic checkpoints and whether to resume from them.

    Args:
        every: write one every this many steps (0: only the one at the end of training).
        keep: keep the newest this many (>= 1).
        resume: continue from the newest complete checkpoint of the output run.
    """

    every: int = 1000
    keep: int = 2
    resume: bool = False

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"--checkpoint-every must be >= 0 (0: only at the end), got {self.every}")
        if self.keep < 1:
            raise ValueError(f"--keep must be >= 1, got {self.keep}")


@dataclass
class Resumed:
    """What :meth:`CheckpointManager.restore` found: the directory, its step and progress
    record, and the stage extras it loaded."""

    path: str
    step: int
    progress: Dict[str, Any]
    extra: Dict[str, Any]


def rng_state() -> Dict[str, Any]:
    """This process's torch, numpy and python RNG states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])


def gather_per_rank(obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (one all-gather; ``[obj]`` on one process)."""
    _, world = _rank_world()
    if world == 1:
        return [obj]
    out: List[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG states, in rank order (one all-gather)."""
    return gather_per_rank(rng_state())


def mine(per_rank: List[Any], rank: int, world_size: int) -> Any:
    """This rank's entry of a per-rank list saved on ``len(per_rank)`` ranks (rank 0's
    when the world size changed)."""
    return per_rank[rank] if len(per_rank) == world_size else per_rank[0]


def warn(msg: str) -> None:
    """A warning line on stderr from rank 0 (library warnings are silenced by the CLI)."""
    if _rank_world()[0] == 0:
        print(f"umec: warning: {msg}", file=sys.stderr, flush=True)


class CheckpointManager:
    """Writes, lists, prunes and restores the periodic checkpoints under ``root``.

    Args:
        root: ``RUN/checkpoints``.
        policy: :class:`CheckpointPolicy`.

    Every method that touches a checkpoint is collective (call it on every rank).
    """

    def __init__(self, root: str, policy: Optional[CheckpointPolicy] = None) -> None:
        self.root = os.path.abspath(root)
        self.policy = policy or CheckpointPolicy()
        self.latest: Optional[str] = None  # the newest good checkpoint (written or restored)

    def path_for(self, step: int) -> str:
        return os.path.join(self.root, f"step-{step:06d}")

    def steps(self) -> List[int]:
        """Steps of the ``step-N`` directories present, newest first."""
        if not os.path.isdir(self.root):
            return []
        out = []
        for name in os.listdir(self.root):
            m = _STEP.match(name)
            if m and os.path.isdir(os.path.join(self.root, name)):
                out.append(int(m.group(1)))
        return sorted(out, reverse=True)

    def due(self, step: int, total: int) -> bool:
        """Whether a checkpoint is written after ``step`` completed steps."""
        return step >= total or (self.policy.every > 0 and step % self.policy.every == 0)

    # ------------------------------------------------------------------ writing
    def save(self, step: int, model: nn.Module, optimizer: Any, progress: Dict[str, Any],
             extra: Optional[Dict[str, Any]] = None) -> str:
        """Write ``step-N`` (collective); refuse non-finite weights; prune to ``keep``."""
        if not weights_finite(model):
            raise NonFiniteError(step, "weights", "before writing a checkpoint", self.latest)
        path = self.path_for(step)
        state_extra = dict(extra or {})
        state_extra["progress"] = {"blob": to_blob(progress)}
        _, world = _rank_world()
        save_checkpoint(path, model, optimizer, extra=state_extra,
                        meta={"step": int(step), "world_size": world, "stage": progress.get("stage")})
        self.latest = path
        if _rank_world()[0] == 0:
            self._prune(keep_path=path)
        _barrier()
        return path

    def _prune(self, keep_path: str) -> None:
        for name in os.listdir(self.root):
            full = os.path.join(self.root, name)
            if name.endswith(".tmp") or name.endswith(".old") or name.startswith(".deleting-"):
                shutil.rmtree(full, ignore_errors=True)
        steps = self.steps()
        for s in steps[self.policy.keep:]:
            p = self.path_for(s)
            if p == keep_path:
                continue
            # rename first: a kill during rmtree leaves no half-deleted step-N behind
            trash = os.path.join(self.root, f".deleting-step-{s:06d}")
            try:
                os.replace(p, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def _verdict(self, path: str) -> Optional[str]:
        """Rank 0's verification result, shared with every rank (they all skip alike)."""
        rank, world = _rank_world()
        why = verify_checkpoint(path) if rank == 0 else None
        if world > 1:
            box = [why]
            dist.broadcast_object_list(box, src=0)
            why = box[0]
        return why

    def restore(self, model: nn.Module, optimizer: Any,
                extra_template: Optional[Dict[str, Any]] = None) -> Optional[Resumed]:
        """Load the newest good checkpoint into ``model``/``optimizer`` (collective).

        Torn, corrupt or unloadable ones are skipped with a warning naming them. Returns
        ``None`` when there is none to resume from; raises ``ValueError`` when every
        candidate that passed verification failed to load (the model may then be partly
        overwritten, so starting over silently would be wrong).
        """
        failed_load = None
        for step in self.steps():
            path = self.path_for(step)
            why = self._verdict(path)
            if why is None:
                extra = {k: v for k, v in (extra_template or {}).items()}
                extra["progress"] = {"blob": b""}
                try:
                    load_checkpoint(path, model, optimizer, extra)
                    progress = from_blob(extra.pop("progress")["blob"])
                except Exception as e:  # noqa: BLE001 - any failure: fall back to the previous one
                    why = f"cannot be loaded ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
                    failed_load = f"{path}: {why}"
                else:
                    self.latest = path
                    return Resumed(path, int(progress["step"]), progress, extra)
            warn(f"{path}: skipping this checkpoint: {why}; trying the previous one")
        if failed_load is not None:
            raise ValueError(f"no checkpoint in {self.root} could be loaded (last: {failed_load}); "
                             "remove the directory to start the stage over")
        return None


def progress_record(stage: str, loop_state: Any, schedule: Any, world_size: int, batch_size: int,
                    per_epoch: int, total: int, seed: int) -> Dict[str, Any]:
    """The progress blob of a periodic checkpoint (collective). DCP keeps one copy of a
    non-tensor leaf, so per-rank values (loop counters, RNG states) are gathered into lists
    in rank order: ``"ranks": [{"loop": ..., "rng": ...}, ...]``."""
    return {
        "format": 1,
        "stage": stage,
        "step": int(loop_state.steps),
        "total": int(total),
        "ranks": gather_per_rank({"loop": loop_state.to_dict(), "rng": rng_state()}),
        "sched": None if schedule is None else schedule.state_dict(),
        "world_size": int(world_size),
        "batch_size": int(batch_size),
        "per_epoch": int(per_epoch),
        "seed": int(seed),
    }


def describe(path: str) -> str:
    """``step-000120 (step 120, 2 ranks)`` for messages."""
    m = read_manifest(path) or {}
    return f"{path} (step {m.get('step', '?')}, {m.get('world_size', '?')} rank(s))"


__all__ = [
    "CHECKPOINTS",
    "CheckpointPolicy",
    "CheckpointManager",
    "Resumed",
    "progress_record",
    "to_blob",
    "from_blob",
    "rng_state",
    "set_rng_state",
    "gather_rng_states",
    "gather_per_rank",
    "mine",
    "warn",
]
