"""Analytic resource models: cost of a compressed model as a function of what is kept.

Every model is a pure tensor function ``R(kept, alive)`` of

* ``kept``: ``[..., S]`` kept-group counts, one per group set of a :class:`GroupSpec`;
* ``alive``: ``[..., F]`` 0/1 indicator of the surviving feature groups,

batched over leading dimensions, so the primal-dual step evaluates the current point and
every "prune one more group of set l" neighbour in one call (the straight-through
gradient of :mod:`umec_torchrec.umec.optimizer` is that finite difference).

``flops``: FLOPs per sample of the whole dense path, counted like
:class:`torch.utils.flop_counter.FlopCounterMode` (``2 * in * out`` per Linear, ``2 n m p``
per batched matmul; embedding lookups, activations and bias adds are not counted):
bottom MLP, interaction (``dot``: ``2 (F'+1)^2 D``; ``dcn``: ``4 r (F'+1) D`` per cross
layer; ``cat``: 0) and top MLP whose input width is ``D + C(F'+1, 2)`` (dot) or
``(F'+1) D`` (cat, dcn).

``embedding_bytes``: rows x dim x bytes-per-element summed over the kept tables, so a
10-million-row table counts for what it costs. A table read by several features (a shared
table, ``EmbeddingBagConfig(feature_names=[...])``) counts once, and is kept while any of
its features is: ``sum_t bytes_t min(1, sum_{f reads t} alive_f)``.

``lookup_bytes``: bytes read from the tables per sample, ids per sample x dim x
bytes-per-element summed over the kept features (one id per sample, or a multi-hot feature's
mean ids per sample measured on the training data: :func:`with_ids_per_sample`; a shared
table is read once per feature).
Serving time has a part that scales with it, not with FLOPs: at a 10% FLOPs budget the
embedding lookups of the features still kept can be the larger share of the compact model's
time (see ``umec bench inference``).

``latency``: predicted seconds per call of the serving program at the calibrated batch size,
from a measured table (``umec calibrate``; the predictor is :mod:`umec_torchrec.umec.latency`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Type

import torch

from umec_torchrec.umec.groups import FEATURE_SET, ChainStructure, DLRMStructure, GroupSpec


class Resource:
    """A resource model bound to a :class:`GroupSpec`."""

    name: str = ""
    unit: str = ""
    needs_features: bool = False  # only defined when the spec has feature groups

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        S = len(spec.sets)
        self._S = S
        self.full_kept = torch.tensor([float(s.size) for s in spec.sets])
        fs = spec.feature_set
        self.F = fs.size if fs is not None else 0

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def dense_value(self) -> float:
        """The cost of the uncompressed model."""
        kept = self.full_kept[None, :]
        alive = torch.ones(1, self.F) if self.F else None
        return float(self(kept, alive)[0])

    def min_value(self) -> float:
        """The cost of the smallest model the groups allow (every set at ``min_keep``;
        for features, the cheapest surviving ones)."""
        return float(self._min_value())

    def _min_value(self) -> torch.Tensor:
        kept = torch.tensor([[float(s.min_keep) for s in self.spec.sets]])
        alive = None
        fs = self.spec.feature_set
        if fs is not None:
            alive = torch.zeros(1, self.F)
            alive[0, torch.argsort(self.feature_costs(), stable=True)[: fs.min_keep]] = 1.0
        return self(kept, alive)[0]

    def feature_costs(self) -> torch.Tensor:
        """``[F]`` cost order of the feature groups used to find the cheapest survivors
        (table bytes by default; the dense-arch group, if any, costs 0)."""
        return _per_feature(self.spec, self.spec.feature_table_bytes)


def _set_index(spec: GroupSpec, name: str) -> Optional[int]:
    try:
        return spec.set_index(name)
    except KeyError:
        return None


def _width(kept: torch.Tensor, idx: Optional[int], full: int) -> torch.Tensor:
    """``[...]`` width of a layer: its kept count (set ``idx``), or ``full`` if it has no set."""
    if idx is None:
        return torch.full(kept.shape[:-1], float(full), dtype=kept.dtype, device=kept.device)
    return kept[..., idx]


def _chain(kept: torch.Tensor, first_in: torch.Tensor, widths: List[int], idx: List[Optional[int]]) -> torch.Tensor:
    """``[...]`` FLOPs ``sum_i 2 w_{i-1} w_i`` of a Linear chain reading ``first_in`` columns."""
    total = torch.zeros_like(first_in)
    prev = first_in
    for w, i in zip(widths, idx):
        cur = _width(kept, i, w)
        total = total + 2.0 * prev * cur
        prev = cur
    return total


class DLRMFlops:
    """FLOPs per sample of a discovered DLRM (:class:`DLRMStructure`): bottom MLP,
    interaction and over-arch (see the module docstring); a strategy of :class:`DenseFlops`."""

    def __init__(self, spec: GroupSpec, st: DLRMStructure) -> None:
        self.kind = st.kind
        self.fi = _set_index(spec, FEATURE_SET) if spec.feature_set is not None else None
        self.D = int(st.embedding_dim)
        self.nF = int(st.num_features)
        self.dense_in = int(st.dense_in_features)
        self.bottom = list(st.bottom)
        self.top = list(st.top)
        self.bottom_idx = [_set_index(spec, n) for n in st.bottom_names] + [None]
        self.top_idx = [_set_index(spec, n) for n in st.top_names] + [None]
        self.dcn_layers = int(st.dcn_layers)
        self.dcn_rank = int(st.dcn_rank)
        self.dense_group = bool(spec.dense_is_group)

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        D = float(self.D)
        # owners of the interaction: the dense vector plus the kept features
        if self.fi is None:
            owners = torch.full(kept.shape[:-1], float(self.nF + 1), dtype=kept.dtype, device=kept.device)
        else:
            owners = kept[..., self.fi] + (0.0 if self.dense_group else 1.0)
        dense_in = torch.full_like(owners, float(self.dense_in))
        flops = _chain(kept, dense_in, self.bottom, self.bottom_idx)
        if self.kind == "dot":
            flops = flops + 2.0 * owners * owners * D
            top_in = D + owners * (owners - 1.0) / 2.0
        else:
            top_in = owners * D
            if self.kind == "dcn":
                flops = flops + self.dcn_layers * 4.0 * self.dcn_rank * top_in
        return flops + _chain(kept, top_in, self.top, self.top_idx)


class ChainFlops:
    """FLOPs per sample of a declared Linear chain (:class:`ChainStructure`): the first Linear
    reads the columns whose owners all survive; a strategy of :class:`DenseFlops`."""

    def __init__(self, spec: GroupSpec, st: ChainStructure) -> None:
        self.inc = st.incidence.float()  # [in, F]
        self.widths = list(st.widths)
        self.layer_idx = [_set_index(spec, n) for n in st.layer_names]
        self.extra = float(st.extra_flops)
        n_next = len(self.widths) - 2  # Linears after the first
        self.extra_inputs = (list(st.extra_inputs) + [0] * n_next)[:n_next]

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        assert alive is not None
        # a column survives iff none of its owners is pruned
        dead = (1.0 - alive) @ self.inc.to(device=alive.device, dtype=alive.dtype).t()  # [..., in]
        first_in = (dead == 0).to(kept.dtype).sum(-1)
        idx = self.layer_idx + [None]
        prev = _width(kept, idx[0], self.widths[1])
        total = 2.0 * first_in * prev
        for i, (w, extra) in enumerate(zip(self.widths[2:], self.extra_inputs), start=1):  # the (few) layers
            cur = _width(kept, idx[i], w)
            total = total + 2.0 * (prev + extra) * cur  # columns from outside the chain are always read
            prev = cur
        return self.extra + total


class DenseFlops(Resource):
    """FLOPs per sample of the dense path (see the module docstring), counted by
    :class:`DLRMFlops` or :class:`ChainFlops` according to the spec's structure."""

    name = "flops"
    unit = "FLOPs"

    def __init__(self, spec: GroupSpec) -> None:
        super().__init__(spec)
        st = spec.structure
        self.counter = ChainFlops(spec, st) if isinstance(st, ChainStructure) else DLRMFlops(spec, st)

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        return self.counter(kept, alive)


