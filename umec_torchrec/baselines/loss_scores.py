"""Loss-based one-shot group scores for the baselines, on a trained (dense) DLRM:

* :func:`taylor_scores`: the group Fisher of mean replacement, ``E[t^2] / 2``, of every set
  over one pass of training batches (:func:`~umec_torchrec.umec.importance.fisher_scores`),
  in units of log loss for every set (one global ranking; select with
  ``budget_masks(..., rule="cost", normalize=False)``), with the means to fold
  (:func:`fold_pruned_means_`);
* :func:`permutation_field_scores`: the validation log-loss increase when a feature's gate
  columns are shuffled across the batch
  (:func:`~umec_torchrec.umec.importance.permutation_scores`);
* :func:`shark_field_scores`: SHARK's first-order Taylor importance of zeroing a feature,
  ``|E[sum_c g_c x_c]|`` on training batches
  (:func:`~umec_torchrec.umec.importance.shark_scores`).

The last two score the feature set only: hidden-unit sets (joint mode) keep their
magnitude scores (:func:`~umec_torchrec.baselines.selection.weight_scores`), so select with
``normalize=True`` (one scale per set). Gradients go to the gate tensors only, never into
the parameters (no ``.grad`` is written, no fused table optimizer steps). One process
(the quality bench's); the model is put in eval mode for the pass and restored.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from umec_torchrec.baselines.selection import weight_scores
from umec_torchrec.umec.groups import GroupSpec
from umec_torchrec.umec.hard_prune import pruned_indicators
from umec_torchrec.umec.importance import Replace, fisher_scores, fold_mean_, permutation_scores, shark_scores
from umec_torchrec.umec.masks import PruningMasks

__all__ = ["dlrm_forward", "taylor_scores", "permutation_field_scores", "shark_field_scores", "fold_pruned_means_"]


def dlrm_forward(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """The logits of a torchrec ``Batch`` from the DLRM inside ``model`` (below DMP/DDP)."""
    from umec_torchrec.models import find_dlrm

    dlrm = find_dlrm(model)
    dev = next(iter(dlrm.over_arch.parameters())).device

    def forward(b: Any) -> torch.Tensor:
        return dlrm(b.dense_features.to(dev), b.sparse_features.to(dev))
    return forward


def _run(model: nn.Module, fn: Callable[[], Any]) -> Any:
    was = model.training
    model.eval()
    try:
        return fn()
    finally:
        model.train(was)


def _gates(spec: GroupSpec, only_features: bool):
    gates = [gs.gate if (gs.kind == "features" or not only_features) else None for gs in spec.sets]
    missing = [gs.name for gs, g in zip(spec.sets, gates) if g is None and (gs.kind == "features" or not only_features)]
    if missing:
        raise ValueError(f"group set(s) {missing} have no gate: declare one (GroupSet.gate) to score them by loss")
    return gates


def _with_weights(spec: GroupSpec, got: Sequence[Optional[torch.Tensor]], what: str) -> List[torch.Tensor]:
    """Loss scores for the feature set, magnitude scores for the unit sets."""
    weights = weight_scores(spec)
    out = []
    for gs, g, w in zip(spec.sets, got, weights):
        if gs.kind == "features":
            if g is None:
                raise ValueError(f"{what}: the feature gate of {gs.name!r} yielded no score (no batches, or a gate "
                                 f"the loss does not reach)")
            out.append(g.detach().cpu())
        else:
            out.append(w.detach().cpu())
    return out


def taylor_scores(model: nn.Module, spec: GroupSpec, data: Any, batch_size: int
                  ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Group Fisher of every set over one pass of ``data`` (a ``CTRData``).

    Returns:
        ``(scores, means)``: per set a ``[G]`` score (log loss) and the gate's ``[C]`` means.

    Example::

        scores, means = taylor_scores(dmp, spec, train, 4096)
        masks = budget_masks(spec, ["flops=0.3"], scores, rule="cost", normalize=False)
        fold_pruned_means_(spec, masks, means)
    """
    fwd = dlrm_forward(model)
    gates = _gates(spec, only_features=False)
    scores, means = _run(model, lambda: fisher_scores(fwd, data.batches(batch_size), lambda b: b.labels, gates))
    bad = [gs.name for gs, s in zip(spec.sets, scores) if s is None]
    if bad:
        raise ValueError(f"taylor: no gradient reached the gate(s) of {bad}")
    return [s.cpu() for s in scores], [m.cpu() for m in means]


def permutation_field_scores(model: nn.Module, spec: GroupSpec, data: Any, batch_size: int, seed: int
                             ) -> List[torch.Tensor]:
    """Permutation importance of the features on ``data`` (the validation split); unit sets
    keep their magnitude scores."""
    fwd = dlrm_forward(model)
    gates = _gates(spec, only_features=True)
    got = _run(model, lambda: permutation_scores(fwd, data.batches(batch_size), lambda b: b.labels, gates, seed=seed))
    return _with_weights(spec, got, "permutation")


def shark_field_scores(model: nn.Module, spec: GroupSpec, data: Any, batch_size: int) -> List[torch.Tensor]:
    """SHARK importance of the features on ``data`` (the training split); unit sets keep
    their magnitude scores."""
    fwd = dlrm_forward(model)
    gates = _gates(spec, only_features=True)
    got = _run(model, lambda: shark_scores(fwd, data.batches(batch_size), lambda b: b.labels, gates))
    return _with_weights(spec, got, "shark")


@torch.no_grad()
def fold_pruned_means_(spec: GroupSpec, masks: PruningMasks, means: Sequence[Optional[torch.Tensor]]) -> None:
    """Replace every group pruned by ``masks`` by its mean: fold ``W[:, removed] @ mean`` into
    the bias of the Linear that reads the gate (what the Fisher score of mean replacement
    assumes); sets whose gate zeroes (``Replace.ZERO``, the DCN cross net) are skipped."""
    for gs, pr, mean in zip(spec.sets, pruned_indicators(spec, masks), means):
        g = gs.gate
        if g is None or mean is None or g.replace is not Replace.MEAN or not isinstance(g.module, nn.Linear):
            continue
        pr = pr.float().to(mean.device)
        hit = pr if g.incidence is None else g.incidence.float().to(mean.device) @ pr
        fold_mean_(g.module, hit > 0, mean)
