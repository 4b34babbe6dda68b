"""The Criteo Kaggle DLRM configuration (the standard per-feature cardinalities)."""

from __future__ import annotations

from typing import List, Optional

from umec_torchrec.models import DEFAULT_MODEL_KIND, ModelConfig, ModelKind

# Rows per table of the 26 categorical features C1..C26 of Criteo Kaggle (the DLRM
# reference's counts; 33,762,577 rows in all).
KAGGLE_TABLE_SIZES: List[int] = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
KAGGLE_DENSE = 13


def kaggle_model_config(
    kind: ModelKind = DEFAULT_MODEL_KIND,
    embedding_dim: int = 16,
    bottom: Optional[List[int]] = None,
    top: Optional[List[int]] = None,
    table_sizes: Optional[List[int]] = None,
) -> ModelConfig:
    """The Kaggle-size DLRM: 26 tables (``t_cat_0``..), 13 dense features, D=16,
    bottom 512,256,64,16 and top 512,256,1 unless overridden (``table_sizes`` lets tests
    shrink the tables)."""
    sizes = list(table_sizes or KAGGLE_TABLE_SIZES)
    return ModelConfig(
        kind=kind,
        feature_names=[f"cat_{i}" for i in range(len(sizes))],
        table_sizes=sizes,
        dense_in_features=KAGGLE_DENSE,
        embedding_dim=embedding_dim,
        bottom=list(bottom or [512, 256, 64, embedding_dim]),
        top=list(top or [512, 256, 1]),
    )


__all__ = ["KAGGLE_TABLE_SIZES", "KAGGLE_DENSE", "kaggle_model_config"]
