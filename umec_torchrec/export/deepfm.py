"""Export surgery and serving program for torchrec's ``SimpleDeepFMNN`` declared with
``declare_groups`` (EBC + concatenation + MLP).

The declared structure (``declare_groups`` docstring): the features are blocks of the deep
Linear's input ``[dense | e_1 | ... | e_F]`` (block ``k + 1`` for feature ``k``, ``D`` columns
each), and the deep Linear's units are columns ``D + j`` of the over Linear, which reads
``[dense (D) | deep (U) | fm (1)]``. The compact model is a ``SimpleDeepFMNN`` with

* the kept features' tables only (a shared table keeps its kept features' names);
* the deep Linear's kept rows (units) and kept input blocks (dense + kept features);
* the over Linear's columns of the dense block, the kept units and the FM term.

It equals the masked model: a pruned feature's embedding block is zero in the masked model,
and the FM term ``0.5 ((sum x)^2 - sum x^2)`` over the flattened ``x`` of a zero block is
the same as without it; a pruned unit outputs ``relu(0) = 0`` into a zero column.

The masks' one unit layer (any name: the declared chain has one hidden layer) is the deep
Linear's; the dense arch is not pruned. Other declared models have no surgery
(:func:`~umec_torchrec.export.module_config.module_config` names what it found).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn
from torchrec.models.deepfm import SimpleDeepFMNN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from umec_torchrec.export.served_tables import ServedTables
from umec_torchrec.umec import layout
from umec_torchrec.umec.masks import PruningMasks

KIND = "deepfm"


def find_deepfm(model: nn.Module) -> "SimpleDeepFMNN | None":
    """The (first) ``SimpleDeepFMNN`` inside ``model``, else ``None``."""
    return next((m for m in model.modules() if isinstance(m, SimpleDeepFMNN)), None)


def feature_names(fm: SimpleDeepFMNN) -> List[str]:
    """The model's sparse features, in the deep Linear's block order."""
    return list(fm.inter_arch.sparse_feature_names)


def deepfm_config(fm: SimpleDeepFMNN) -> Dict[str, Any]:
    """The JSON-able config that rebuilds ``fm`` (:func:`build_deepfm`)."""
    return {
        "num_dense_features": int(fm.dense_arch.model[0].in_features),
        "hidden_layer_size": int(fm.dense_arch.model[0].out_features),
        "deep_fm_dimension": int(fm.inter_arch.deep_fm.dense_module[0].out_features),
        "tables": [{"name": c.name, "num_embeddings": int(c.num_embeddings), "embedding_dim": int(c.embedding_dim),
                    "feature_names": list(c.feature_names), "pooling": c.pooling.name}
                   for c in layout.embedding_configs(fm)],
    }


def build_deepfm(cfg: Dict[str, Any]) -> SimpleDeepFMNN:
    """A ``SimpleDeepFMNN`` of :func:`deepfm_config` ``cfg``, tables on the ``meta`` device
    (load a state dict with ``assign=True``)."""
    tables = [EmbeddingBagConfig(name=t["name"], num_embeddings=t["num_embeddings"], embedding_dim=t["embedding_dim"],
                                 feature_names=list(t["feature_names"]), pooling=PoolingType[t["pooling"]])
              for t in cfg["tables"]]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    return SimpleDeepFMNN(cfg["num_dense_features"], ebc, cfg["hidden_layer_size"], cfg["deep_fm_dimension"])


def kept_units(fm: SimpleDeepFMNN, masks: PruningMasks) -> torch.Tensor:
    """The deep Linear's kept units (all when the masks prune no unit); ``ValueError`` when the
    masks name more than one layer or another width."""
    width = int(fm.inter_arch.deep_fm.dense_module[0].out_features)
    if not masks.layers:
        return torch.arange(width)
    if len(masks.layers) != 1:
        raise ValueError("SimpleDeepFMNN has one prunable layer (the deep Linear), the masks name "
                         f"{sorted(masks.layers)}")
    (name, kept), = masks.layers.items()
    if masks.layer_widths.get(name) != width:
        raise ValueError(f"masks layer {name!r} has width {masks.layer_widths.get(name)}, the deep Linear {width}")
    return torch.as_tensor(kept, dtype=torch.long)


def compact_deepfm(fm: SimpleDeepFMNN, masks: PruningMasks) -> Tuple[SimpleDeepFMNN, Dict[str, Any]]:
    """``(the compact SimpleDeepFMNN in eval mode, its config)`` of ``fm`` under ``masks``.

    Example::

        spec = declare_groups(deep, {f: range(D * (k + 1), D * (k + 2)) for k, f in enumerate(names)},
                              chain=[(over, D)], feature_tables=feature_tables(fm))
        ...  # compress, finalize -> masks
        compact, cfg = compact_deepfm(fm, masks)
    """
    names = feature_names(fm)
    if list(masks.feature_names) != names:
        raise ValueError(f"masks were made for features {masks.feature_names[:5]}..., the model has {names[:5]}...")
    if not masks.kept_features:
        raise ValueError("the masks keep no sparse feature; a SimpleDeepFMNN needs at least one table")
    kept = set(masks.kept_features)
    units = kept_units(fm, masks)
    cfg = deepfm_config(fm)
    d = layout.embedding_configs(fm)[0].embedding_dim
    tables = []
    for t in cfg["tables"]:
        feats = [f for f in t["feature_names"] if f in kept]
        if feats:
            tables.append({**t, "feature_names": feats})
    ccfg = {**cfg, "tables": tables, "deep_fm_dimension": int(units.numel())}
    blocks = [0] + [k + 1 for k, f in enumerate(names) if f in kept]
    cols = (torch.tensor(blocks).unsqueeze(1) * d + torch.arange(d)).flatten()
    u_full = int(cfg["deep_fm_dimension"])
    over_cols = torch.cat([torch.arange(d), d + units, torch.tensor([d + u_full])])
    sd = fm.state_dict()
    out: Dict[str, torch.Tensor] = {}
    deep, over = "inter_arch.deep_fm.dense_module.0", "over_arch.model.0"
    for k, v in sd.items():
        v = v.detach()
        if k.startswith(layout.TABLE_PREFIX):
            if layout.table_of_key(k) in {t["name"] for t in tables}:
                out[k] = v
        elif k == f"{deep}.weight":
            out[k] = v.index_select(0, units).index_select(1, cols)
        elif k == f"{deep}.bias":
            out[k] = v.index_select(0, units)
        elif k == f"{over}.weight":
            out[k] = v.index_select(1, over_cols)
        else:
            out[k] = v
    compact = build_deepfm(ccfg)
    compact.load_state_dict(out, strict=True, assign=True)
    return compact.eval(), ccfg


def fm_term(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1]``: torchrec's ``FactorizationMachine`` on the flattened input ``x [B, C]``."""
    s = x.sum(dim=1, keepdim=True)
    return 0.5 * (s * s - (x * x).sum(dim=1, keepdim=True))