def _per_feature(spec: GroupSpec, values: List[float]) -> torch.Tensor:
    """``values`` (one per sparse feature) aligned with the feature set's groups: the dense-arch
    group, when it is one, gets 0; missing values are 0."""
    fs = spec.feature_set
    n = fs.size if fs is not None else 0
    v = list(values) or [0.0] * (n - int(spec.dense_is_group))
    return torch.tensor(([0.0] if spec.dense_is_group else []) + v, dtype=torch.float32)


class _FeatureBytes(Resource):
    """Bytes that each kept feature costs, summed: ``alive @ bytes``."""

    spec_field = ""
    needs_features = True

    def __init__(self, spec: GroupSpec) -> None:
        super().__init__(spec)
        if spec.feature_set is None:
            raise ValueError(f"a {self.name} budget needs feature groups (prune_features=True)")
        self.bytes = _per_feature(spec, getattr(spec, self.spec_field))

    def feature_costs(self) -> torch.Tensor:
        return self.bytes

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        assert alive is not None
        return alive @ self.bytes.to(device=alive.device, dtype=alive.dtype)


def table_incidence(spec: GroupSpec) -> torch.Tensor:
    """``[G, T]`` 0/1 map of the feature set's groups to the tables they read (``G`` groups,
    aligned like :func:`_per_feature`; the dense-arch group reads none). Features naming the
    same table in ``spec.feature_tables`` share a column; a feature without a name has its own."""
    names = list(spec.feature_tables) or [""] * len(spec.feature_names)
    fs = spec.feature_set
    n_feat = (fs.size if fs is not None else 0) - int(spec.dense_is_group)
    names = (names + [""] * n_feat)[:n_feat]
    col: Dict[object, int] = {}
    idx = [col.setdefault(t if t else ("", i), len(col)) for i, t in enumerate(names)]
    inc = torch.zeros(n_feat, len(col))
    if n_feat:
        inc[torch.arange(n_feat), torch.tensor(idx)] = 1.0
    if spec.dense_is_group:
        inc = torch.cat([torch.zeros(1, len(col)), inc])
    return inc


