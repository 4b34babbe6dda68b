"""Periodic checkpoints inside a run, for resuming after a kill.

Layout::

    RUN/checkpoints/step-000120/   DCP shards + .metadata + manifest.json (written last)
    RUN/checkpoints/step-000240/
    RUN/checkpoint/                the final checkpoint of the stage (unchanged contract)

Each ``step-N`` directory holds the state after ``N`` completed steps: the DCP state
``{"model", "optim", **stage extras}`` (plain tensors; the compress stage's ``"optim"`` is
``UMECOptimizer.state_dict()``, the UMEC state included) and ``progress.json``
(:data:`PROGRESS_FILE`): the loop counters (:class:`LoopState`), the learning-rate schedule,
the RNG states (torch, numpy, python; one per rank) and the world size and data-order
parameters, as JSON (nothing is unpickled on resume). A directory is complete or absent
(temp dir + rename, manifest with sizes and SHA-256 of every file, ``progress.json``
included, written last); the newest ``keep`` are kept.

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
from umec_torchrec.io import read_json
from umec_torchrec.train.checkpoint import load_checkpoint, read_manifest, save_checkpoint, verify_checkpoint
from umec_torchrec.train.guard import NonFiniteError, weights_finite

CHECKPOINTS = "checkpoints"
#: the JSON progress record inside every ``step-N`` directory
PROGRESS_FILE = "progress.json"
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
    """This process's torch, numpy and python RNG states, JSON-safe: the torch state as hex,
    numpy's MT19937 and python's Mersenne Twister state as lists of ints.

    Example::

        st = rng_state(); x = torch.rand(3); set_rng_state(json.loads(json.dumps(st)))
        assert torch.equal(torch.rand(3), x)
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {"torch": bytes(torch.get_rng_state().tolist()).hex(),
            "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "state": [int(v) for v in mt], "gauss_next": gauss_next}}


def set_rng_state(st: Dict[str, Any]) -> None:
    """Restore :func:`rng_state` (``ValueError`` on a malformed record)."""
    try:
        torch.set_rng_state(torch.tensor(list(bytes.fromhex(st["torch"])), dtype=torch.uint8))
        n = st["numpy"]
        np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), int(n["pos"]), int(n["has_gauss"]),
                             float(n["gauss"])))
        p = st["python"]
        random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), p["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"malformed RNG state in a checkpoint's progress record ({type(e).__name__}: {e})") from None


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
        _, world = _rank_world()
        save_checkpoint(path, model, optimizer, extra=extra, json_files={PROGRESS_FILE: progress},
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
                try:
                    progress = _progress_of(read_json(os.path.join(path, PROGRESS_FILE)))
                    load_checkpoint(path, model, optimizer, extra or None)
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


def _progress_of(rec: Any) -> Dict[str, Any]:
    """A :data:`PROGRESS_FILE` record as :func:`progress_record` made it (JSON wrote the loop
    counters' NaN floats, e.g. ``last_window_loss`` before a window closed, as ``null``)."""
    if not isinstance(rec, dict) or rec.get("format") != 2 or not isinstance(rec.get("ranks"), list):
        raise ValueError(f"not a progress record of format 2 ({PROGRESS_FILE})")
    for r in rec["ranks"]:
        r["loop"] = {k: float("nan") if v is None else v for k, v in r["loop"].items()}
    return rec


def progress_record(stage: str, loop_state: Any, schedule: Any, world_size: int, batch_size: int,
                    per_epoch: int, total: int, seed: int) -> Dict[str, Any]:
    """The JSON progress record of a periodic checkpoint (collective): per-rank values (loop
    counters, RNG states) are gathered into lists in rank order: ``"ranks": [{"loop": ...,
    "rng": ...}, ...]``; rank 0 writes the record."""
    return {
        "format": 2,
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
    "PROGRESS_FILE",
    "rng_state",
    "set_rng_state",
    "gather_rng_states",
    "gather_per_rank",
    "mine",
    "warn",
]
