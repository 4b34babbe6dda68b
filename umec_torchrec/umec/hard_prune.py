"""Hard pruning: make every pruned group exact zeros in a (masked, unexported) model.

A pruned hidden unit loses its row and bias in its layer and its column in the next
layer; a pruned feature loses the over-arch columns it owns (every pair column it takes
part in with ``dot``) and, with DCN, its block of every cross layer. The slices come from
the same group discovery as the optimizer (:func:`~umec_torchrec.umec.groups.discover_groups`).
Embedding tables are not scanned here: a :class:`~umec_torchrec.umec.feature_mask.FeatureMask`
drops the ids of pruned features, so their tables are never looked up (export drops them;
:func:`umec_torchrec.umec.tables.zero_tables_` zeroes them once when asked; a table shared by
several features only once all of them are pruned).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from umec_torchrec.umec.groups import GroupSpec, discover_groups
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["apply_masks_", "flush_subnormal_", "masks_from_pruned", "pruned_indicators", "weight_masks"]


def pruned_indicators(spec: GroupSpec, masks: PruningMasks) -> List[torch.Tensor]:
    """One 0/1 vector per group set of ``spec`` (1 = pruned) for ``masks``."""
    out = []
    for gs in spec.sets:
        dev = gs.members[0].param.device
        if gs.kind == "features":
            keep = set(masks.kept_features)
            flags = [0.0 if (label in keep or (label == "<dense>" and masks.dense_kept)) else 1.0
                     for label in gs.labels]
            out.append(torch.tensor(flags, device=dev))
        else:
            kept = masks.layers.get(gs.name)
            if kept is not None and masks.layer_widths.get(gs.name, gs.size) != gs.size:
                raise ValueError(f"layer {gs.name}: masks say width {masks.layer_widths[gs.name]}, model has {gs.size}")
            v = torch.zeros(gs.size, device=dev)
            if kept is not None:
                v.fill_(1.0)
                v[torch.as_tensor(kept, dtype=torch.long, device=dev)] = 0.0
            out.append(v)
    return out


def masks_from_pruned(spec: GroupSpec, pruned: Sequence[torch.Tensor]) -> PruningMasks:
    """:class:`PruningMasks` from one 0/1 (1 = pruned) vector per set of ``spec``; the
    inverse of :func:`pruned_indicators`."""
    names = spec.feature_names
    kept_features, dense_kept = list(names), True
    layers, widths = {}, {}
    for gs, pr in zip(spec.sets, pruned):
        pr = pr.bool().cpu()
        if gs.kind == "features":
            dead = {gs.labels[i] for i in torch.nonzero(pr).flatten().tolist()}
            kept_features = [f for f in names if f not in dead]
            dense_kept = "<dense>" not in dead
        else:
            layers[gs.name] = torch.nonzero(~pr).flatten().tolist()
            widths[gs.name] = gs.size
    return PruningMasks(list(names), kept_features, layers, widths, dense_kept)


def weight_masks(model: nn.Module, masks: PruningMasks) -> Dict[torch.Tensor, torch.Tensor]:
    """0/1 multiplier for every dense parameter touched by a pruned group (same shape)."""
    spec = discover_groups(model, prune_dense=not masks.dense_kept)
    if list(masks.feature_names) != spec.feature_names:
        raise ValueError("masks were made for a model with other sparse features")
    unknown = set(masks.layers) - {s.name for s in spec.sets}
    if unknown:
        raise ValueError(f"masks name layers the model does not have: {sorted(unknown)}")
    return spec.keep_multipliers(pruned_indicators(spec, masks))


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: PruningMasks) -> Dict[torch.Tensor, torch.Tensor]:
    """Zero every pruned weight of ``model`` in place; returns the multipliers (reuse them
    after each optimizer step to keep pruned weights exactly zero)."""
    wm = weight_masks(model, masks)
    for p, m in wm.items():
        p.mul_(m)
    return wm


def flush_subnormal_(t: torch.Tensor) -> torch.Tensor:
    """Set the entries of ``t`` below the smallest normal float of its dtype (``finfo.tiny``,
    ``1.2e-38`` in float32) to zero, in place; returns ``t``.

    The prox's geometric decay ``w / (1 + 2 lr y)`` never reaches zero and ends in subnormal
    floats, the CPU's slow arithmetic path; below ``tiny`` a weight changes no output a float32
    can resolve (``docs/design.md``, "Subnormal weights").

    Example::

        t = torch.tensor([1e-40, 0.5])
        assert flush_subnormal_(t).tolist() == [0.0, 0.5]
    """
    if t.is_floating_point():
        t.masked_fill_(t.abs() < torch.finfo(t.dtype).tiny, 0.0)
    return t
