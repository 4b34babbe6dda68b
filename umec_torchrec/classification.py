"""Binary-classification metrics: exact ROC AUC, log loss, accuracy (pure tensor math).

Used by the training runtime's evaluation, the export comparison and the data generators
(their Bayes AUC), so it sits below all of them.
"""

from __future__ import annotations

from typing import Any, Dict, Union

import torch
import torch.nn.functional as F

ArrayLike = Union[torch.Tensor, Any]

__all__ = ["roc_auc", "binary_metrics"]


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties); ``nan`` if one class.

    Args:
        scores: ``[N]`` scores or logits (any monotone transform gives the same AUC); a
            tensor or anything ``torch.as_tensor`` takes (NumPy arrays, lists).
        labels: ``[N]`` in {0, 1}.
    """
    scores = torch.as_tensor(scores).detach().double().flatten()
    pos = torch.as_tensor(labels).detach().flatten().double() > 0.5
    n_pos = int(pos.sum())
    n_neg = int(pos.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = avg_rank[inverse][pos].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """``{"auc", "log_loss", "accuracy", "rows"}`` of logits against 0/1 labels."""
    logits = logits.detach().double().flatten()
    labels = labels.detach().double().flatten()
    if logits.numel() == 0:
        raise ValueError("cannot compute metrics on zero rows")
    return {
        "auc": roc_auc(logits, labels),
        "log_loss": float(F.binary_cross_entropy_with_logits(logits, labels).item()),
        "accuracy": float(((logits > 0).double() == labels).double().mean().item()),
        "rows": int(labels.numel()),
    }
