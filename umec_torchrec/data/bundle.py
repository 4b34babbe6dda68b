""":class:`DataBundle`: the train, validation and test :class:`CTRData` of one source, plus provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.vocab import Vocabulary

__all__ = ["DataBundle"]


@dataclass
class DataBundle:
    """What :func:`~umec_torchrec.data.load_data` returns.

    Attributes:
        train / valid / test: encoded splits sharing one vocabulary (built on ``train``
            only). ``valid`` is empty (0 rows, same columns and table sizes) when
            ``valid_fraction`` is 0; a bundle built without one gets that empty split.
        info: JSON-safe provenance: ``source`` (the spec), ``kind``, ``path``, ``vocab``
            (mode, min_count / hash_size), ``table_sizes`` (feature -> rows), ``rows``
            (``total``, ``train``, ``valid``, ``test``), ``split`` (``kind``
            ``"random"``/``"time_ordered"``, ``seed``, ``test_fraction``,
            ``valid_fraction``, ``time_ordered``, ``rows``), ``ctr`` (per split; ``None``
            for an empty split), ``bad_lines``, ``dense_transform``, ``options``, and for
            synthetic data the ground truth (``signal_features``, ``signal_dense``,
            ``noise_features``, ...).
        vocabulary: the fitted :class:`Vocabulary` (encode new rows with it).
        split_rows: ``{split: int64 [n]}``, the source row of each split's rows (in the order
            read), when the bundle was encoded from a source; ``None`` otherwise.

    Example::

        b = load_data("synthetic:rows=1000")          # 670 / 100 / 230 rows
        for batch in b.valid.batches(256): ...
        b.info["split"]["rows"]                       # {"train": 670, "valid": 100, "test": 230}
    """

    train: CTRData
    test: CTRData
    info: Dict[str, Any] = field(default_factory=dict)
    vocabulary: Optional[Vocabulary] = None
    valid: Optional[CTRData] = None
    split_rows: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.valid is None:
            self.valid = self.train.subset(torch.zeros(0, dtype=torch.long))
            self.valid.info["split_name"] = "valid"

    @property
    def feature_names(self):
        return list(self.train.feature_names)

    @property
    def dense_names(self):
        return list(self.train.dense_names)

    @property
    def table_sizes(self):
        return list(self.train.table_sizes)

    def to_json(self) -> str:
        """``info`` as a JSON string (what a run's ``config.json`` stores under ``data``)."""
        return json.dumps(self.info)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(self.to_json())
