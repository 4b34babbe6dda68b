"""Read the tensors an export needs from a ``torch.distributed.checkpoint`` directory.

A run's checkpoint may have been written by any number of ranks, with tables sharded
table-, column-wise or replicated. DCP's ``FileSystemReader`` reads only the storage items of
the keys asked for (each item is a byte range of a ``.distcp`` file, deserialised on its own),
so asking for the kept tables and the dense parameters means a pruned table is never read
into memory. No process group is needed (``no_dist=True``).

Keys: the trainer saves ``{"model": <DMP or DLRMTrain>.state_dict()}``, so DLRM parameters
appear as ``model.model.<DLRM-relative key>``; the prefix is detected from the metadata.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from umec_torchrec.export.compact import expected_shapes, index_plan, table_key
from umec_torchrec.io import verify_manifest
from umec_torchrec.models import ModelConfig
from umec_torchrec.umec import layout
from umec_torchrec.umec.layout import TABLE_PREFIX
from umec_torchrec.umec.masks import PruningMasks


def read_metadata(ckpt_dir: str) -> Metadata:
    """The DCP metadata of ``ckpt_dir``, with clear errors for a missing or foreign directory."""
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir}: checkpoint directory does not exist")
    if not os.path.isfile(os.path.join(ckpt_dir, ".metadata")):
        raise ValueError(f"{ckpt_dir}: not a torch.distributed.checkpoint directory (no .metadata file)")
    try:
        return FileSystemReader(ckpt_dir).read_metadata()
    except Exception as e:  # pickle/EOF/... errors of a torn or foreign file
        raise ValueError(f"{ckpt_dir}/.metadata: corrupt checkpoint metadata ({type(e).__name__}: {e})") from None


def verify_files(ckpt_dir: str) -> None:
    """``ValueError`` naming ``ckpt_dir`` unless every file listed in its ``manifest.json``
    has the recorded size and SHA-256 (a missing manifest too, unless
    :func:`~umec_torchrec.io.trusting`)."""
    why = verify_manifest(ckpt_dir, hashes=True, require=True)
    if why is not None:
        raise ValueError(f"{ckpt_dir}: not a complete, intact checkpoint: {why}")


def tensor_shapes(meta: Metadata) -> Dict[str, Tuple[int, ...]]:
    """Flattened checkpoint key -> full (global) tensor shape."""
    return {
        k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)
    }


def dlrm_prefix(shapes: Mapping[str, Tuple[int, ...]], ckpt_dir: str = "checkpoint") -> str:
    """The key prefix in front of DLRM-relative keys (``"model.model."`` for the trainer's layout)."""
    marker = TABLE_PREFIX
    # optimizer state ("optim.state.<fqn>...") repeats the parameter FQNs: only model keys count
    prefixes = {k[: k.index(marker)] for k in shapes if marker in k and not k.startswith("optim.")}
    if not prefixes:
        raise ValueError(f"{ckpt_dir}: the checkpoint holds no DLRM embedding tables (keys like "
                         f"'...{marker}t_<feature>.weight')")
    if len(prefixes) > 1:
        raise ValueError(f"{ckpt_dir}: the checkpoint holds several DLRMs (prefixes {sorted(prefixes)})")
    return prefixes.pop()


def check_architecture(shapes: Mapping[str, Tuple[int, ...]], prefix: str, cfg: ModelConfig, ckpt_dir: str) -> None:
    """Every parameter of ``cfg``'s model must be in the checkpoint with the same shape, and the
    checkpoint must hold no other table."""
    expected = expected_shapes(cfg)
    for k, shape in expected.items():
        got = shapes.get(prefix + k)
        if got is None:
            raise ValueError(
                f"{ckpt_dir}: checkpoint from another architecture: it has no '{prefix + k}' "
                f"(the {cfg.kind} model config needs it)"
            )
        if tuple(got) != tuple(shape):
            if layout.is_table_key(k) and got[1:] == shape[1:]:
                diff = f"{layout.table_of_key(k)} has {got[0]} rows, config says {shape[0]}"
            else:
                diff = f"{k} has shape {tuple(got)}, config says {tuple(shape)}"
            raise ValueError(f"{ckpt_dir}: checkpoint from another architecture: {diff}")
    extra_tables = sorted(
        k[len(prefix) + len(TABLE_PREFIX):] for k in shapes
        if k.startswith(prefix + TABLE_PREFIX) and k[len(prefix):] not in expected
    )
    if extra_tables:
        raise ValueError(f"{ckpt_dir}: checkpoint from another architecture: tables {extra_tables[:5]} are not in the "
                         f"model config")


def load_tensors(ckpt_dir: str, keys: Iterable[str], shapes: Mapping[str, Tuple[int, ...]],
                 dtypes: Optional[Mapping[str, torch.dtype]] = None) -> Dict[str, torch.Tensor]:
    """Load exactly ``keys`` (flattened checkpoint keys) into fresh CPU tensors; nothing else is read."""
    sd = {k: torch.empty(shapes[k], dtype=(dtypes or {}).get(k, torch.float32)) for k in keys}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(sd, storage_reader=FileSystemReader(ckpt_dir), no_dist=True)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        msg = str(e).strip().splitlines()
        raise ValueError(
            f"{ckpt_dir}: corrupt checkpoint data ({type(e).__name__}: {msg[-1] if msg else ''})"
        ) from None
    return sd


def load_dlrm_state(ckpt_dir: str, cfg: ModelConfig, masks: PruningMasks) -> Dict[str, torch.Tensor]:
    """The DLRM-relative state dict an export of ``(cfg, masks)`` needs: every dense parameter
    and the kept tables only (a pruned table is never read).

    Raises:
        FileNotFoundError: no such directory.
        ValueError: not a DCP checkpoint, corrupt, or from another architecture.
    """
    meta = read_metadata(ckpt_dir)
    shapes = tensor_shapes(meta)
    prefix = dlrm_prefix(shapes, ckpt_dir)
    check_architecture(shapes, prefix, cfg, ckpt_dir)
    needed = list(index_plan(cfg, masks))
    dtypes = {
        prefix + k: meta.state_dict_metadata[prefix + k].properties.dtype for k in needed
    }
    loaded = load_tensors(ckpt_dir, [prefix + k for k in needed], shapes, dtypes)
    for k, v in loaded.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{ckpt_dir}: the checkpoint holds non-finite weights (NaN/inf) in {k}; refusing to "
                             "export it")
    return {k[len(prefix):]: v for k, v in loaded.items()}


def pruned_table_keys(cfg: ModelConfig, masks: PruningMasks) -> Dict[str, str]:
    """Feature -> DLRM-relative table key of every pruned feature (for checks and tests)."""
    return {f: table_key(cfg, f) for f in masks.pruned_features}


__all__ = [
    "read_metadata",
    "verify_files",
    "tensor_shapes",
    "dlrm_prefix",
    "check_architecture",
    "load_tensors",
    "load_dlrm_state",
    "pruned_table_keys",
]
