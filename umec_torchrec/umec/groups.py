"""Prunable groups: discovered from a DLRM, or declared for a custom model.

A :class:`GroupSet` is one UMEC "layer": a set of ``n`` structured groups that share one
continuous prune count ``s`` and one dual ``y``. Its groups are made of *members*: slices
of parameters along one dimension, mapped to groups by a 0/1 incidence matrix, so that

* the squared group norms are ``score = sum_members  M^T (sum of squares over the other dims)``
  (one reduction and one small mat-vec per member, no loop over groups);
* a group's penalty reaches every slice it covers through ``M @ selected``.

Groups may overlap. With the ``dot`` interaction a pair column ``<x_i, x_j>`` belongs to
feature ``i`` *and* feature ``j`` (two ones in its incidence row); the weight of a hidden
unit's outgoing column also lies in the next layer's unit rows. UMEC's objective is a sum
of per-group squared norms, so an overlapped weight is simply counted once per group that
contains it: in the scores, and in the proximal step (its shrink factor is
``1 / (1 + 2 lr sum_g y_g [g selected])``, the exact prox of the summed penalty). In the
resource model a column disappears as soon as *one* of its owners is pruned.

Discovery on a TorchRec DLRM (:func:`discover_groups`):

* ``features``: one group per sparse feature: the first over-arch Linear's input columns it
  owns (a block for ``cat``, its pair columns for ``dot``, its block of the over-arch and of
  every cross layer for ``dcn``). Its embedding table belongs to the group (it is dropped
  when the group is pruned) but does not enter the score: scores come from dense weights
  only, so the per-step cost never depends on table sizes.
* one set per hidden layer of the bottom MLP (except the last, whose width must equal D)
  and of the top MLP (never the output unit): unit ``j`` = row ``j`` and bias ``j`` of its
  Linear, plus column ``j`` of the next Linear.
* the dense-arch output is a feature-like group only when ``prune_dense=True``.

Custom models: :func:`declare_groups`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from umec_torchrec.models import MODEL_KINDS, ModelKind, find_dlrm, model_kind
from umec_torchrec.umec import layout
from umec_torchrec.umec.importance import Gate, Replace

GroupKind = Literal["features", "units"]
"""What the groups of a :class:`GroupSet` are: sparse features (plus, optionally, the
dense-arch output) or the units of one hidden layer."""
FEATURES: GroupKind = "features"
UNITS: GroupKind = "units"
FEATURE_SET = "features"
"""Name of the feature group set (the other sets are named by their layer)."""
DENSE_LABEL = "<dense>"
"""Label of the dense-arch output's group in the feature set (``prune_dense=True``)."""


@dataclass
class Member:
    """Slices of ``param`` along ``dim``; ``incidence[i, g] = 1`` if slice ``i`` is in group ``g``.

    ``incidence=None`` means the identity (slice ``i`` is group ``i``). ``moment`` names the
    activation statistic (mean square of the input each slice multiplies, see
    :mod:`~umec_torchrec.umec.activation_stats`) that weights the slices' squared norms
    when activation-weighted scores are used.
    """

    param: torch.Tensor
    dim: int
    incidence: Optional[torch.Tensor] = None
    moment: Optional[str] = None  # name of the input statistic that weights the slices




