"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): they load on any world size.

Layout of the saved state: ``{"model": model.state_dict(), "optim": optimizer.state_dict(),
**extra}``. For a DMP model the state-dict keys equal the unsharded ``DLRMTrain``'s, and
sharded tables are ``ShardedTensor``s, so DCP reshards on load (2 ranks -> 1 rank, or into a
plain unsharded model).

Every checkpoint directory is complete or absent: the ranks write into ``<path>.tmp``, rank 0
adds ``manifest.json`` (size and SHA-256 of every file) last and renames the directory into
place. :func:`verify_checkpoint` re-checks a directory against its manifest, so a torn or
corrupted checkpoint is detected before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Dict, Optional

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from umec_torchrec.distributed import barrier as _barrier
from umec_torchrec.distributed import get_rank as _rank
from umec_torchrec.io import write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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


def write_manifest(path: str, meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``path/manifest.json``: size and SHA-256 of every other file, plus ``meta``."""
    files = {}
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        if name == MANIFEST or not os.path.isfile(f):
            continue
        files[name] = {"size": os.path.getsize(f), "sha256": _sha256(f)}
    write_json(os.path.join(path, MANIFEST), {"format": MANIFEST_FORMAT, "complete": True, "files": files,
                                              **(meta or {})})


def read_manifest(path: str) -> Optional[Dict[str, Any]]:
    """The manifest of checkpoint ``path`` (``None`` when it has none or it is unreadable)."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def verify_checkpoint(path: str, hashes: bool = True, require_manifest: bool = True) -> Optional[str]:
    """Why ``path`` is not a complete, intact checkpoint, or ``None`` when it is.

    Checks that the directory and DCP's ``.metadata`` exist and, when there is a manifest
    (required unless ``require_manifest`` is false, for checkpoints of older versions), that
    every listed file exists with the listed size and (``hashes``) SHA-256.
    """
    if not os.path.isdir(path):
        return "no checkpoint directory"
    if not os.path.isfile(os.path.join(path, ".metadata")):
        return "no .metadata file (incomplete torch.distributed.checkpoint directory)"
    has = os.path.exists(os.path.join(path, MANIFEST))
    if not has:
        return "no manifest.json (incomplete checkpoint)" if require_manifest else None
    m = read_manifest(path)
    if m is None or not m.get("complete") or not isinstance(m.get("files"), dict):
        return "manifest.json is unreadable or incomplete"
    for name, rec in m["files"].items():
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            return f"file {name} is missing"
        size = os.path.getsize(f)
        if size != rec.get("size"):
            return f"file {name} has {size} bytes, expected {rec.get('size')} (truncated or corrupt)"
        if hashes and _sha256(f) != rec.get("sha256"):
            return f"file {name} does not match its SHA-256 (corrupt)"
    return None


def save_checkpoint(path: str, model: nn.Module, optimizer: Any = None, extra: Optional[Dict[str, Any]] = None,
                    meta: Optional[Dict[str, Any]] = None) -> None:
    """Save on every rank (collective) into directory ``path``, atomically.

    Every rank writes its shards into ``<path>.tmp``; after a barrier rank 0 renames it to
    ``path`` (replacing an older checkpoint there), so ``path`` is always complete or absent.

    Args:
        path: checkpoint directory (on a file system every rank sees).
        model: a DMP or plain module.
        optimizer: optional; its ``state_dict()`` is saved under ``"optim"``.
        extra: more state (tensors, numbers, nested dicts) saved under its own keys.
        meta: JSON-able values recorded in the checkpoint's ``manifest.json``.
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
        write_manifest(tmp, meta)  # written last: a directory with a valid manifest is complete
        _fsync_dir(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def check_checkpoint(path: str) -> None:
    """Raise ``FileNotFoundError`` / ``ValueError`` naming ``path`` unless it looks like a
    complete DCP checkpoint."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no checkpoint directory")
    why = verify_checkpoint(path, hashes=False, require_manifest=False)
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
    # which turns nested non-tensor extras ({"umec": {"blob": b""}}) into unknown keys
    parts = [state] if state else []
    if extra:
        parts.append(_state(None, None, extra))
    for part in parts:
        try:
            dcp.load(part, checkpoint_id=path)
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
    if extra is not None:
        for k in list(extra):
            extra[k] = state[k]


__all__ = ["save_checkpoint", "load_checkpoint", "check_checkpoint", "verify_checkpoint", "write_manifest",
           "read_manifest", "MANIFEST"]