class DeepFMPredictor(nn.Module):
    """``forward(dense [B, n_dense], ids [B, F]) -> output [B]`` of a ``SimpleDeepFMNN`` (its
    sigmoid output, as the model returns it), tables served by ``served``.

    Example::

        pred = DeepFMPredictor(compact, served_tables(compact)).eval()
    """

    def __init__(self, fm: SimpleDeepFMNN, served: ServedTables) -> None:
        super().__init__()
        self.feature_names = feature_names(fm)
        if served.feature_names != self.feature_names:
            raise ValueError(f"served tables hold features {served.feature_names}, the model {self.feature_names}")
        self.served = served
        self.dense_arch = fm.dense_arch.model
        self.deep = fm.inter_arch.deep_fm.dense_module
        self.over = fm.over_arch.model
        self.rows = served.rows
        self.align = 1

    def head(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        d = self.dense_arch(dense)
        x = torch.cat([d, pooled.flatten(1)], dim=1)
        return self.over(torch.cat([d, self.deep(x), fm_term(x)], dim=1)).squeeze(-1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.head(dense, self.served.lookup(ids))


class DeepFMJaggedPredictor(DeepFMPredictor):
    """``forward(dense, values [N], lengths [F, B]) -> output [B]`` (multi-hot fields)."""

    def forward(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(dense, self.served.pool(values, lengths))


def deepfm_manifest(fm: SimpleDeepFMNN, ccfg: Dict[str, Any], masks: PruningMasks) -> Dict[str, Any]:
    """The model part of a SimpleDeepFMNN export's manifest (features, tables, deep units)."""
    full = deepfm_config(fm)
    kept_tables = {t["name"]: t["num_embeddings"] for t in ccfg["tables"]}
    return {
        "kind": KIND,
        "features": {"all": feature_names(fm), "kept": list(masks.kept_features), "pruned": masks.pruned_features},
        "tables": {"kept": kept_tables, "pruned": {t["name"]: t["num_embeddings"] for t in full["tables"]
                                                   if t["name"] not in kept_tables}},
        "layers": {"deep": {"before": full["deep_fm_dimension"], "after": ccfg["deep_fm_dimension"]}},
        "dense_in_features": full["num_dense_features"],
        "model_config": ccfg,
        "source_model_config": full,
    }


__all__ = ["KIND", "find_deepfm", "feature_names", "deepfm_config", "build_deepfm", "kept_units", "compact_deepfm",
           "fm_term", "DeepFMPredictor", "DeepFMJaggedPredictor", "deepfm_manifest"]