@dataclass
class GroupSet:
    """One UMEC layer of groups.

    Args:
        name: ``"features"`` or a hidden layer's FQN (the ``PruningMasks`` key).
        kind: :data:`GroupKind`, ``"features"`` or ``"units"``.
        labels: one label per group (feature names, or unit indices as strings).
        members: the parameter slices that make up the groups.
        min_keep: groups that are never pruned (at least one survives).
        gate: where the groups meet the rest of the model (:class:`~.importance.Gate`), for
            the loss-based scores and the folding of a removed group's mean into a bias.
    """

    name: str
    kind: GroupKind
    labels: List[str]
    members: List[Member]
    min_keep: int = 1
    gate: Optional[Gate] = None

    @property
    def size(self) -> int:
        return len(self.labels)

    def scores(
        self,
        sq_cache: Optional[Dict[Tuple[int, int], torch.Tensor]] = None,
        moments: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Squared L2 norm of every group (overlapping weights counted in each group).

        With ``moments``, a member's slice norms are weighted by the mean square of the
        input they multiply (``E ||W_g x_g||^2`` under a diagonal approximation), which makes
        the score invariant to moving scale between a weight and its (unpenalised) input.
        """
        total = None
        for m in self.members:
            key = (id(m.param), m.dim)
            sq = sq_cache.get(key) if sq_cache is not None else None
            if sq is None:
                p = m.param.detach()
                dims = [d for d in range(p.dim()) if d != m.dim]
                sq = p.float().pow(2).sum(dim=dims) if dims else p.float().pow(2)
                if sq_cache is not None:
                    sq_cache[key] = sq
            if moments is not None and m.moment is not None and m.moment in moments:
                sq = sq * moments[m.moment]
            part = sq if m.incidence is None else sq @ m.incidence
            total = part if total is None else total + part
        assert total is not None
        return total


@dataclass(frozen=True)
class DLRMStructure:
    """The dense-path shape of a discovered TorchRec DLRM (what the FLOPs model needs).

    Args:
        kind: the interaction layout.
        embedding_dim: D.
        num_features: F, all sparse features.
        dense_in_features: input width of the bottom MLP.
        bottom: bottom MLP widths (the last is D).
        top: over-arch widths, ending with the logit (1).
        bottom_names / top_names: FQNs of the prunable hidden layers of each MLP, in order
            (the group set names; a layer whose set is absent keeps its full width).
        dcn_layers / dcn_rank: cross-net depth and low rank (0 unless ``kind == "dcn"``).
        prune_dense: whether the dense-arch output is a feature-like group.
    """

    kind: ModelKind
    embedding_dim: int
    num_features: int
    dense_in_features: int
    bottom: List[int]
    top: List[int]
    bottom_names: List[str]
    top_names: List[str]
    dcn_layers: int = 0
    dcn_rank: int = 0
    prune_dense: bool = False


@dataclass(frozen=True)
class ChainStructure:
    """The dense-path shape of a custom model declared with :func:`declare_groups`.

    Args:
        incidence: ``[in, F]`` 0/1 map of the first Linear's input columns to the features.
        widths: the chain's widths: the first Linear's input, then every layer's output.
        layer_names: names of the hidden layers (the unit group sets), in order.
        extra_flops: fixed FLOPs per sample outside the chain.
        extra_inputs: per Linear after the first, its input columns from outside the chain
            (a concatenation, e.g. DeepFM's over arch reading ``[dense | deep | fm]``); empty:
            none.
    """

    incidence: torch.Tensor
    widths: List[int]
    layer_names: List[str]
    extra_flops: float = 0.0
    extra_inputs: List[int] = field(default_factory=list)


Structure = Union[DLRMStructure, ChainStructure]
"""The dense-path shape recorded in a :class:`GroupSpec`."""


@dataclass
class GroupSpec:
    """All group sets of a model, plus what the resource models need to know.

    Args:
        sets: the group sets; the feature set (if any) first.
        structure: the dense-path shape (:class:`DLRMStructure` or :class:`ChainStructure`),
            read by the FLOPs model of :mod:`umec_torchrec.umec.resources`.
        feature_table_bytes: bytes of each feature's table (feature order); a table read by
            several features (a shared table) has its whole size in each of them.
        feature_lookup_bytes: bytes each feature reads from its table per sample (dim x
            element size: one id per feature and sample), feature order.
        feature_names: all sparse features (model order).
        dense_is_group: whether the feature set's first group is the dense-arch output.
        feature_tables: the table each feature reads (feature order; ``""`` or absent: a table
            of its own). Features naming the same table share it: its bytes count once in
            ``embedding_bytes`` and it is dropped only when all of them are pruned.
    """

    sets: List[GroupSet]
    structure: Structure
    feature_table_bytes: List[float] = field(default_factory=list)
    feature_lookup_bytes: List[float] = field(default_factory=list)
    feature_names: List[str] = field(default_factory=list)
    dense_is_group: bool = False
    watch: Dict[str, nn.Module] = field(default_factory=dict)  # module whose input feeds each moment
    feature_tables: List[str] = field(default_factory=list)

    def set_index(self, name: str) -> int:
        """Position of the set called ``name`` (``KeyError`` if there is none)."""
        for i, s in enumerate(self.sets):
            if s.name == name:
                return i
        raise KeyError(name)

    def keep_multipliers(self, pruned: Sequence[torch.Tensor]) -> Dict[torch.Tensor, torch.Tensor]:
        """0/1 multiplier per touched parameter that zeroes every slice of a pruned group.

        Args:
            pruned: one 0/1 float vector per set (1 = pruned), on the parameters' device.
        """
        out: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        for gs, pr in zip(self.sets, pruned):
            for m in gs.members:
                hit = pr if m.incidence is None else m.incidence @ pr
                keep = (hit == 0).to(m.param.dtype)
                shape = [1] * m.param.dim()
                shape[m.dim] = -1
                keep = keep.view(shape).expand_as(m.param)
                prev = out.get(id(m.param))
                out[id(m.param)] = (m.param, keep if prev is None else prev[1] * keep)
        return {p: k.contiguous() for p, k in out.values()}

    @property
    def feature_set(self) -> Optional[GroupSet]:
        """The set of feature groups, if features are pruned."""
        return next((s for s in self.sets if s.kind == FEATURES), None)

    def to(self, device: torch.device) -> "GroupSpec":
        """Move the incidence matrices to ``device`` (in place); returns ``self``."""
        for s in self.sets:
            for m in s.members:
                if m.incidence is not None:
                    m.incidence = m.incidence.to(device)
        return self


def feature_tables(model: nn.Module) -> Dict[str, str]:
    """``{feature: table name}`` of every (sharded or plain) EmbeddingBagCollection inside
    ``model``: a DLRM, a ``DistributedModelParallel`` or a custom model; empty if it has none.
    Several features may map to one table (a shared table).

    Example::

        feature_tables(dmp)   # {"item": "t_item", "user_hist": "t_item", "ctx": "t_ctx"}
    """
    return {f: c.name for c in layout.all_embedding_configs(model) for f in (c.feature_names or [c.name])}


def _table_bytes(dlrm: nn.Module, names: List[str], rows: bool = True) -> List[float]:
    """rows x dim x bytes-per-element of each feature's table, from the EBC configs
    (``rows=False``: dim x bytes-per-element, the bytes of one looked-up row)."""
    by_feature = {}
    for c in layout.embedding_configs(dlrm):
        elem = _elem_bytes(c)
        for f in c.feature_names or [c.name]:
            by_feature[f] = float((c.num_embeddings if rows else 1) * c.embedding_dim * elem)
    return [by_feature.get(n, by_feature.get(n.split("@")[0], 0.0)) for n in names]


def _embedding_costs(model: nn.Module) -> Dict[str, Tuple[str, float, float]]:
    """``{feature: (table, table bytes, bytes of one looked-up row)}`` of every
    EmbeddingBagCollection inside ``model``."""
    return {f: (c.name, float(c.num_embeddings * c.embedding_dim * _elem_bytes(c)),
                float(c.embedding_dim * _elem_bytes(c)))
            for c in layout.all_embedding_configs(model) for f in (c.feature_names or [c.name])}


def _elem_bytes(cfg) -> float:
    from torchrec.modules.embedding_configs import DATA_TYPE_NUM_BITS

    return DATA_TYPE_NUM_BITS[cfg.data_type] / 8.0


def discover_groups(
    model: nn.Module,
    prune_features: bool = True,
    prune_bottom: bool = True,
    prune_top: bool = True,
    prune_dense: bool = False,
) -> GroupSpec:
    """Discover the UMEC groups of the TorchRec DLRM inside ``model`` (DLRM, DLRMTrain, DMP).

    Raises:
        TypeError: when ``model`` holds no TorchRec DLRM or a DLRM variant whose interaction
            layout is unknown (e.g. ``DLRM_Projection``); the message says what was found and
            names :func:`declare_groups`, the way to give the groups of any other model.
    """
    try:
        dlrm = find_dlrm(model)
    except TypeError as e:
        raise TypeError(f"{e}; declare the groups of a custom model with "
                        "umec_torchrec.umec.declare_groups(first_linear, feature_columns, chain=...)") from None
    layout.check_supported(dlrm)
    kind = model_kind(dlrm)
    if kind not in MODEL_KINDS:
        raise TypeError(f"unsupported DLRM variant {type(dlrm).__name__}; declare its groups with "
                        "umec_torchrec.umec.declare_groups")
    names = layout.feature_names(dlrm)
    D = layout.embedding_dim(dlrm)
    sets: List[GroupSet] = []

    if prune_features:
        first = layout.first_top_linear(dlrm)
        inc = layout.over_arch_incidence(dlrm, include_dense=prune_dense).to(first.weight.device)
        members = [Member(first.weight, 1, inc, moment="over_arch_input")]
        cn = layout.cross_net(dlrm)
        if cn is not None:
            blk = layout.block_incidence(dlrm, include_dense=prune_dense).to(first.weight.device)
            for v, w, b in zip(cn.V_kernels, cn.W_kernels, cn.bias):
                members += [
                    Member(v, 1, blk, moment="cross_input"),
                    Member(w, 0, blk, moment="cross_input"),
                    Member(b, 0, blk, moment="cross_input"),
                ]
        labels = ([DENSE_LABEL] if prune_dense else []) + names
        gate = (Gate(first, inc, Replace.MEAN, layout.feature_downstream(dlrm)) if cn is None
                else Gate(cn, blk, Replace.ZERO, layout.feature_downstream(dlrm)))
        sets.append(GroupSet(FEATURE_SET, FEATURES, labels, members, min_keep=1, gate=gate))

    for h in layout.hidden_layers(dlrm):
        if (h.part == "bottom" and not prune_bottom) or (h.part == "top" and not prune_top):
            continue
        members = [Member(h.linear.weight, 0)]
        if h.linear.bias is not None:
            members.append(Member(h.linear.bias, 0))
        members.append(Member(h.next.weight, 1))
        sets.append(GroupSet(h.name, UNITS, [str(i) for i in range(h.width)], members, min_keep=1,
                             gate=Gate(h.next, None, Replace.MEAN)))

    if not sets:
        raise ValueError("nothing to prune: enable features, bottom or top groups")

    bottom_lin = layout.bottom_linears(dlrm)
    hidden = layout.hidden_layers(dlrm)
    cn = layout.cross_net(dlrm)
    structure = DLRMStructure(
        kind=kind,
        embedding_dim=D,
        num_features=len(names),
        dense_in_features=bottom_lin[0].in_features,
        bottom=[lin.out_features for lin in bottom_lin],
        top=[lin.out_features for lin in layout.top_linears(dlrm)],
        bottom_names=[h.name for h in hidden if h.part == "bottom"],
        top_names=[h.name for h in hidden if h.part == "top"],
        dcn_layers=len(cn.V_kernels) if cn is not None else 0,
        dcn_rank=cn.V_kernels[0].shape[0] if cn is not None else 0,
        prune_dense=prune_dense,
    )
    watch = {"over_arch_input": layout.first_top_linear(dlrm)}
    tables = feature_tables(dlrm)
    if cn is not None:
        watch["cross_input"] = cn
    return GroupSpec(
        sets=sets,
        structure=structure,
        watch=watch,
        feature_table_bytes=_table_bytes(dlrm, names),
        feature_lookup_bytes=_table_bytes(dlrm, names, rows=False),
        feature_names=names,
        dense_is_group=prune_dense and prune_features,
        feature_tables=[tables.get(n, "") for n in names],
    )


def declare_groups(
    first_linear: nn.Linear,
    feature_columns: Mapping[str, Sequence[int]],
    chain: Sequence[Union[nn.Linear, Tuple[nn.Linear, int]]] = (),
    layer_names: Optional[Sequence[str]] = None,
    feature_table_bytes: Optional[Mapping[str, float]] = None,
    extra_flops: float = 0.0,
    feature_lookup_bytes: Optional[Mapping[str, float]] = None,
    feature_tables: Optional[Mapping[str, str]] = None,
    tables_of: Optional[nn.Module] = None,
) -> GroupSpec:
    """Declare the groups of a custom model: one Linear chain plus a feature-to-columns map.

    Args:
        first_linear: the Linear that reads the features (its input columns are grouped).
        feature_columns: ``{feature: [input columns of first_linear it owns]}``; columns may be
            shared by several features (counted in each, removed when any owner is pruned).
        chain: the Linear layers after ``first_linear`` in order, ending with the output layer;
            every layer of ``[first_linear, *chain[:-1]]`` gets one unit group per output unit.
            An entry ``(linear, offset)`` reads the previous layer's outputs as its input columns
            ``[offset, offset + width)`` of a concatenation; its other columns come from outside
            the chain and are never pruned (e.g. ``SimpleDeepFMNN``'s over arch reads
            ``[dense | deep | fm]``: ``(over_arch.model[0], D)``).
        layer_names: names of those hidden layers (defaults to ``"layer<i>"``).
        feature_table_bytes: table bytes per feature, for an ``embedding_bytes`` budget.
        extra_flops: fixed FLOPs per sample outside the chain (counted in the dense total).
        feature_lookup_bytes: bytes read per sample per feature (ids per sample x dim x
            element size), for a ``lookup_bytes`` budget.
        feature_tables: ``{feature: table name}`` (e.g. :func:`feature_tables` of the model);
            features naming one table share it: ``feature_table_bytes`` then gives that table's
            bytes (the same value for each of them), counted once. Default: one table each.
        tables_of: a module holding the model's EmbeddingBagCollections (e.g. the model):
            ``feature_tables``, ``feature_table_bytes`` and ``feature_lookup_bytes`` default to
            what its ``EmbeddingBagConfig`` s say (rows x dim x element size, dim x element
            size, tables of any dims; a mapping given explicitly wins).

    Example::

        spec = declare_groups(model.head[0], {"user": range(0, 16), "item": range(16, 32)},
                              chain=[model.head[2], model.head[4]])
        # torchrec SimpleDeepFMNN: features in the deep Linear, its units in the over arch at offset D
        deep, over = fm.inter_arch.deep_fm.dense_module[0], fm.over_arch.model[0]
        spec = declare_groups(deep, {f: range(D * (k + 1), D * (k + 2)) for k, f in enumerate(names)},
                              chain=[(over, D)], feature_tables=feature_tables(fm))
    """
    feats = list(feature_columns)
    if not feats:
        raise ValueError("declare at least one feature")
    inc = torch.zeros(first_linear.in_features, len(feats), device=first_linear.weight.device)
    for g, f in enumerate(feats):
        cols = torch.as_tensor(list(feature_columns[f]), dtype=torch.long)
        if cols.numel() == 0 or int(cols.min()) < 0 or int(cols.max()) >= first_linear.in_features:
            raise ValueError(f"feature {f!r}: columns must be a non-empty subset of range({first_linear.in_features})")
        inc[cols.to(inc.device), g] = 1.0
    sets = [GroupSet(FEATURE_SET, FEATURES, feats, [Member(first_linear.weight, 1, inc, moment="over_arch_input")],
                     gate=Gate(first_linear, inc, Replace.MEAN))]
    links = [c if isinstance(c, tuple) else (c, None) for c in chain]
    layers = [first_linear, *(lin for lin, _ in links)]
    names = list(layer_names) if layer_names is not None else [f"layer{i}" for i in range(len(layers) - 1)]
    if len(names) != len(layers) - 1:
        raise ValueError(f"layer_names: {len(names)} names for {len(layers) - 1} hidden layers")
    extra_inputs = []
    for i, (lin, (nxt, offset)) in enumerate(zip(layers[:-1], links)):
        w = lin.out_features
        if offset is None and nxt.in_features != w:
            raise ValueError(f"chain broken at {names[i]}: {w} outputs feed {nxt.in_features} inputs "
                             "(give (linear, offset) for a concatenation)")
        if offset is not None and not 0 <= int(offset) <= nxt.in_features - w:
            raise ValueError(f"chain at {names[i]}: offset {offset} puts {w} outputs outside the "
                             f"{nxt.in_features} inputs of the next Linear")
        extra_inputs.append(nxt.in_features - w)
        bias = [Member(lin.bias, 0)] if lin.bias is not None else []
        cols = None
        if offset is not None and nxt.in_features != w:  # unit j = input column offset + j of nxt
            cols = torch.zeros(nxt.in_features, w, device=nxt.weight.device)
            cols[torch.arange(w, device=cols.device) + int(offset), torch.arange(w, device=cols.device)] = 1.0
        members = [Member(lin.weight, 0)] + bias + [Member(nxt.weight, 1, cols)]
        sets.append(GroupSet(names[i], UNITS, [str(j) for j in range(w)], members,
                             gate=Gate(nxt, cols, Replace.MEAN)))
    structure = ChainStructure(
        incidence=inc.detach().cpu(),
        widths=[first_linear.in_features] + [lin.out_features for lin in layers],
        layer_names=names,
        extra_flops=float(extra_flops),
        extra_inputs=extra_inputs,
    )
    if tables_of is not None:  # explicit mappings win over what the EBC configs say
        found = _embedding_costs(tables_of)
        if feature_tables is None:
            feature_tables = {f: t for f, (t, _, _) in found.items() if f in feature_columns}
        if feature_table_bytes is None:
            feature_table_bytes = {f: b for f, (_, b, _) in found.items()}
        if feature_lookup_bytes is None:
            feature_lookup_bytes = {f: b for f, (_, _, b) in found.items()}
    tb, lb, ft = feature_table_bytes or {}, feature_lookup_bytes or {}, feature_tables or {}
    unknown = sorted(set(ft) - set(feats))
    if unknown:
        raise ValueError(f"feature_tables names features that are not declared: {unknown}")
    first_of: Dict[str, str] = {}
    for f in feats:
        t = ft.get(f, "")
        if not t:
            continue
        g = first_of.setdefault(t, f)
        if float(tb.get(f, 0.0)) != float(tb.get(g, 0.0)):
            raise ValueError(f"feature_table_bytes: {f!r} ({tb.get(f, 0.0)}) and {g!r} ({tb.get(g, 0.0)}) "
                             f"share table {t!r} but give it different sizes")
    return GroupSpec(sets, structure, [float(tb.get(f, 0.0)) for f in feats], [float(lb.get(f, 0.0)) for f in feats],
                     feats, watch={"over_arch_input": first_linear}, feature_tables=[str(ft.get(f, "")) for f in feats])


__all__ = [
    "GroupKind",
    "FEATURES",
    "UNITS",
    "FEATURE_SET",
    "DENSE_LABEL",
    "Member",
    "GroupSet",
    "DLRMStructure",
    "ChainStructure",
    "Structure",
    "GroupSpec",
    "feature_tables",
    "discover_groups",
    "declare_groups",
]
