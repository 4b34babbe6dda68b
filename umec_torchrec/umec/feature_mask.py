"""Drop pruned sparse features from a ``KeyedJaggedTensor`` before the embedding lookup."""

from __future__ import annotations

from typing import Iterable, List, Optional

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

__all__ = ["FeatureMask"]


class FeatureMask:
    """Removes the ids of pruned features from every batch.

    The key of a pruned feature stays in the KJT with zero lengths and no values, so
    (sharded) ``EmbeddingBagCollection`` keeps its fixed key set, but none of its ids is
    looked up or sent through the input distribution, and its pooled embedding is exactly
    zero (an empty bag). Once a table is pruned it costs nothing for the rest of training.

    Args:
        pruned: names of the pruned features.

    Example::

        mask = FeatureMask(["C3", "C7"])
        batch = mask(batch)              # torchrec Batch or KeyedJaggedTensor
    """

    def __init__(self, pruned: Iterable[str] = ()) -> None:
        self.pruned: List[str] = list(pruned)
        self._cache: Optional[tuple] = None

    def __bool__(self) -> bool:
        return bool(self.pruned)

    def _keep_keys(self, keys: List[str]) -> torch.Tensor:
        if self._cache is None or self._cache[0] != keys:
            p = set(self.pruned)
            self._cache = (list(keys), torch.tensor([k not in p for k in keys], dtype=torch.bool))
        return self._cache[1]

    def filter_kjt(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The KJT with the ids of pruned keys removed (vectorised, O(number of ids))."""
        if not self.pruned:
            return kjt
        keys = kjt.keys()
        keep_key = self._keep_keys(keys).to(kjt.lengths().device)
        lengths = kjt.lengths()
        stride = kjt.stride()
        keep_seg = keep_key.repeat_interleave(stride)  # one flag per (key, sample) segment
        keep_val = keep_seg.repeat_interleave(lengths.long(), output_size=kjt.values().numel())
        weights = kjt.weights_or_none()
        return KeyedJaggedTensor.from_lengths_sync(
            keys=keys,
            values=kjt.values()[keep_val],
            lengths=lengths * keep_seg.to(lengths.dtype),
            weights=None if weights is None else weights[keep_val],
        )

    def __call__(self, batch):
        if isinstance(batch, KeyedJaggedTensor):
            return self.filter_kjt(batch)
        if not self.pruned:
            return batch
        return Batch(
            dense_features=batch.dense_features,
            sparse_features=self.filter_kjt(batch.sparse_features),
            labels=batch.labels,
        )
