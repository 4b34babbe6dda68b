"""Module surgery: the compact DLRM of a pruned one (kept tables, narrowed Linear layers).

The compact model is a normal model of the same kind (``dot``, ``dcn``, ``cat``) built by
:func:`umec_torchrec.models.build_dlrm` from :func:`compact_config`: its tables are the kept
features' tables only (a shared table once, kept while one of its features is), its hidden
widths the kept unit counts, and its first over-arch Linear reads only the interaction
columns that survive (``layout.kept_columns``):

* ``cat`` / ``dcn``: ``(F' + 1) D`` columns (dense block + one block per kept feature);
  the DCN cross kernels keep the same blocks (``V`` columns, ``W`` rows, ``bias`` entries);
* ``dot``: ``D + C(F' + 1, 2)`` columns; ``triu_indices`` order is preserved by taking a
  subset of the owners, so the kept columns (sorted) are exactly the compact model's order.

Because pruned units of the masked model output ``act(0) = 0`` into zero columns and pruned
features contribute empty (zero) bags, the compact model's logits equal the masked model's.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from umec_torchrec.models import ModelConfig, build_dlrm
from umec_torchrec.umec import layout
from umec_torchrec.umec.masks import PruningMasks


def table_key(cfg: ModelConfig, feature: str) -> str:
    """DLRM-relative state-dict key of ``feature``'s table."""
    return layout.feature_table_key(cfg, feature)


def check_masks(cfg: ModelConfig, masks: PruningMasks) -> None:
    """Raise ``ValueError`` when ``masks`` do not fit ``cfg`` or cannot be exported."""
    if list(masks.feature_names) != list(cfg.feature_names):
        raise ValueError(
            f"masks were made for features {masks.feature_names[:5]}... ({len(masks.feature_names)}), "
            f"the model has {cfg.feature_names[:5]}... ({len(cfg.feature_names)})"
        )
    if not masks.dense_kept:
        raise ValueError("exporting a model whose dense-arch output was pruned is not supported")
    if not masks.kept_features:
        raise ValueError(
            "the masks keep no sparse feature; a TorchRec DLRM needs at least one table, "
            "so this model cannot be exported"
        )
    widths = layout.prunable_widths(cfg)
    for name, kept in masks.layers.items():
        if name not in widths:
            raise ValueError(f"masks name layer {name!r}, the {cfg.kind} model has {sorted(widths)}")
        if masks.layer_widths.get(name) != widths[name]:
            raise ValueError(
                f"layer {name}: masks say width {masks.layer_widths.get(name)}, the model config has {widths[name]}"
            )


def compact_config(cfg: ModelConfig, masks: PruningMasks) -> ModelConfig:
    """The :class:`ModelConfig` of the compact model: kept features/tables, kept widths."""
    check_masks(cfg, masks)
    kept = set(masks.kept_features)
    names = [f for f in cfg.feature_names if f in kept]
    sizes = [n for f, n in zip(cfg.feature_names, cfg.table_sizes) if f in kept]
    # a shared table stays, once, while one of its features is kept (the same name: same keys)
    shared = {t: [f for f in fs if f in kept] for t, fs in cfg.table_features.items()}
    bottom = [len(masks.layers.get(layout.bottom_layer_name(i), range(w))) for i, w in enumerate(cfg.bottom[:-1])]
    top = [len(masks.layers.get(layout.top_layer_name(i), range(w))) for i, w in enumerate(cfg.top[:-1])]
    return dataclasses.replace(
        cfg, feature_names=names, table_sizes=sizes, bottom=bottom + [cfg.bottom[-1]], top=top + [cfg.top[-1]],
        table_features={t: fs for t, fs in shared.items() if fs},
    )


def skeleton(cfg: ModelConfig, pooling: Optional[Mapping[str, str]] = None) -> DLRM:
    """The DLRM of ``cfg`` with its tables on the ``meta`` device (no table memory):
    used to read the model's layout (layer names, interaction columns).

    Args:
        cfg: the model config.
        pooling: ``{table: "SUM" | "MEAN"}`` for tables not pooled as ``cfg`` builds them
            (a user's model, :func:`~umec_torchrec.export.module_config.module_config`).
    """
    dlrm = build_dlrm(cfg, device=torch.device("cpu"), tables_device=torch.device("meta"))
    configs = layout.embedding_configs(dlrm)
    pooling = {t: p for t, p in (pooling or {}).items() if any(c.name == t for c in configs)}
    if any(c.pooling.name != pooling.get(c.name, c.pooling.name) for c in configs):
        ebc = EmbeddingBagCollection(
            tables=[dataclasses.replace(c, pooling=PoolingType[pooling.get(c.name, c.pooling.name)]) for c in configs],
            device=torch.device("meta"))
        layout.set_embedding_bag_collection(dlrm, ebc)
    return dlrm


def table_poolings(dlrm: DLRM) -> Dict[str, str]:
    """``{table: pooling name}`` (``"SUM"``, ``"MEAN"``...) of every table of ``dlrm``, in model order."""
    return {c.name: c.pooling.name for c in layout.embedding_configs(dlrm)}


