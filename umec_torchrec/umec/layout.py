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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.mlp import Perceptron

from umec_torchrec.models import model_kind


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
    part: str

    @property
    def width(self) -> int:
        return self.linear.out_features


def _perceptrons(mlp_seq: nn.Module, prefix: str) -> List[tuple]:
    return [(f"{prefix}.{i}", p) for i, p in enumerate(mlp_seq) if isinstance(p, Perceptron)]


def hidden_layers(dlrm: DLRM) -> List[HiddenLayer]:
    """The prunable hidden layers, bottom MLP first.

    The bottom MLP's last layer (width D, feeding the interaction) and the over-arch's
    final Linear (the logit) are not prunable.
    """
    bottom = _perceptrons(dlrm.dense_arch.model._mlp, "dense_arch.model._mlp")
    top = _perceptrons(dlrm.over_arch.model[0]._mlp, "over_arch.model.0._mlp")
    layers: List[HiddenLayer] = []
    for (name, p), (_, q) in zip(bottom[:-1], bottom[1:]):
        layers.append(HiddenLayer(name, p._linear, q._linear, "bottom"))
    final = dlrm.over_arch.model[1]
    for i, (name, p) in enumerate(top):
        nxt = top[i + 1][1]._linear if i + 1 < len(top) else final
        layers.append(HiddenLayer(name, p._linear, nxt, "top"))
    return layers


def first_top_linear(dlrm: DLRM) -> nn.Linear:
    """The over-arch Linear that reads the interaction output."""
    top = _perceptrons(dlrm.over_arch.model[0]._mlp, "over_arch.model.0._mlp")
    return top[0][1]._linear if top else dlrm.over_arch.model[1]


def bottom_linears(dlrm: DLRM) -> List[nn.Linear]:
    return [p._linear for _, p in _perceptrons(dlrm.dense_arch.model._mlp, "")]


def feature_names(dlrm: DLRM) -> List[str]:
    return list(dlrm.sparse_arch.sparse_feature_names)


def embedding_dim(dlrm: DLRM) -> int:
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
