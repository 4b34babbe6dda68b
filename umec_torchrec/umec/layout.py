"""Where each sparse feature and each hidden unit lives inside a TorchRec DLRM.

This is the model-structure half of the group discovery (Torch-Pruning's dependency
graph, specialised to DLRMs): which over-arch input columns a sparse feature owns, and
which Linear layers a hidden unit touches.

Over-arch input layout per kind (``D`` = embedding dim, ``F`` sparse features, index 0 is
the dense-arch output and index ``k + 1`` the k-th sparse feature):

* ``cat``: ``[dense | e_1 | ... | e_F]``; feature k owns the block ``[(k+1)D, (k+2)D)``.
* ``dot``: ``[dense (D columns) | <x_i, x_j> for 0 <= i < j <= F]`` in
  ``triu_indices(F+1, F+1, 1)`` order; feature k owns the F pair columns that involve
  ``k + 1``, and pair ``(i, j)`` with ``i, j >= 1`` belongs to *two* features.
* ``dcn``: the cross net keeps the ``cat`` layout, so feature k owns block k+1 of the first
  over-arch Linear and of every cross layer (``V_kernels`` columns, ``W_kernels`` rows,
  ``bias`` entries).

This is the only module that knows TorchRec's DLRM internals: module paths (FQN prefixes of
the MLPs and tables), ``Perceptron._linear`` / ``._activation_fn``, the over-arch's
``model[0]`` (MLP) / ``model[1]`` (logit Linear), the EmbeddingBagCollection and its
configs. Everything else asks for them through the accessors below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, InteractionArch, InteractionDCNArch
from torchrec.modules.mlp import Perceptron

from umec_torchrec.models import ConcatInteractionArch, ModelConfig, model_kind

# --- module paths (DLRM-relative FQNs) ------------------------------------------------------
BOTTOM_MLP = "dense_arch.model._mlp"
"""FQN of the bottom (dense-arch) MLP's Perceptron list; layer ``i`` is ``f"{BOTTOM_MLP}.{i}"``."""
TOP_MLP = "over_arch.model.0._mlp"
"""FQN of the over-arch MLP's Perceptron list (the logit Linear is not in it)."""
SPARSE_PREFIX = "sparse_arch."
"""Prefix of every state-dict key of the sparse arch (the embedding tables)."""
TABLE_PREFIX = "sparse_arch.embedding_bag_collection.embedding_bags."
"""Prefix of the table keys: ``f"{TABLE_PREFIX}{table name}.weight"``."""

Part = Literal["bottom", "top"]
"""Which MLP a hidden layer belongs to."""


def bottom_layer_name(i: int) -> str:
    """FQN of the bottom MLP's ``i``-th layer (the ``PruningMasks`` key)."""
    return f"{BOTTOM_MLP}.{i}"


def top_layer_name(i: int) -> str:
    """FQN of the over-arch MLP's ``i``-th layer (the ``PruningMasks`` key)."""
    return f"{TOP_MLP}.{i}"


def table_key(table: str) -> str:
    """DLRM-relative state-dict key of the weight of the table called ``table``."""
    return f"{TABLE_PREFIX}{table}.weight"


def feature_table_key(cfg: ModelConfig, feature: str) -> str:
    """DLRM-relative state-dict key of ``feature``'s table in the model of ``cfg``."""
    return table_key(cfg.table_name(feature))


def table_of_key(key: str) -> str:
    """The table name in a table key (inverse of :func:`table_key`)."""
    return key[len(TABLE_PREFIX):-len(".weight")]


def is_table_key(key: str) -> bool:
    """Whether a DLRM-relative state-dict key is an embedding table's."""
    return key.startswith(TABLE_PREFIX)


def is_sparse_key(key: str) -> bool:
    """Whether a DLRM-relative parameter/buffer key belongs to the sparse arch."""
    return key.startswith(SPARSE_PREFIX)


