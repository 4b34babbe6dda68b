""":class:`DataOptions`: how a source is split, encoded and validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["DataOptions", "VOCAB_MODES"]

VOCAB_MODES = ("min_count", "hash", "identity")


@dataclass
class DataOptions:
    """Options of :func:`umec_torchrec.data.load_data`; inline spec options override them.

    Args:
        test_fraction: share of rows in the test split, in (0, 1). The test rows depend
            only on ``test_fraction``, ``split_seed`` and ``time_ordered`` (not on
            ``valid_fraction``).
        valid_fraction: share of rows in the validation split, in [0, 1) with
            ``valid_fraction + test_fraction < 1``; carved out of the rows that would
            otherwise train. 0: an empty validation split (the former two-way split).
        split_seed: seed of the random split (ignored when ``time_ordered``).
        time_ordered: the first rows train, then validation, then test (file order = time
            order).
        vocab: ``"min_count"`` (a vocabulary built on the training split; values seen fewer
            than ``min_count`` times in train, and valid/test values unseen in train, go to the
            out-of-vocabulary row 0) or ``"hash"`` (a stable 64-bit hash of each value, mod
            ``hash_size``; no OOV row) or ``"identity"`` (the ids are the rows; the table sizes
            are the source's ``num_embeddings_per_feature``, ``criteo-npy`` only).
        min_count: minimum training count of a value to get its own row.
        hash_size: table size of every feature for ``vocab="hash"`` (required there).
        skip_bad_lines: skip malformed lines (counted in ``info["bad_lines"]``) instead of
            raising :class:`DataError`. File-level errors (missing, empty or truncated file)
            still raise.
        max_rows: read at most this many rows (``None``: all).
        label / dense / categorical / delimiter / header: the schema of ``csv:`` sources:
            column names (``header=True``) or 0-based column indices given as strings
            (``header=False``).
    """

    test_fraction: float = 0.23
    valid_fraction: float = 0.1
    split_seed: int = 0
    time_ordered: bool = False
    vocab: str = "min_count"
    min_count: int = 1
    hash_size: Optional[int] = None
    skip_bad_lines: bool = False
    max_rows: Optional[int] = None
    label: str = "label"
    dense: List[str] = field(default_factory=list)
    categorical: List[str] = field(default_factory=list)
    delimiter: str = ","
    header: bool = True

    def validate(self, where: str = "options") -> None:
        """Raise :class:`DataError` (naming ``where`` and the field) on an invalid value."""
        from umec_torchrec.data.errors import DataError

        if not 0.0 < float(self.test_fraction) < 1.0:
            raise DataError(where, None, full_path=True, field="test_fraction",
                            reason=f"must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= float(self.valid_fraction) < 1.0:
            raise DataError(where, None, full_path=True, field="valid_fraction",
                            reason=f"must be in [0, 1), got {self.valid_fraction}")
        if float(self.valid_fraction) + float(self.test_fraction) >= 1.0:
            raise DataError(where, None, full_path=True, field="valid_fraction",
                            reason=f"valid_fraction + test_fraction must be < 1, "
                                   f"got {self.valid_fraction} + {self.test_fraction}")
        if self.vocab not in VOCAB_MODES:
            raise DataError(where, None, full_path=True, field="vocab",
                            reason=f"unknown vocabulary mode {self.vocab!r}; expected one of {VOCAB_MODES}")
        if self.hash_size is not None and int(self.hash_size) < 1:
            raise DataError(where, None, full_path=True, field="hash_size",
                            reason=f"must be >= 1, got {self.hash_size}")
        if self.vocab == "hash" and (self.hash_size is None or int(self.hash_size) < 1):
            raise DataError(where, None, full_path=True, field="hash_size",
                            reason=f"vocab='hash' needs a positive hash_size, got {self.hash_size}")
        if int(self.min_count) < 1:
            raise DataError(where, None, full_path=True, field="min_count",
                            reason=f"must be >= 1, got {self.min_count}")
        if self.max_rows is not None and int(self.max_rows) < 1:
            raise DataError(where, None, full_path=True, field="max_rows", reason=f"must be >= 1, got {self.max_rows}")
        if len(self.delimiter) != 1:
            raise DataError(where, None, full_path=True, field="delimiter",
                            reason=f"must be one character, got {self.delimiter!r}")

    def replace(self, **changes: Any) -> "DataOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
