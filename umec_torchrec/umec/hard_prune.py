"""Hard pruning: make every pruned group exact zeros in a (masked, unexported) model.

A pruned hidden unit loses its row and bias in its layer and its column in the next
layer; a pruned feature loses the over-arch columns it owns (every pair column it takes
part in with ``dot``) and, with DCN, its block of every cross layer. Its embedding table
is not touched here: a :class:`~umec_torchrec.umec.feature_mask.FeatureMask` drops its ids,
so the table is never looked up (export drops it).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torchrec.models.dlrm import DLRM

from umec_torchrec.umec import layout
from umec_torchrec.umec.masks import PruningMasks


def weight_masks(dlrm: DLRM, masks: PruningMasks) -> Dict[nn.Parameter, torch.Tensor]:
    """0/1 multiplier for every dense parameter touched by a pruned group (same shape)."""
    out: Dict[nn.Parameter, torch.Tensor] = {}

    def mul(p: nn.Parameter, m: torch.Tensor) -> None:
        m = m.to(device=p.device, dtype=p.dtype).expand_as(p)
        out[p] = out[p] * m if p in out else m.clone()

    by_name = {h.name: h for h in layout.hidden_layers(dlrm)}
    unknown = set(masks.layers) - set(by_name)
    if unknown:
        raise ValueError(f"masks name layers the model does not have: {sorted(unknown)}")
    for name, kept in masks.layers.items():
        h = by_name[name]
        if masks.layer_widths.get(name, h.width) != h.width:
            raise ValueError(f"layer {name}: masks say width {masks.layer_widths[name]}, model has {h.width}")
        unit = torch.zeros(h.width)
        unit[torch.as_tensor(kept, dtype=torch.long)] = 1.0
        mul(h.linear.weight, unit[:, None])
        if h.linear.bias is not None:
            mul(h.linear.bias, unit)
        mul(h.next.weight, unit[None, :])

    if list(masks.feature_names) != layout.feature_names(dlrm):
        raise ValueError("masks were made for a model with other sparse features")
    cols = layout.kept_columns(dlrm, masks.kept_features, masks.dense_kept)
    first = layout.first_top_linear(dlrm)
    col = torch.zeros(first.in_features)
    col[cols] = 1.0
    mul(first.weight, col[None, :])
    cn = layout.cross_net(dlrm)
    if cn is not None:
        blk = layout.block_incidence(dlrm, include_dense=True)
        alive = torch.tensor([masks.dense_kept] + [f in set(masks.kept_features) for f in masks.feature_names], dtype=torch.float32)
        keep = blk @ alive  # [(F+1) D]
        for v, w, b in zip(cn.V_kernels, cn.W_kernels, cn.bias):
            mul(v, keep[None, :])
            mul(w, keep[:, None])
            mul(b, keep)
    return out


@torch.no_grad()
def apply_masks_(dlrm: DLRM, masks: PruningMasks) -> Dict[nn.Parameter, torch.Tensor]:
    """Zero every pruned weight of ``dlrm`` in place; returns the multipliers (reuse them
    after each optimizer step to keep pruned weights exactly zero)."""
    wm = weight_masks(dlrm, masks)
    for p, m in wm.items():
        p.mul_(m)
    return wm