def prunable_widths(cfg: ModelConfig) -> Dict[str, int]:
    """``{layer FQN: width}`` of the prunable hidden layers of ``cfg``'s model, without
    building it: every bottom layer but the last (width D) and every top layer but the logit."""
    out = {bottom_layer_name(i): w for i, w in enumerate(cfg.bottom[:-1])}
    out.update({top_layer_name(i): w for i, w in enumerate(cfg.top[:-1])})
    return out


# --- modules ----------------------------------------------------------------------------------
def bottom_perceptrons(dlrm: DLRM) -> List[Perceptron]:
    """The bottom MLP's layers, input first (the last one outputs the D-wide dense vector)."""
    return [p for p in dlrm.dense_arch.model._mlp if isinstance(p, Perceptron)]


def top_perceptrons(dlrm: DLRM) -> List[Perceptron]:
    """The over-arch MLP's layers, input first (without the logit Linear)."""
    return [p for p in dlrm.over_arch.model[0]._mlp if isinstance(p, Perceptron)]


def perceptron_linear(p: Perceptron) -> nn.Linear:
    """The ``nn.Linear`` of a Perceptron."""
    return p._linear


def perceptron_activation(p: Perceptron) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation a Perceptron applies after its Linear."""
    return p._activation_fn


def logit_linear(dlrm: DLRM) -> nn.Linear:
    """The over-arch's final Linear (one output: the logit)."""
    return dlrm.over_arch.model[1]


def top_linears(dlrm: DLRM) -> List[nn.Linear]:
    """The over-arch's Linear layers, input first, ending with the logit Linear."""
    return [perceptron_linear(p) for p in top_perceptrons(dlrm)] + [logit_linear(dlrm)]


def interaction(dlrm: DLRM) -> nn.Module:
    """The interaction module (``dot`` pairs, DCN cross net, or concatenation)."""
    return dlrm.inter_arch


def embedding_bag_collection(dlrm: DLRM) -> nn.Module:
    """The DLRM's EmbeddingBagCollection (plain, quantized or sharded)."""
    return dlrm.sparse_arch.embedding_bag_collection


def sparse_parameters(dlrm: DLRM) -> List[nn.Parameter]:
    """The parameters of the sparse arch (the embedding tables), e.g. for their own optimizer."""
    return list(dlrm.sparse_arch.parameters())


def set_embedding_bag_collection(dlrm: DLRM, ebc: nn.Module) -> None:
    """Replace the DLRM's EmbeddingBagCollection (e.g. by a quantized one)."""
    dlrm.sparse_arch.embedding_bag_collection = ebc


def embedding_configs(dlrm: DLRM) -> list:
    """The ``EmbeddingBagConfig`` of every table, in model order (also for a sharded EBC)."""
    ebc = embedding_bag_collection(dlrm)
    return ebc.embedding_bag_configs() if hasattr(ebc, "embedding_bag_configs") else ebc._embedding_bag_configs


def _has_bag_configs(m: nn.Module) -> bool:
    return callable(getattr(m, "embedding_bag_configs", None)) or hasattr(m, "_embedding_bag_configs")


def all_embedding_configs(model: nn.Module) -> list:
    """The ``EmbeddingBagConfig`` of every table of every EmbeddingBagCollection (plain,
    quantized or sharded) inside ``model``, in module order; a collection nested inside
    another one is not visited twice. Empty when the model has none."""
    out: list = []
    stack = [model]
    while stack:
        m = stack.pop()
        if _has_bag_configs(m):
            out.extend(m.embedding_bag_configs() if callable(getattr(m, "embedding_bag_configs", None))
                       else m._embedding_bag_configs)
            continue
        stack.extend(reversed(list(m.children())))
    return out