class EmbeddingBytes(_FeatureBytes):
    """Bytes of the kept embedding tables, a shared table counted once (see the module docstring)."""

    name = "embedding_bytes"
    unit = "B"
    spec_field = "feature_table_bytes"

    def __init__(self, spec: GroupSpec) -> None:
        super().__init__(spec)
        self.tables = table_incidence(spec)  # [G, T]
        # a table's bytes: those of (any of) its features; shared features give the same value
        self.table_bytes = (self.tables * self.bytes[:, None]).amax(dim=0)

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        assert alive is not None
        inc = self.tables.to(device=alive.device, dtype=alive.dtype)
        readers = (alive @ inc).clamp(max=1.0)  # [..., T]: 1 while any feature of the table is kept
        return readers @ self.table_bytes.to(device=alive.device, dtype=alive.dtype)


class LookupBytes(_FeatureBytes):
    """Bytes read from the kept tables per sample (``spec.feature_lookup_bytes``: one row of
    each kept feature, times its mean ids per sample after :func:`with_ids_per_sample`)."""

    name = "lookup_bytes"
    unit = "B"
    spec_field = "feature_lookup_bytes"


class Latency(Resource):
    """Predicted serving time (seconds per call of the calibrated batch size) of the active
    latency table (:mod:`umec_torchrec.umec.latency`, ``--latency-model``)."""

    name = "latency"
    unit = "s"

    def __init__(self, spec: GroupSpec) -> None:
        super().__init__(spec)
        from umec_torchrec.umec.latency import LatencyPredictor, active_latency_table

        self.predictor = LatencyPredictor(spec, active_latency_table())

    def feature_costs(self) -> torch.Tensor:
        return self.predictor.feature_costs()

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        return self.predictor(kept, alive)


def with_ids_per_sample(spec: GroupSpec, ids_per_sample: Optional[Mapping[str, float]]) -> GroupSpec:
    """``spec`` whose ``feature_lookup_bytes`` count each feature's mean ids per sample (a
    multi-hot feature reads that many rows per sample; a feature not in ``ids_per_sample``
    reads one), e.g. ``ModelConfig.ids_per_sample``, measured on the training data.

    Example::

        spec = with_ids_per_sample(discover_groups(dmp), model_cfg.ids_per_sample)  # {"tags": 2.7}
    """
    if not ids_per_sample:
        return spec
    known = set(spec.feature_names) | {f.split("@")[0] for f in spec.feature_names}
    unknown = sorted(set(ids_per_sample) - known)
    if unknown:
        raise ValueError(f"ids_per_sample names features the groups do not have: {unknown}")
    k = [float(ids_per_sample.get(f, ids_per_sample.get(f.split("@")[0], 1.0))) for f in spec.feature_names]
    return dataclasses.replace(spec, feature_lookup_bytes=[b * x for b, x in zip(spec.feature_lookup_bytes, k)])


RESOURCES: Dict[str, Type[Resource]] = {"flops": DenseFlops, "embedding_bytes": EmbeddingBytes,
                                        "lookup_bytes": LookupBytes, "latency": Latency}


def make_resource(name: str, spec: GroupSpec) -> Resource:
    """The resource model called ``name`` (``flops``, ``embedding_bytes``, ``lookup_bytes`` or
    ``latency``)."""
    try:
        cls = RESOURCES[name]
    except KeyError:
        raise ValueError(f"unknown resource {name!r}; known: {sorted(RESOURCES)}") from None
    return cls(spec)


__all__ = ["RESOURCES", "table_incidence", "DenseFlops", "DLRMFlops", "ChainFlops", "EmbeddingBytes", "LookupBytes",
           "Latency", "Resource", "make_resource", "with_ids_per_sample"]
