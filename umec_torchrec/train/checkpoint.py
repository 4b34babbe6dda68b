"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): they load on any world size.

Layout of the saved state: ``{"model": model.state_dict(), "optim": optimizer.state_dict(),
**extra}``. For a DMP model the state-dict keys equal the unsharded ``DLRMTrain``'s, and
sharded tables are ``ShardedTensor``s, so DCP reshards on load (2 ranks -> 1 rank, or into a
plain unsharded model).

Every checkpoint directory is complete or absent: the ranks write into ``<path>.tmp``, rank 0
adds ``manifest.json`` (size and SHA-256 of every file) last and renames the directory into
place. :func:`load_checkpoint` re-checks a directory against its manifest (every file's
size and SHA-256) before loading it and refuses non-finite weights after, so a torn,
corrupted or diverged checkpoint is never used. A full disk is one line
(:class:`~umec_torchrec.io.DiskFull`) and leaves no ``<path>.tmp`` behind.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import Any, Dict, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

from umec_torchrec.distributed import barrier as _barrier
from umec_torchrec.distributed import get_rank as _rank
from umec_torchrec.io import MANIFEST, raise_if_disk_full, read_manifest, verify_manifest, write_json, write_manifest
from umec_torchrec.train.guard import weights_finite


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


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that the non-tensor leaves of a checkpoint (the
    optimizers' hyper-parameters, small counters) are read with ``torch.load(weights_only=True)``
    (DCP's own planner unpickles them with ``weights_only=False``): loading a checkpoint runs no
    pickled code."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_checkpoint(path: str, hashes: bool = True, require_manifest: bool = True) -> Optional[str]:
    """Why ``path`` is not a complete, intact checkpoint, or ``None`` when it is.

    Checks that the directory and DCP's ``.metadata`` exist and that every file listed in
    ``manifest.json`` exists with the listed size and (``hashes``) SHA-256. A missing
    manifest is a reason unless ``require_manifest`` is false or
    :func:`~umec_torchrec.io.trusting` is on (``--trust-checkpoint``).
    """
    if not os.path.isdir(path):
        return "no checkpoint directory"
    if not os.path.isfile(os.path.join(path, ".metadata")):
        return "no .metadata file (incomplete torch.distributed.checkpoint directory)"
    return verify_manifest(path, hashes=hashes, require=require_manifest)


def save_checkpoint(path: str, model: nn.Module, optimizer: Any = None, extra: Optional[Dict[str, Any]] = None,
                    meta: Optional[Dict[str, Any]] = None, json_files: Optional[Dict[str, Any]] = None) -> None:
    """Save on every rank (collective) into directory ``path``, atomically.

    Every rank writes its shards into ``<path>.tmp``; after a barrier rank 0 renames it to
    ``path`` (replacing an older checkpoint there), so ``path`` is always complete or absent.

    Args:
        path: checkpoint directory (on a file system every rank sees).
        model: a DMP or plain module.
        optimizer: optional; its ``state_dict()`` is saved under ``"optim"``.
        extra: more state (tensors, numbers, nested dicts) saved under its own keys.
        meta: JSON-able values recorded in the checkpoint's ``manifest.json``.
        json_files: ``{file name: JSON-able value}`` rank 0 writes into the directory (covered
            by the manifest), e.g. a periodic checkpoint's progress record.
    """
    path = os.path.abspath(path).rstrip("/")
    tmp, old = path + ".tmp", path + ".old"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(path) and os.path.isdir(old):  # killed between the two renames below
            os.replace(old, path)
        shutil.rmtree(old, ignore_errors=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    _barrier()
    try:
        dcp.save(_state(model, optimizer, extra), checkpoint_id=tmp)
        _barrier()
        if _rank() == 0:
            for name, value in (json_files or {}).items():
                write_json(os.path.join(tmp, name), value)
            write_manifest(tmp, meta)  # written last: a directory with a valid manifest is complete
            _fsync_dir(tmp)
    except BaseException as e:  # CheckpointException is a BaseException
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint would keep a full disk full
        raise_if_disk_full(e, tmp)
        raise
    if _rank() == 0:
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def check_checkpoint(path: str) -> None:
    """Raise ``FileNotFoundError`` / ``ValueError`` naming ``path`` unless it is a complete,
    intact checkpoint: its manifest present (unless :func:`~umec_torchrec.io.trusting`) and
    every file's size and SHA-256 as recorded (hashed once per file and process)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no checkpoint directory")
    why = verify_checkpoint(path, hashes=True, require_manifest=True)
    if why is not None:
        raise ValueError(f"{path}: not a complete checkpoint: {why}")


def load_checkpoint(path: str, model: Optional[nn.Module], optimizer: Any = None,
                    extra: Optional[Dict[str, Any]] = None) -> None:
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
    state = _state(model, optimizer, None)
    # the extras are loaded on their own: with table-wise sharding a rank's state dict lacks
    # the other ranks' tables, and DCP then re-flattens the whole template the pre-2.4 way,
    # which turned nested non-tensor extras (a bytes leaf) into unknown keys
    parts = [state] if state else []
    if extra:
        parts.append(_state(None, None, extra))
    for part in parts:
        try:
            dcp.load(part, checkpoint_id=path, planner=WeightsOnlyLoadPlanner())
        except (Exception, CheckpointException) as e:  # CheckpointException (a BaseException): per-rank tracebacks
            msg = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise ValueError(f"{path}: cannot load checkpoint ({type(e).__name__}: {msg[-1] if msg else ''})") from e
        state.update(part)
    try:
        if model is not None:
            model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optim"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: checkpoint does not match the model/optimizer ({e})") from e
    if model is not None and not weights_finite(model):
        raise ValueError(f"{path}: the checkpoint holds non-finite weights (NaN/inf); refusing to use it")
    if extra is not None:
        for k in list(extra):
            extra[k] = state[k]


__all__ = ["save_checkpoint", "load_checkpoint", "WeightsOnlyLoadPlanner", "check_checkpoint", "verify_checkpoint",
           "write_manifest", "read_manifest", "MANIFEST"]