def check_supported(dlrm: DLRM) -> None:
    """Raise ``TypeError`` when the DLRM's interaction has no known column layout: only
    torchrec's pairwise ``InteractionArch`` (``dot``), ``InteractionDCNArch`` (``dcn``) and the
    concatenation (``cat``) are known, e.g. ``DLRM_Projection``'s two projection branches are not."""
    inter = dlrm.inter_arch
    if not isinstance(inter, (InteractionArch, InteractionDCNArch, ConcatInteractionArch)):
        raise TypeError(
            f"{type(dlrm).__name__} has an interaction ({type(inter).__name__}) whose over-arch columns "
            "group discovery does not know (supported: DLRM, DLRM_DCN, DLRMConcat); "
            "declare its groups with umec_torchrec.umec.declare_groups(first_linear, feature_columns, chain=...)"
        )


def table_weights(dlrm: DLRM) -> List[torch.Tensor]:
    """The weight of every table of an unsharded EBC, in model order."""
    return [bag.weight for bag in embedding_bag_collection(dlrm).embedding_bags.values()]


@dataclass
class HiddenLayer:
    """A prunable hidden layer: its units are rows of ``linear`` (+ bias) and columns of ``next``.

    Args:
        name: the Perceptron's FQN relative to the DLRM (the key used in ``PruningMasks``).
        linear: the layer's ``nn.Linear``.
        next: the ``nn.Linear`` that consumes its output.
        part: ``"bottom"`` or ``"top"``.
    """

    name: str
    linear: nn.Linear
    next: nn.Linear
    part: Part

    @property
    def width(self) -> int:
        """Number of units (output features of ``linear``)."""
        return self.linear.out_features


def _named(mlp_seq: nn.Module, name: Callable[[int], str]) -> List[tuple]:
    return [(name(i), p) for i, p in enumerate(mlp_seq) if isinstance(p, Perceptron)]


def hidden_layers(dlrm: DLRM) -> List[HiddenLayer]:
    """The prunable hidden layers, bottom MLP first.

    The bottom MLP's last layer (width D, feeding the interaction) and the over-arch's
    final Linear (the logit) are not prunable.
    """
    bottom = _named(dlrm.dense_arch.model._mlp, bottom_layer_name)
    top = _named(dlrm.over_arch.model[0]._mlp, top_layer_name)
    layers: List[HiddenLayer] = []
    for (name, p), (_, q) in zip(bottom[:-1], bottom[1:]):
        layers.append(HiddenLayer(name, perceptron_linear(p), perceptron_linear(q), "bottom"))
    final = logit_linear(dlrm)
    for i, (name, p) in enumerate(top):
        nxt = perceptron_linear(top[i + 1][1]) if i + 1 < len(top) else final
        layers.append(HiddenLayer(name, perceptron_linear(p), nxt, "top"))
    return layers


def first_top_linear(dlrm: DLRM) -> nn.Linear:
    """The over-arch Linear that reads the interaction output."""
    return top_linears(dlrm)[0]


def bottom_linears(dlrm: DLRM) -> List[nn.Linear]:
    """The bottom MLP's Linear layers, input first."""
    return [perceptron_linear(p) for p in bottom_perceptrons(dlrm)]


def feature_names(dlrm: DLRM) -> List[str]:
    """The sparse features, in model order."""
    return list(dlrm.sparse_arch.sparse_feature_names)


def embedding_dim(dlrm: DLRM) -> int:
    """D, the dimension shared by all tables."""
    return int(dlrm.sparse_arch.D)


