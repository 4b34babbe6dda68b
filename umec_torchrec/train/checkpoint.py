"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): they load on any world size.

Layout of the saved state: ``{"model": model.state_dict(), "optim": optimizer.state_dict(),
**extra}``. For a DMP model the state-dict keys equal the unsharded ``DLRMTrain``'s, and
sharded tables are ``ShardedTensor``s, so DCP reshards on load (2 ranks -> 1 rank, or into a
plain unsharded model).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _state(model: Optional[nn.Module], optimizer: Any, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    state: Dict[str, Any] = {}
    if model is not None:
        state["model"] = model.state_dict()
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    for k, v in (extra or {}).items():
        if k in ("model", "optim"):
            raise ValueError(f"extra checkpoint key {k!r} is reserved")
        state[k] = v
    return state


def save_checkpoint(path: str, model: nn.Module, optimizer: Any = None, extra: Optional[Dict[str, Any]] = None) -> None:
    """Save on every rank (collective) into directory ``path``, atomically.

    Every rank writes its shards into ``<path>.tmp``; after a barrier rank 0 renames it to
    ``path`` (replacing an older checkpoint there), so ``path`` is always complete or absent.

    Args:
        path: checkpoint directory (on a file system every rank sees).
        model: a DMP or plain module.
        optimizer: optional; its ``state_dict()`` is saved under ``"optim"``.
        extra: more state (tensors, numbers, nested dicts) saved under its own keys.
    """
    path = os.path.abspath(path).rstrip("/")
    tmp, old = path + ".tmp", path + ".old"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    _barrier()
    dcp.save(_state(model, optimizer, extra), checkpoint_id=tmp)
    _barrier()
    if _rank() == 0:
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def check_checkpoint(path: str) -> None:
    """Raise ``FileNotFoundError`` / ``ValueError`` naming ``path`` unless it looks like a
    complete DCP checkpoint."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no checkpoint directory")
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise ValueError(f"{path}: not a complete torch.distributed.checkpoint directory (no .metadata file)")


def load_checkpoint(path: str, model: Optional[nn.Module], optimizer: Any = None, extra: Optional[Dict[str, Any]] = None) -> None:
    """Load a checkpoint written by :func:`save_checkpoint` on any world size, in place.

    Args:
        path: checkpoint directory.
        model: module to fill (DMP on any world size, or a plain unsharded model); ``None``
            to skip.
        optimizer: optional optimizer to fill (its state must already exist: the optimizers
            of :func:`umec_torchrec.train.optim.build_optimizer` create it eagerly).
        extra: templates for the extra keys to load (same structure as saved); updated in
            place with the loaded values.
    """
    check_checkpoint(path)
    state = _state(model, optimizer, extra)
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as e:  # DCP raises CheckpointException with per-rank tracebacks
        msg = str(e).strip().splitlines()
        raise ValueError(f"{path}: cannot load checkpoint ({type(e).__name__}: {msg[-1] if msg else ''})") from e
    try:
        if model is not None:
            model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optim"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: checkpoint does not match the model/optimizer ({e})") from e
    if extra is not None:
        for k in list(extra):
            extra[k] = state[k]


__all__ = ["save_checkpoint", "load_checkpoint", "check_checkpoint"]
