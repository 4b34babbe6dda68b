"""The compact fine-tuning model: the physically smaller DLRM of a set of masks (kept tables,
narrowed layers), sharded with DMP and loaded from a full or compact checkpoint.

:class:`CompactArch` ties the original dense :class:`ModelConfig` and its masks to the compact
config (:func:`~umec_torchrec.export.compact.compact_config`). :func:`load_compact_state`
fills a compact DMP and its optimizer from a run's checkpoint without building the full
model: every tensor whose shape the compaction keeps (the kept tables and their optimizer
state, sharded or not; unsliced dense parameters) is loaded by DCP straight into this world
size's shards, and only the dense parameters that lose rows or columns (and their optimizer
state) are read whole (:func:`~umec_torchrec.export.checkpoint_reader.load_tensors`) and
sliced by :func:`~umec_torchrec.export.compact.index_plan`. A pruned table is never read.
:class:`KeepFeatures` reduces a batch to the compact model's features.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.export.checkpoint_reader import (
    check_architecture,
    dlrm_prefix,
    load_tensors,
    read_metadata,
    tensor_shapes,
)
from umec_torchrec.export.compact import check_masks, compact_config, index_plan, slice_kept
from umec_torchrec.models import ModelConfig
from umec_torchrec.train.checkpoint import check_checkpoint
from umec_torchrec.train.guard import weights_finite
from umec_torchrec.umec import layout
from umec_torchrec.umec.masks import PruningMasks
from umec_torchrec.umec.tables import local_parts

__all__ = ["CompactArch", "KeepFeatures", "load_compact_state", "table_state_bytes"]

#: ``config.json["umec"]`` keys of a compact fine-tuned run: the original dense model and masks
DENSE_MODEL_KEY = "dense_model"
DENSE_MASKS_KEY = "dense_masks"
#: the DMP state-dict prefix in front of DLRM-relative keys (``DLRMTrain.model``)
_DMP_PREFIX = "model."


@dataclass(frozen=True)
class CompactArch:
    """The compact model of a dense model and its masks.

    Args:
        dense: the original (dense) model's config.
        masks: what survives, relative to ``dense``.
        config: the compact model's config (``compact_config(dense, masks)``).

    Example::

        arch = CompactArch.of(run.model_config(), masks)
        dmp, opt = build_training(arch.config, tcfg, ctx, tables_on_meta=True)
        load_compact_state(src.checkpoint_dir, src.model_config(), arch, dmp, opt)
        loss, _ = dmp(arch.keep_features(batch))
    """

    dense: ModelConfig
    masks: PruningMasks
    config: ModelConfig

    @classmethod
    def of(cls, dense: ModelConfig, masks: PruningMasks) -> "CompactArch":
        """The compact architecture of ``(dense, masks)``; ``ValueError`` when the masks do not
        fit ``dense`` or leave nothing a compact DLRM can hold (the dense-arch output pruned,
        no sparse feature kept)."""
        check_masks(dense, masks)
        return cls(dense, masks, compact_config(dense, masks))

    @classmethod
    def from_record(cls, umec: Mapping[str, Any]) -> Optional["CompactArch"]:
        """The architecture a compact fine-tuned run recorded in ``config.json["umec"]``
        (:meth:`record`), or ``None`` when it recorded none."""
        if not umec or DENSE_MODEL_KEY not in umec:
            return None
        return cls.of(ModelConfig.from_dict(dict(umec[DENSE_MODEL_KEY])),
                      PruningMasks.from_dict(dict(umec[DENSE_MASKS_KEY])))

    def record(self) -> Dict[str, Any]:
        """``{"dense_model": ..., "dense_masks": ...}`` for ``config.json["umec"]``."""
        return {DENSE_MODEL_KEY: self.dense.to_dict(), DENSE_MASKS_KEY: self.masks.to_dict()}

    @property
    def compact_masks(self) -> PruningMasks:
        """Masks of the compact model that keep every one of its groups (its ``masks.json``)."""
        widths = layout.prunable_widths(self.config)
        return PruningMasks(feature_names=list(self.config.feature_names),
                            kept_features=list(self.config.feature_names),
                            layers={k: list(range(w)) for k, w in widths.items()}, layer_widths=widths)

    @property
    def keep_features(self) -> "KeepFeatures":
        """The batch transform that leaves the compact model's features only."""
        return KeepFeatures(self.config.feature_names)

    def masks_for(self, cfg: ModelConfig) -> PruningMasks:
        """The masks that take a checkpoint of ``cfg`` (the dense model, or this compact model)
        to this compact model; ``ValueError`` for any other architecture."""
        if cfg == self.dense:
            return self.masks
        if cfg == self.config:
            return self.compact_masks
        raise ValueError(f"a checkpoint of a {cfg.kind} model with {len(cfg.feature_names)} features, bottom "
                         f"{cfg.bottom}, top {cfg.top} is neither the dense model of these masks (bottom "
                         f"{self.dense.bottom}, top {self.dense.top}) nor their compact model (bottom "
                         f"{self.config.bottom}, top {self.config.top})")