def over_arch_incidence(dlrm: DLRM, include_dense: bool = False) -> torch.Tensor:
    """``[in_features, G]`` 0/1 matrix: column c of the first over-arch Linear belongs to group g.

    Groups are the sparse features in model order, preceded by the dense-arch output when
    ``include_dense``. With ``dot`` a pair column belongs to both of its features (two ones
    in its row); columns in no group (e.g. the dense columns when not included) are all-zero rows.
    """
    kind = model_kind(dlrm)
    F = len(feature_names(dlrm))
    D = embedding_dim(dlrm)
    owners = F + 1  # index 0 = dense, k + 1 = feature k
    if kind == "dot":
        rows, cols = dlrm.inter_arch.triu_indices.cpu()
        n_in = D + rows.numel()
        inc = torch.zeros(n_in, owners)
        inc[:D, 0] = 1.0
        p = torch.arange(rows.numel()) + D
        inc[p, rows] = 1.0
        inc[p, cols] = 1.0
    else:
        inc = torch.eye(owners).repeat_interleave(D, dim=0)  # [(F+1) D, F+1]
    return inc if include_dense else inc[:, 1:]


def block_incidence(dlrm: DLRM, include_dense: bool = False) -> torch.Tensor:
    """``[(F+1) D, G]`` 0/1 block map of the cat/DCN layout (for cross-net kernels)."""
    F = len(feature_names(dlrm))
    D = embedding_dim(dlrm)
    inc = torch.eye(F + 1).repeat_interleave(D, dim=0)
    return inc if include_dense else inc[:, 1:]


def kept_columns(dlrm: DLRM, kept_features: List[str], dense_kept: bool = True) -> torch.Tensor:
    """Indices of the first over-arch Linear's input columns that survive when only
    ``kept_features`` (and the dense output, if ``dense_kept``) remain: a column survives
    iff every owner of it survives."""
    names = feature_names(dlrm)
    alive = torch.zeros(len(names) + 1, dtype=torch.bool)
    alive[0] = dense_kept
    keep = set(kept_features)
    alive[1:] = torch.tensor([f in keep for f in names])
    inc = over_arch_incidence(dlrm, include_dense=True).bool()
    dead_owner = (inc & ~alive[None, :]).any(dim=1)
    return torch.nonzero(~dead_owner).flatten()


def cross_net(dlrm: DLRM) -> Optional[nn.Module]:
    """The LowRankCrossNet of a DCN model, else None."""
    return getattr(dlrm.inter_arch, "crossnet", None) if model_kind(dlrm) == "dcn" else None


def over_arch(dlrm: DLRM) -> nn.Module:
    """The over arch: interaction output ``[B, C]`` -> logits ``[B, 1]``."""
    return dlrm.over_arch


def feature_downstream(dlrm: DLRM) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits as a function of the feature gate: the over-arch input for ``cat`` and
    ``dot``, the cross-net input ``x_0`` for ``dcn``."""
    head, cn = over_arch(dlrm), cross_net(dlrm)
    if cn is None:
        return lambda x: head(x).squeeze(-1)
    return lambda x: head(cn(x)).squeeze(-1)


def over_arch_input_width(dlrm: DLRM) -> int:
    """Input width of the first over-arch Linear (the interaction output width)."""
    return int(first_top_linear(dlrm).in_features)


__all__ = [
    "over_arch",
    "feature_downstream",
    "BOTTOM_MLP",
    "TOP_MLP",
    "SPARSE_PREFIX",
    "TABLE_PREFIX",
    "Part",
    "bottom_layer_name",
    "top_layer_name",
    "table_key",
    "feature_table_key",
    "table_of_key",
    "is_table_key",
    "is_sparse_key",
    "prunable_widths",
    "bottom_perceptrons",
    "top_perceptrons",
    "perceptron_linear",
    "perceptron_activation",
    "logit_linear",
    "top_linears",
    "interaction",
    "embedding_bag_collection",
    "sparse_parameters",
    "set_embedding_bag_collection",
    "embedding_configs",
    "all_embedding_configs",
    "check_supported",
    "table_weights",
    "HiddenLayer",
    "hidden_layers",
    "first_top_linear",
    "bottom_linears",
    "feature_names",
    "embedding_dim",
    "over_arch_incidence",
    "block_incidence",
    "kept_columns",
    "cross_net",
    "over_arch_input_width",
]
