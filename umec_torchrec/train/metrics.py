"""Held-out metrics (AUC, log loss, accuracy), exact over all ranks."""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch

from umec_torchrec.classification import binary_metrics
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.distributed import DistContext


def _gather(t: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat(parts)


@torch.no_grad()
def predict(
    model: nn.Module,
    data: CTRData,
    batch_size: int,
    ctx: DistContext,
    batch_transform: Optional[Callable[[Batch], Batch]] = None,
) -> tuple:
    """Logits and labels of every row of ``data`` (in row order), on every rank.

    Rows are split into equal contiguous per-rank slices (padded with row 0, dropped after
    the gather), so every rank runs the same number of equally sized forward passes.
    """
    n = len(data)
    if n == 0:
        raise ValueError("the evaluation split is empty")
    world, rank = ctx.world_size, ctx.rank
    per = -(-n // world)
    idx = torch.arange(rank * per, (rank + 1) * per)
    valid = idx < n
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    local_bs = max(1, batch_size // world)
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, per, local_bs):
            b = data.make_batch(idx[s: s + local_bs]).to(ctx.device)
            if batch_transform is not None:
                b = batch_transform(b)
            _, (_, logits, _) = model(b)
            out.append(logits.detach().float().flatten().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(out)
    all_logits = _gather(logits.to(ctx.device), world).cpu()
    all_valid = _gather(valid.to(ctx.device), world).cpu()
    return all_logits[all_valid], data.labels.float()


def evaluate(
    model: nn.Module,
    data: CTRData,
    batch_size: int,
    ctx: DistContext,
    batch_transform: Optional[Callable[[Batch], Batch]] = None,
) -> Dict[str, float]:
    """AUC, log loss and accuracy of ``model`` on all rows of ``data`` (same on all ranks).

    Args:
        model: ``DLRMTrain`` or a DMP around one (every rank must call this).
        data: the held-out rows (the same object on every rank).
        batch_size: global evaluation batch size.
        ctx: the distributed context.
        batch_transform: applied to each batch before the model.

    Returns:
        ``{"auc", "log_loss", "accuracy", "rows"}``; ``auc`` is ``nan`` for one-class data.
    """
    logits, labels = predict(model, data, batch_size, ctx, batch_transform)
    m = binary_metrics(logits, labels)
    if not math.isfinite(m["log_loss"]):
        raise FloatingPointError("evaluation log loss is not finite; the model diverged")
    return m


__all__ = ["predict", "evaluate"]
