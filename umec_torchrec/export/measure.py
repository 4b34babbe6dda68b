"""Size and cost figures of a model config: dense-path FLOPs, embedding bytes, parameters."""

from __future__ import annotations

import dataclasses
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from umec_torchrec.models import ModelConfig, build_dlrm
from umec_torchrec.umec import layout


def tiny_tables(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with one-row tables: the same dense path, no table memory."""
    return dataclasses.replace(cfg, table_sizes=[1] * len(cfg.feature_names))


@torch.no_grad()
def dense_path_flops(cfg: ModelConfig) -> int:
    """FLOPs of one sample through the dense path (MLPs, interaction, cross net), measured
    with ``torch.utils.flop_counter.FlopCounterMode`` at batch 1 (embedding lookups count 0)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    model = build_dlrm(tiny_tables(cfg)).eval()
    f = len(cfg.feature_names)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(cfg.feature_names), values=torch.zeros(f, dtype=torch.long), lengths=torch.ones(f, dtype=torch.int32)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, cfg.dense_in_features), kjt)
    return int(counter.get_total_flops())


def embedding_bytes(cfg: ModelConfig, element_size: int = 4) -> int:
    """Bytes of all tables: rows x dim x element size (a shared table once)."""
    return int(sum(cfg.table_rows().values()) * cfg.embedding_dim * element_size)


def lookup_bytes(cfg: ModelConfig, element_size: int = 4) -> int:
    """Bytes read from the tables per sample: one row of each feature (dim x element size)."""
    return int(len(cfg.feature_names) * cfg.embedding_dim * element_size)


def parameter_counts(cfg: ModelConfig) -> Dict[str, int]:
    """``{"embedding", "dense", "total"}`` parameter counts of ``cfg``'s model."""
    dense = sum(p.numel() for n, p in build_dlrm(tiny_tables(cfg)).named_parameters() if not layout.is_sparse_key(n))
    emb = sum(cfg.table_rows().values()) * cfg.embedding_dim
    return {"embedding": int(emb), "dense": int(dense), "total": int(emb + dense)}


def model_figures(cfg: ModelConfig) -> Dict[str, int]:
    """``{"flops_per_sample", "embedding_bytes", "lookup_bytes_per_sample", "parameters",
    "dense_parameters"}``."""
    p = parameter_counts(cfg)
    return {
        "flops_per_sample": dense_path_flops(cfg),
        "embedding_bytes": embedding_bytes(cfg),
        "lookup_bytes_per_sample": lookup_bytes(cfg),
        "parameters": p["total"],
        "dense_parameters": p["dense"],
    }


__all__ = ["tiny_tables", "dense_path_flops", "embedding_bytes", "lookup_bytes", "parameter_counts", "model_figures"]
