"""Dense against compact: parameters, embedding bytes, FLOPs and AUC (for ``umec demo``)."""

from __future__ import annotations

from typing import Any, Dict, Union

import torch
from torchrec.models.dlrm import DLRM

from umec_torchrec.export import measure
from umec_torchrec.export.compact import config_of
from umec_torchrec.export.loaders import load_compact
from umec_torchrec.models import ModelConfig, find_dlrm


@torch.no_grad()
def _logits(dlrm: DLRM, data: Any, batch_size: int) -> torch.Tensor:
    out = [dlrm(b.dense_features, b.sparse_features).squeeze(-1).float() for b in data.batches(batch_size)]
    return torch.cat(out)


def compare_models(
    dense: torch.nn.Module,
    dense_cfg: ModelConfig,
    compact: Union[DLRM, str],
    data: Any,
    batch_size: int = 4096,
) -> Dict[str, Dict[str, float]]:
    """Figures of the dense model and the compact one on the same held-out data.

    Args:
        dense: the uncompressed model (a DLRM, DLRMTrain or anything holding one; unsharded).
        dense_cfg: its config.
        compact: the compact DLRM or an export directory (loaded with :func:`load_compact`).
        data: a :class:`~umec_torchrec.data.CTRData` (e.g. the test split); the compact model
            reads the same batches (its extra features are ignored).
        batch_size: evaluation batch size.

    Returns:
        ``{"dense": {...}, "compact": {...}}`` with ``parameters``, ``embedding_bytes``,
        ``lookup_bytes_per_sample``, ``flops_per_sample`` (FlopCounterMode, dense path) and ``auc``.
    """
    from umec_torchrec.classification import roc_auc

    if isinstance(compact, str):
        compact = load_compact(compact)
    try:
        ccfg = config_of(compact)
    except ValueError:
        raise ValueError("the compact model carries no config; pass an export directory or a load_compact() "
                         "model") from None
    out: Dict[str, Dict[str, float]] = {}
    for name, model, cfg in (("dense", find_dlrm(dense), dense_cfg), ("compact", compact, ccfg)):
        was_training = model.training
        model.eval()
        fig = measure.model_figures(cfg)
        out[name] = {
            "parameters": fig["parameters"],
            "embedding_bytes": fig["embedding_bytes"],
            "lookup_bytes_per_sample": fig["lookup_bytes_per_sample"],
            "flops_per_sample": fig["flops_per_sample"],
            "auc": roc_auc(_logits(model, data, batch_size), data.labels),
        }
        model.train(was_training)
    return out


def format_comparison(cmp: Dict[str, Dict[str, float]]) -> str:
    """A small table: one row per figure, dense / compact / ratio."""
    rows = [f"{'':18s}{'dense':>16s}{'compact':>16s}{'ratio':>9s}"]
    for key, label in (("parameters", "parameters"), ("embedding_bytes", "embedding bytes"),
                       ("lookup_bytes_per_sample", "lookup B/sample"), ("flops_per_sample", "FLOPs/sample"),
                       ("auc", "AUC")):
        d, c = cmp["dense"][key], cmp["compact"][key]
        if key == "auc":
            rows.append(f"{label:18s}{d:16.4f}{c:16.4f}{c - d:+9.4f}")
        else:
            rows.append(f"{label:18s}{int(d):16,d}{int(c):16,d}{(c / d if d else float('nan')):9.3f}")
    return "\n".join(rows)


__all__ = ["compare_models", "format_comparison"]