def index_plan(cfg: ModelConfig, masks: PruningMasks) -> Dict[str, Tuple[Optional[torch.Tensor],
                                                                         Optional[torch.Tensor]]]:
    """For every dense parameter of the full model (DLRM-relative key), the indices kept along
    dim 0 and dim 1 (``None`` = all). Table keys of kept features map to ``(None, None)``;
    pruned tables are absent."""
    check_masks(cfg, masks)
    sk = skeleton(cfg)
    names = {id(m): n for n, m in sk.named_modules()}
    rows: Dict[int, torch.Tensor] = {}
    cols: Dict[int, torch.Tensor] = {}
    for h in layout.hidden_layers(sk):
        if h.name in masks.layers:
            idx = torch.as_tensor(masks.layers[h.name], dtype=torch.long)
            rows[id(h.linear)] = idx
            cols[id(h.next)] = idx
    first = layout.first_top_linear(sk)
    cols[id(first)] = layout.kept_columns(sk, masks.kept_features, masks.dense_kept)

    plan: Dict[str, Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = {}
    for f in masks.kept_features:  # a shared table has one key for all its features
        plan[table_key(cfg, f)] = (None, None)
    for mod_name, mod in sk.named_modules():
        if isinstance(mod, nn.Linear):
            r, c = rows.get(id(mod)), cols.get(id(mod))
            plan[f"{mod_name}.weight"] = (r, c)
            if mod.bias is not None:
                plan[f"{mod_name}.bias"] = (r, None)
    cn = layout.cross_net(sk)
    if cn is not None:
        blk = layout.block_incidence(sk, include_dense=True)  # [(F+1) D, F+1]
        kept = set(masks.kept_features)
        alive = torch.tensor([True] + [f in kept for f in cfg.feature_names])
        keep = torch.nonzero(blk[:, alive].sum(1) > 0).flatten()
        cn_name = names[id(cn)]
        for i in range(len(cn.V_kernels)):
            plan[f"{cn_name}.V_kernels.{i}"] = (None, keep)
            plan[f"{cn_name}.W_kernels.{i}"] = (keep, None)
            plan[f"{cn_name}.bias.{i}"] = (keep, None)
    missing = {k for k, _ in sk.named_parameters() if not layout.is_table_key(k)} - set(plan)
    if missing:  # a parameter the surgery does not know how to slice
        raise NotImplementedError(f"no slicing rule for parameters {sorted(missing)}")
    return plan


def expected_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """DLRM-relative key -> shape of every parameter of the full model of ``cfg``."""
    sk = skeleton(cfg)
    out = {k: tuple(v.shape) for k, v in sk.state_dict().items()}
    return out


def slice_kept(t: torch.Tensor, r: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> torch.Tensor:
    """``t`` with only the rows ``r`` and the columns ``c`` kept (``None``: all), one entry
    of :func:`index_plan` applied."""
    if r is not None:
        t = t.index_select(0, r)
    if c is not None:
        t = t.index_select(1, c)
    return t


def compact_state_dict(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig, masks: PruningMasks
) -> Dict[str, torch.Tensor]:
    """Slice a full DLRM state dict (DLRM-relative keys; pruned tables may be absent) into the
    compact model's state dict. Kept tables are passed through without a copy."""
    plan = index_plan(cfg, masks)
    missing = [k for k in plan if k not in state]
    if missing:
        raise KeyError(f"state dict lacks {len(missing)} needed keys, e.g. {missing[:3]}")
    shapes = expected_shapes(cfg)
    for k in plan:
        if tuple(state[k].shape) != shapes[k]:
            raise ValueError(
                f"{k}: shape {tuple(state[k].shape)} does not match the model config ({shapes[k]}); "
                "state dict from another architecture?"
            )
    # table names (t_<feature>) and module paths are unchanged by compaction
    return {k: slice_kept(state[k].detach(), r, c) for k, (r, c) in plan.items()}


def build_compact(
    source: "DLRM | Mapping[str, torch.Tensor]", cfg: ModelConfig, masks: PruningMasks
) -> DLRM:
    """The compact DLRM of ``source`` (a full DLRM or its DLRM-relative state dict).

    Args:
        source: the trained model (masked or not: pruned weights are dropped either way).
        cfg: the full model's config.
        masks: what survives.

    Returns:
        a DLRM of kind ``cfg.kind`` with the kept tables and narrowed Linear layers, in eval
        mode. It accepts the original KJT (extra keys are ignored) or one with the kept keys.
    """
    pooling = table_poolings(source) if isinstance(source, DLRM) else None
    state = source.state_dict() if isinstance(source, nn.Module) else source
    sd = compact_state_dict(state, cfg, masks)
    ccfg = compact_config(cfg, masks)
    model = skeleton(ccfg, pooling)
    model.load_state_dict(sd, assign=True, strict=True)
    return model.eval()


def tag_config(dlrm: DLRM, cfg: ModelConfig) -> DLRM:
    """Attach ``cfg`` to ``dlrm`` as ``.umec_config`` (what :func:`config_of` reads); returns ``dlrm``."""
    dlrm.umec_config = cfg  # type: ignore[attr-defined]
    return dlrm


def config_of(dlrm: DLRM) -> ModelConfig:
    """The :class:`ModelConfig` a compact model carries (:func:`tag_config`, set by
    ``export_model`` and ``load_compact``); ``ValueError`` if it carries none."""
    cfg = getattr(dlrm, "umec_config", None)
    if cfg is None:
        raise ValueError("the model carries no ModelConfig (load it with load_compact, or tag it with tag_config)")
    return cfg


def kept_feature_indices(cfg: ModelConfig, masks: PruningMasks) -> List[int]:
    """Positions of the kept features among ``cfg.feature_names`` (for ``kjt.permute``)."""
    kept = set(masks.kept_features)
    return [i for i, f in enumerate(cfg.feature_names) if f in kept]


def full_masks(cfg: ModelConfig) -> PruningMasks:
    """Masks that keep everything (export of an uncompressed run)."""
    return PruningMasks(feature_names=list(cfg.feature_names), kept_features=list(cfg.feature_names))


__all__ = [
    "table_key",
    "check_masks",
    "compact_config",
    "skeleton",
    "table_poolings",
    "index_plan",
    "expected_shapes",
    "slice_kept",
    "compact_state_dict",
    "build_compact",
    "tag_config",
    "config_of",
    "kept_feature_indices",
    "full_masks",
]