class KeepFeatures:
    """Reduces a batch's ``KeyedJaggedTensor`` to the given features, in that order
    (``kjt.permute`` with a subset of the key indices: the other keys' ids are dropped, not
    sent to the sharded tables).

    Args:
        features: the features to keep (the compact model's ``feature_names``).

    Example::

        keep = KeepFeatures(["C1", "C7"])
        batch = keep(batch)   # torchrec Batch (sparse_features) or a KeyedJaggedTensor
    """

    def __init__(self, features: Sequence[str]) -> None:
        self.features: List[str] = list(features)
        self._cache: Optional[Tuple[List[str], List[int], torch.Tensor]] = None

    def _indices(self, keys: List[str]) -> Tuple[List[int], torch.Tensor]:
        cache = self._cache
        if cache is None or cache[0] != keys:
            pos = {k: i for i, k in enumerate(keys)}
            missing = [f for f in self.features if f not in pos]
            if missing:
                raise KeyError(f"the batch lacks features {missing[:5]} of the compact model (it has {keys[:5]}...)")
            idx = [pos[f] for f in self.features]
            cache = (list(keys), idx, torch.tensor(idx, dtype=torch.int32))
            self._cache = cache
        return cache[1], cache[2]

    def filter_kjt(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """``kjt`` with the kept keys only (the same object when it has exactly those)."""
        keys = kjt.keys()
        if keys == self.features:
            return kjt
        idx, idx_t = self._indices(keys)
        return kjt.permute(idx, idx_t.to(kjt.lengths().device))

    def __call__(self, batch: Any) -> Any:
        """``batch`` with its sparse features reduced (a new object; ``batch`` is unchanged)."""
        if isinstance(batch, KeyedJaggedTensor):
            return self.filter_kjt(batch)
        kjt = getattr(batch, "sparse_features", None)
        if not isinstance(kjt, KeyedJaggedTensor) or not dataclasses.is_dataclass(batch):
            raise TypeError(f"KeepFeatures: expected a KeyedJaggedTensor or a torchrec Batch, got "
                            f"{type(batch).__name__}")
        return dataclasses.replace(batch, sparse_features=self.filter_kjt(kjt))


def _relative(key: str) -> str:
    if not key.startswith(_DMP_PREFIX):
        raise ValueError(f"unexpected state-dict key {key!r} (expected '{_DMP_PREFIX}<DLRM key>')")
    return key[len(_DMP_PREFIX):]


def load_compact_state(ckpt_dir: str, source_cfg: ModelConfig, arch: CompactArch, model: nn.Module,
                       optimizer: Any = None) -> Dict[str, int]:
    """Fill the compact ``model`` (a DMP built from ``arch.config``, any world size) and its
    ``optimizer`` from the checkpoint ``ckpt_dir`` of a ``source_cfg`` model (the dense model of
    ``arch``, or its compact model), in place. Collective (every rank calls it).

    Tensors whose shape the compaction keeps go straight from the checkpoint into this rank's
    shards (DCP reshards); the dense parameters that lose units or columns, and their optimizer
    state of the same shape, are read whole on every rank and sliced; a pruned table is never
    read. Scalar optimizer state (``step``) is taken as saved.

    Args:
        ckpt_dir: the source run's ``checkpoint/``.
        source_cfg: the model config the checkpoint was written for.
        arch: the compact architecture.
        model: the compact DMP.
        optimizer: its optimizer (``None``: weights only).

    Returns:
        ``{"direct": tensors loaded into shards, "sliced": tensors read whole and sliced}``.

    Raises:
        ValueError: a checkpoint of another architecture, a corrupt or incomplete one, or
            non-finite weights.
    """
    source_masks = arch.masks_for(source_cfg)
    check_checkpoint(ckpt_dir)
    meta = read_metadata(ckpt_dir)
    shapes = tensor_shapes(meta)
    prefix = dlrm_prefix(shapes, ckpt_dir)  # "model.model." for the trainer's layout
    check_architecture(shapes, prefix, source_cfg, ckpt_dir)
    plan = index_plan(source_cfg, source_masks)
    top = prefix[: -len(_DMP_PREFIX)] if prefix.endswith(_DMP_PREFIX) else prefix  # "model."
    model_sd = model.state_dict()
    # sorted kept indices: a slice that keeps the shape is the identity
    sliced = {k for k, (r, c) in plan.items() if (r is not None or c is not None)
              and tuple(shapes[prefix + k]) != tuple(model_sd[_DMP_PREFIX + k].size())}
    optim_sd = optimizer.state_dict() if optimizer is not None else None
    if optim_sd is not None and set(optim_sd) - {"state"}:
        raise ValueError(f"optimizer state with sections {sorted(optim_sd)} is not supported (expected 'state')")

    direct: Dict[str, Any] = {"model": {}}
    whole: Dict[str, Tuple[str, Optional[str]]] = {}  # checkpoint key -> (relative param key, state name)
    for k in model_sd:
        rel = _relative(k)
        if rel in sliced:
            whole[top + k] = (rel, None)
        else:
            direct["model"][k] = model_sd[k]
    if optim_sd is not None:
        direct["optim"] = {"state": {}}
        for k, st in optim_sd["state"].items():
            rel = _relative(k)
            if rel in sliced:
                for name in st:
                    whole[f"optim.state.{k}.{name}"] = (rel, name)
            else:
                direct["optim"]["state"][k] = st
    missing = [k for k in whole if k not in shapes]
    if missing:
        raise ValueError(f"{ckpt_dir}: the checkpoint lacks {missing[:3]} (written with another optimizer?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(direct, checkpoint_id=ckpt_dir)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        msg = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise ValueError(f"{ckpt_dir}: cannot load checkpoint ({type(e).__name__}: {msg[-1] if msg else ''})") from e
    dtypes = {k: meta.state_dict_metadata[k].properties.dtype for k in whole}
    loaded = load_tensors(ckpt_dir, list(whole), shapes, dtypes)

    new_model = dict(direct["model"])
    new_state = dict(direct["optim"]["state"]) if optim_sd is not None else {}
    for key, t in loaded.items():
        rel, name = whole[key]
        r, c = plan[rel]
        param_shape = shapes[prefix + rel]
        v = slice_kept(t, r, c) if tuple(t.shape) == tuple(param_shape) else t
        dmp_key = _DMP_PREFIX + rel
        if name is None:
            want = model_sd[dmp_key]
            if tuple(v.shape) != tuple(want.shape):
                raise ValueError(f"{ckpt_dir}: {rel} sliced to {tuple(v.shape)}, the compact model has "
                                 f"{tuple(want.shape)}")
            new_model[dmp_key] = v.to(want.dtype)
        else:
            want = optim_sd["state"][dmp_key][name]  # type: ignore[index]
            new_state.setdefault(dmp_key, {})[name] = v.to(want.dtype).reshape(want.shape)
    try:
        model.load_state_dict(new_model)
        if optimizer is not None:
            optimizer.load_state_dict({"state": new_state})
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{ckpt_dir}: checkpoint does not match the compact model/optimizer ({e})") from e
    if not weights_finite(model):
        raise ValueError(f"{ckpt_dir}: the checkpoint holds non-finite weights (NaN/inf); refusing to use it")
    return {"direct": _count(direct), "sliced": len(whole)}


def _count(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_count(v) for v in tree.values())
    return 1


def table_state_bytes(model: nn.Module, optimizer: Any = None) -> int:
    """Bytes this rank holds for the embedding tables of ``model`` (local shards or replicas),
    plus their optimizer state when ``optimizer`` is given."""

    def nbytes(t: Any) -> int:
        return sum(p.numel() * p.element_size() for p in local_parts(t))

    total = 0
    for k, v in model.state_dict().items():
        if layout.is_table_key(_relative(k)):
            total += nbytes(v)
    if optimizer is not None:
        for k, st in optimizer.state_dict()["state"].items():
            if layout.is_table_key(_relative(k)):
                total += sum(nbytes(t) for t in st.values() if isinstance(t, torch.Tensor))
    return int(total)
