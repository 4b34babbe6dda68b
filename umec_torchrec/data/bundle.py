""":class:`DataBundle`: the train and test :class:`CTRData` of one source, plus provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.vocab import Vocabulary


@dataclass
class DataBundle:
    """What :func:`~umec_torchrec.data.load_data` returns.

    Attributes:
        train / test: encoded splits sharing one vocabulary (built on ``train``).
        info: JSON-safe provenance: ``source`` (the spec), ``kind``, ``path``, ``vocab``
            (mode, min_count / hash_size), ``table_sizes`` (feature -> rows), ``rows``
            (``total``, ``train``, ``test``), ``split``, ``bad_lines``, ``dense_transform``,
            ``options``, and for synthetic data the ground truth (``signal_features``,
            ``signal_dense``, ``noise_features``, ...).
        vocabulary: the fitted :class:`Vocabulary` (encode new rows with it).
    """

    train: CTRData
    test: CTRData
    info: Dict[str, Any] = field(default_factory=dict)
    vocabulary: Optional[Vocabulary] = None

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
