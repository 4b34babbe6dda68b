"""``RawTable``: what every reader returns before splitting and encoding.

Categorical values are int64 (hex ids, global libsvm indices, 64-bit hashes of strings,
synthetic ids); a missing value is the sentinel :data:`MISSING`, which the vocabulary
treats as one more value. Dense values are float64 with ``NaN`` = missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np

MISSING = np.iinfo(np.int64).min
#: rows per chunk of the chunked readers (``iter_*``): bounded memory when preparing a source
CHUNK_ROWS = 1 << 15


@dataclass
class RawTable:
    """Unencoded rows of one source.

    Args:
        dense: ``float64 [N, D]`` raw values (``NaN`` missing) or, when
            ``dense_transformed``, ``float32`` values already transformed by the source.
        cats: ``int64 [N, F]`` raw categorical values (:data:`MISSING` = missing).
        labels: ``[N]`` in {0, 1}.
        dense_names / feature_names: column names.
        info: source provenance (path, bad_lines, ground truth, ...).
        dense_transformed: whether ``dense`` is final (TorchRec's .npy files are already
            log-transformed).
    """

    dense: np.ndarray
    cats: np.ndarray
    labels: np.ndarray
    dense_names: List[str]
    feature_names: List[str]
    info: Dict[str, Any] = field(default_factory=dict)
    dense_transformed: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def dense_transform(x: np.ndarray) -> np.ndarray:
    """DLRM's dense transform ``log(1 + max(x, 0))``, missing (``NaN``) -> 0, as float32."""
    x = np.asarray(x, dtype=np.float64)
    out = np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0))
    return out.astype(np.float32)


def concat_tables(chunks: Sequence[RawTable], info: Dict[str, Any]) -> RawTable:
    """One :class:`RawTable` of the chunks of a chunked reader (same columns), with ``info``."""
    first = chunks[0]
    return RawTable(np.concatenate([c.dense for c in chunks]), np.concatenate([c.cats for c in chunks]),
                    np.concatenate([c.labels for c in chunks]), list(first.dense_names), list(first.feature_names),
                    dict(info), first.dense_transformed)
