"""The :class:`~umec_torchrec.models.ModelConfig` of a user's TorchRec DLRM, read from the module.

Export's surgery (:mod:`~umec_torchrec.export.compact`) is keyed on a ``ModelConfig``. A
user's ``DLRM`` / ``DLRM_DCN`` / ``DLRMConcat`` built with any table names carries
everything that config holds: the kind (:func:`~umec_torchrec.models.model_kind`), the
EmbeddingBagCollection's tables (names, features, rows, dim), the MLP widths and the cross
net's shape. A table named other than ``t_<feature>``, or read by several features, becomes a
``table_features`` entry, a MEAN-pooled table a ``pooling`` entry (the poolings are also
returned beside the config, by TorchRec name).
The config is checked by rebuilding the model's skeleton and comparing every dense
parameter's shape, so a DLRM subclass with other parameters is refused with their names.
"""

from __future__ import annotations

from typing import Dict, Tuple

from torch import nn
from torchrec.models.dlrm import DLRM

from umec_torchrec.models import ModelConfig, find_dlrm, model_kind
from umec_torchrec.umec import layout


def module_config(model: nn.Module) -> Tuple[ModelConfig, Dict[str, str]]:
    """``(ModelConfig, {table: pooling})`` of the TorchRec DLRM inside ``model`` (a DLRM,
    DLRMTrain or any module holding one; unsharded).

    Raises:
        TypeError: no TorchRec DLRM inside ``model`` (e.g. a model declared with
            ``declare_groups``), an interaction the surgery does not know
            (``DLRM_Projection``), a sharded model, or parameters the rebuilt skeleton lacks.
        ValueError: tables of different dims, a feature read by two tables, or a table
            pooled other than SUM / MEAN.

    Example::

        cfg, pooling = module_config(my_dlrm)   # cfg.table_name("user") == "user_table"
    """
    try:
        dlrm = find_dlrm(model)
    except TypeError as e:
        raise TypeError(f"export_model: {e}. Export's surgery handles TorchRec DLRM, DLRM_DCN, DLRMConcat and "
                        "SimpleDeepFMNN models; another custom model (declared with declare_groups) has no "
                        "export surgery: keep its masked weights and serve it as it is") from None
    layout.check_supported(dlrm)
    ebc = layout.embedding_bag_collection(dlrm)
    if not hasattr(ebc, "embedding_bags"):
        raise TypeError(f"export_model: the DLRM's tables are in a {type(ebc).__name__} (sharded?); pass the "
                        "unsharded model, or export a run's checkpoint with export_run")
    configs = layout.embedding_configs(dlrm)
    dims = {c.embedding_dim for c in configs}
    if len(dims) != 1:
        raise ValueError(f"export_model: tables of different dims {sorted(dims)}")
    pooling = {c.name: c.pooling.name for c in configs}
    bad = {t: p for t, p in pooling.items() if p not in ("SUM", "MEAN")}
    if bad:
        raise ValueError(f"export_model: tables {bad} are pooled other than SUM / MEAN; the serving program "
                         "computes SUM and MEAN only")
    names = [f for c in configs for f in (c.feature_names or [c.name])]
    if len(set(names)) != len(names):
        dup = sorted({f for f in names if names.count(f) > 1})
        raise ValueError(f"export_model: features {dup} are read by several tables (keys 'feature@table'); "
                         "not supported")
    sizes = [int(c.num_embeddings) for c in configs for _ in (c.feature_names or [c.name])]
    shared = {c.name: list(c.feature_names or [c.name]) for c in configs
              if list(c.feature_names or [c.name]) != [c.name[2:]] or not c.name.startswith("t_")}
    bottom = [lin.out_features for lin in layout.bottom_linears(dlrm)]
    top = [lin.out_features for lin in layout.top_linears(dlrm)]
    cn = layout.cross_net(dlrm)
    extra = {}
    if cn is not None:
        extra = {"dcn_num_layers": len(cn.V_kernels), "dcn_low_rank_dim": int(cn.V_kernels[0].shape[0])}
    cfg = ModelConfig(model_kind(dlrm), names, sizes, layout.bottom_linears(dlrm)[0].in_features,
                      embedding_dim=dims.pop(), bottom=bottom, top=top, table_features=shared,
                      pooling={t: p.lower() for t, p in pooling.items() if p != "SUM"}, **extra)
    check_matches(dlrm, cfg, pooling)
    return cfg, pooling


def check_matches(dlrm: DLRM, cfg: ModelConfig, pooling: Dict[str, str]) -> None:
    """``TypeError`` unless the skeleton of ``cfg`` has exactly ``dlrm``'s parameters and shapes."""
    from umec_torchrec.export.compact import skeleton

    want = {k: tuple(v.shape) for k, v in skeleton(cfg, pooling).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in dlrm.state_dict().items()}
    extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if extra or missing or shapes:
        raise TypeError(f"export_model: {type(dlrm).__name__} does not have the layout of a {cfg.kind} DLRM the "
                        f"surgery knows: parameters it does not know {extra[:5]}, missing {missing[:5]}, other "
                        f"shapes {shapes[:5]}")


__all__ = ["module_config", "check_matches"]
