"""DLRM-family models built from TorchRec modules, sized from data and arch flags.

Three interaction layouts are supported, named by ``ModelConfig.kind``:

* ``"dot"``: :class:`torchrec.models.dlrm.DLRM` (pairwise dot products, upper triangle);
* ``"dcn"``: :class:`torchrec.models.dlrm.DLRM_DCN` (low-rank DCN cross layers);
* ``"cat"``: :class:`DLRMConcat`, the concatenation layout of the UMEC paper: the over-arch
  input is the dense-arch output followed by each sparse feature's pooled embedding.

Each feature has its own table named ``t_<feature>``, unless ``ModelConfig.table_features``
names a table it shares with other features.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, get_args

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain, OverArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

ModelKind = Literal["dot", "dcn", "cat"]
"""The interaction layout of a model (a plain string in ``config.json`` and on the command line)."""
MODEL_KINDS: Tuple[ModelKind, ...] = get_args(ModelKind)
"""Every :data:`ModelKind`, e.g. for ``argparse`` ``choices``."""
DEFAULT_MODEL_KIND: ModelKind = "cat"
"""The kind the commands build when none is given (the UMEC paper's layout)."""
POOLINGS = ("sum", "mean")
"""How a table may pool a multi-hot feature's ids (:attr:`ModelConfig.pooling`)."""


class ConcatInteractionArch(nn.Module):
    r"""Concatenation interaction: ``[dense | e_1 | ... | e_F]``.

    .. math::
        x = \mathrm{cat}(d, e_1, \dots, e_F) \in \mathbb{R}^{B \times (F+1) D}

    so sparse feature ``k`` (0-based) owns the contiguous over-arch input columns
    ``[(k+1) D, (k+2) D)`` and the dense-arch output owns ``[0, D)``.

    Args:
        num_sparse_features (int): F.

    Example::

        inter = ConcatInteractionArch(num_sparse_features=3)
        out = inter(torch.randn(2, 8), torch.randn(2, 3, 8))  # (2, 32)
    """

    def __init__(self, num_sparse_features: int) -> None:
        super().__init__()
        self.F = num_sparse_features

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        if self.F <= 0:
            return dense_features
        return torch.cat((dense_features, sparse_features.flatten(1)), dim=1)


class DLRMConcat(DLRM):
    """DLRM with the concatenation interaction (:class:`ConcatInteractionArch`).

    Same arguments as :class:`torchrec.models.dlrm.DLRM`; the over-arch input width is
    ``(F + 1) * D``.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: List[int],
        over_arch_layer_sizes: List[int],
        dense_device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            dense_arch_layer_sizes,
            over_arch_layer_sizes,
            dense_device,
        )
        num_sparse = len(self.sparse_arch.sparse_feature_names)
        dim = embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        self.inter_arch = ConcatInteractionArch(num_sparse)
        self.over_arch = OverArch(
            in_features=(num_sparse + 1) * dim,
            layer_sizes=over_arch_layer_sizes,
            device=dense_device,
        )


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in a run's ``config.json``.

    Args:
        kind: ``"dot"``, ``"dcn"`` or ``"cat"``.
        feature_names: sparse feature names, in model order.
        table_sizes: rows of each feature's table (same order).
        dense_in_features: number of dense input features.
        embedding_dim: D, shared by all tables; also the bottom MLP's output width.
        bottom: bottom (dense-arch) layer sizes; the last must equal ``embedding_dim``.
        top: top (over-arch) layer sizes, ending with 1.
        dcn_num_layers / dcn_low_rank_dim: cross-net shape for ``kind="dcn"``.
        table_features: shared tables, ``{table name: the features that read it}`` (adjacent in
            ``feature_names``, in that order, with equal ``table_sizes``); every other feature
            has its own table ``t_<feature>``.
        pooling: ``{table name: "sum" | "mean"}``, how a table pools the several ids of a
            multi-hot feature's sample (``EmbeddingBagConfig.pooling``); absent: ``"sum"``.
        ids_per_sample: ``{feature: mean ids per sample}`` of the multi-hot features, measured
            on the training data (what a ``lookup_bytes`` budget counts); absent: 1. Entries of
            both naming a table / feature the model lacks (a compact model's pruned ones) are dropped.
    """

    kind: ModelKind
    feature_names: List[str]
    table_sizes: List[int]
    dense_in_features: int
    embedding_dim: int = 16
    bottom: List[int] = field(default_factory=lambda: [512, 256, 64, 16])
    top: List[int] = field(default_factory=lambda: [512, 256, 1])
    dcn_num_layers: int = 2
    dcn_low_rank_dim: int = 16
    table_features: Dict[str, List[str]] = field(default_factory=dict)
    pooling: Dict[str, str] = field(default_factory=dict)
    ids_per_sample: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {MODEL_KINDS}")
        if len(self.feature_names) != len(self.table_sizes):
            raise ValueError(
                f"{len(self.feature_names)} feature names but {len(self.table_sizes)} table sizes"
            )
        if not self.feature_names:
            raise ValueError("a DLRM needs at least one sparse feature")
        if self.bottom[-1] != self.embedding_dim:
            raise ValueError(
                f"the last bottom layer size ({self.bottom[-1]}) must equal the embedding dim "
                f"({self.embedding_dim})"
            )
        if len(self.top) < 2 or self.top[-1] != 1:
            raise ValueError(f"top layer sizes must have at least 2 entries ending in 1, got {self.top}")
        if min(self.table_sizes) < 1:
            raise ValueError(f"table sizes must be positive, got {self.table_sizes}")
        self._check_table_features()
        # entries of features / tables the model does not have (pruned from a compact model) are dropped
        tables = set(self.table_rows())
        self.pooling = {t: how for t, how in self.pooling.items() if t in tables}
        self.ids_per_sample = {f: float(k) for f, k in self.ids_per_sample.items() if f in self.feature_names}
        for t, how in self.pooling.items():
            if how not in POOLINGS:
                raise ValueError(f"pooling of table {t!r}: {how!r}, expected one of {POOLINGS}")
        for f, k in self.ids_per_sample.items():
            if not k >= 0.0:
                raise ValueError(f"ids_per_sample of feature {f!r}: {k!r}, expected a mean >= 0")

    def _check_table_features(self) -> None:
        pos = {f: i for i, f in enumerate(self.feature_names)}
        seen: Dict[str, str] = {}
        for t, feats in self.table_features.items():
            if not feats:
                raise ValueError(f"table_features: table {t!r} lists no feature")
            for f in feats:
                if f not in pos:
                    raise ValueError(f"table_features: table {t!r} names {f!r}, which is not a sparse feature")
                if f in seen:
                    raise ValueError(f"table_features: feature {f!r} is in tables {seen[f]!r} and {t!r}")
                seen[f] = t
            idx = [pos[f] for f in feats]
            if idx != list(range(idx[0], idx[0] + len(idx))):
                raise ValueError(f"table_features: the features of table {t!r} ({feats}) must be adjacent in "
                                 "feature_names, in that order")
            sizes = {self.table_sizes[i] for i in idx}
            if len(sizes) != 1:
                raise ValueError(f"table_features: the features of table {t!r} ({feats}) have different "
                                 f"table_sizes {sorted(sizes)}")

    def table_name(self, feature: str) -> str:
        """The table ``feature`` reads: its shared table, or ``t_<feature>``."""
        for t, feats in self.table_features.items():
            if feature in feats:
                return t
        return f"t_{feature}"

    def table_rows(self) -> Dict[str, int]:
        """``{table name: rows}`` of every table once, in model order."""
        return {self.table_name(f): int(n) for f, n in zip(self.feature_names, self.table_sizes)}

    def to_dict(self) -> Dict[str, Any]:
        """The config as a dict; the multi-hot fields only when set (a one-hot model's dict is
        the one recorded before they existed, so its runs still resume)."""
        d = dataclasses.asdict(self)
        for k in ("pooling", "ids_per_sample"):
            if not d[k]:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def table_configs(cfg: ModelConfig) -> List[EmbeddingBagConfig]:
    """One ``EmbeddingBagConfig`` per table (a shared table lists its features), in model order."""
    readers: Dict[str, List[str]] = {}
    for f in cfg.feature_names:
        readers.setdefault(cfg.table_name(f), []).append(f)
    return [
        EmbeddingBagConfig(name=t, embedding_dim=cfg.embedding_dim, num_embeddings=n, feature_names=readers[t],
                           pooling=PoolingType[cfg.pooling.get(t, "sum").upper()])
        for t, n in cfg.table_rows().items()
    ]


def build_dlrm(cfg: ModelConfig, device: Optional[torch.device] = None,
               tables_device: Optional[torch.device] = None) -> DLRM:
    """Build the DLRM of ``cfg`` (without the loss wrapper).

    Args:
        cfg: the model config.
        device: device of the dense modules.
        tables_device: device of the EmbeddingBagCollection; ``torch.device("meta")``
            defers table allocation to sharding (the DistributedModelParallel pattern).
    """
    ebc = EmbeddingBagCollection(tables=table_configs(cfg), device=tables_device or device)
    common = dict(
        embedding_bag_collection=ebc,
        dense_in_features=cfg.dense_in_features,
        dense_arch_layer_sizes=list(cfg.bottom),
        over_arch_layer_sizes=list(cfg.top),
        dense_device=device,
    )
    if cfg.kind == "dot":
        return DLRM(**common)
    if cfg.kind == "cat":
        return DLRMConcat(**common)
    return DLRM_DCN(**common, dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim)


def build_model(cfg: ModelConfig, device: Optional[torch.device] = None,
                tables_device: Optional[torch.device] = None) -> DLRMTrain:
    """Build ``DLRMTrain(build_dlrm(cfg))``: ``forward(batch) -> (loss, (loss, logits, labels))``."""
    return DLRMTrain(build_dlrm(cfg, device=device, tables_device=tables_device))


def find_dlrm(module: nn.Module) -> DLRM:
    """Return the (first) ``DLRM`` inside ``module``: a DLRM, a DLRMTrain, a DMP, DDP..."""
    for m in module.modules():
        if isinstance(m, DLRM):
            return m
    raise TypeError(
        f"no torchrec DLRM found inside {type(module).__name__}; found modules: "
        f"{sorted({type(m).__name__ for m in module.modules()})[:20]}"
    )


def model_kind(dlrm: DLRM) -> ModelKind:
    """``"dot"``, ``"dcn"`` or ``"cat"`` for a DLRM instance."""
    if isinstance(dlrm, DLRMConcat):
        return "cat"
    if isinstance(dlrm, DLRM_DCN):
        return "dcn"
    return "dot"


__all__ = [
    "ModelKind",
    "MODEL_KINDS",
    "DEFAULT_MODEL_KIND",
    "POOLINGS",
    "ConcatInteractionArch",
    "DLRMConcat",
    "ModelConfig",
    "table_configs",
    "build_dlrm",
    "build_model",
    "find_dlrm",
    "model_kind",
]
