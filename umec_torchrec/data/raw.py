"""``RawTable``: what every reader returns before splitting and encoding.

Categorical values are int64 (hex ids, global libsvm indices, 64-bit hashes of strings,
synthetic ids); a missing value is the sentinel :data:`MISSING`, which the vocabulary
treats as one more value. Dense values are float64 with ``NaN`` = missing. A multi-hot
feature (several ids per row) has its raw values in ``RawTable.multi_hot`` as a
:class:`~umec_torchrec.data.jagged.JaggedIds`; its column of ``cats`` is 0 and unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np

from umec_torchrec.data.jagged import JaggedIds

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
        multi_hot: ``{feature: JaggedIds of raw int64 values}`` of the multi-hot features
            (their ``cats`` column is 0 and unused); empty when every feature has one id.
    """

    dense: np.ndarray
    cats: np.ndarray
    labels: np.ndarray
    dense_names: List[str]
    feature_names: List[str]
    info: Dict[str, Any] = field(default_factory=dict)
    dense_transformed: bool = False
    multi_hot: Dict[str, JaggedIds] = field(default_factory=dict)

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
                    dict(info), first.dense_transformed,
                    {f: JaggedIds.concat([c.multi_hot[f] for c in chunks]) for f in first.multi_hot})


def raw_column(raw: RawTable, j: int, rows: Any = None) -> np.ndarray:
    """Every raw value of feature ``j`` in rows ``rows`` (default all), in row order: its
    ``cats`` column, or all the ids of a multi-hot feature (``[nnz]``)."""
    name = raw.feature_names[j]
    if name in raw.multi_hot:
        jag = raw.multi_hot[name]
        return jag.flat() if rows is None else jag.take(rows).values
    return raw.cats[:, j] if rows is None else raw.cats[rows, j]
