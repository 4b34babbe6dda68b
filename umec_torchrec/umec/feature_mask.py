"""Drop pruned sparse features from a ``KeyedJaggedTensor`` before the embedding lookup."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, List, Optional, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

__all__ = ["FeatureMask", "MaskedLoader"]

_TRACED = ("FeatureMask applied inside a traced forward (torch.fx): a TorchRec train pipeline "
           "(TrainPipelineSparseDist, ...) traces the model and runs the input distribution before forward, "
           "so a mask inside the model is bypassed; mask the loader instead: "
           "pipeline.progress(it) with it = iter(umec.feature_mask.wrap(loader))")


class FeatureMask:
    """Removes the ids of pruned features from every batch.

    The key of a pruned feature stays in the KJT with zero lengths and no values, so
    (sharded) ``EmbeddingBagCollection`` keeps its fixed key set, but none of its ids is
    looked up or sent through the input distribution, and its pooled embedding is exactly
    zero (an empty bag). Once a table is pruned it costs nothing for the rest of training.

    One object per optimizer: :meth:`set_pruned` changes it in place (``UMECOptimizer.finalize``
    and ``set_masks`` do), so a reference taken earlier (``map(umec.feature_mask, loader)``,
    :meth:`wrap`) applies the current mask.

    Accepted batches: a ``KeyedJaggedTensor`` (also variable-batch, VBE), and any dataclass
    batch whose ``KeyedJaggedTensor`` fields are filtered (torchrec ``Batch``: ``sparse_features``;
    ``ModelInput``: ``idlist_features`` and ``idscore_features``).

    Args:
        pruned: names of the pruned features.

    Example::

        mask = FeatureMask(["C3", "C7"])
        batch = mask(batch)              # torchrec Batch, ModelInput or KeyedJaggedTensor
        for batch in mask.wrap(loader):  # e.g. the iterator of a TrainPipelineSparseDist
            ...
    """

    def __init__(self, pruned: Iterable[str] = ()) -> None:
        self.pruned: List[str] = list(pruned)
        self._cache: Optional[Tuple[List[str], torch.Tensor]] = None

    def __bool__(self) -> bool:
        return bool(self.pruned)

    def set_pruned(self, pruned: Iterable[str]) -> None:
        """Replace the pruned features in place (every holder of this object sees the change)."""
        self.pruned = list(pruned)
        self._cache = None

    def _keep_keys(self, keys: List[str]) -> torch.Tensor:
        cache = self._cache
        if cache is None or cache[0] != keys:
            p = set(self.pruned)
            cache = (list(keys), torch.tensor([k not in p for k in keys], dtype=torch.bool))
            self._cache = cache
        return cache[1]

    def filter_kjt(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The KJT with the ids of pruned keys removed (vectorised, O(number of ids)).

        Keeps the keys, the per-key strides of a variable-batch KJT (``stride_per_key_per_rank``)
        and its ``inverse_indices``.
        """
        if isinstance(kjt, torch.fx.Proxy):
            raise RuntimeError(_TRACED)
        if not self.pruned:
            return kjt
        keys = kjt.keys()
        lengths = kjt.lengths()
        keep_key = self._keep_keys(keys).to(lengths.device)
        if kjt.variable_stride_per_key():
            per_key = torch.tensor(kjt.stride_per_key(), device=lengths.device)
            keep_seg = keep_key.repeat_interleave(per_key, output_size=lengths.numel())
        else:
            keep_seg = keep_key.repeat_interleave(kjt.stride())  # one flag per (key, sample) segment
        keep_val = keep_seg.repeat_interleave(lengths.long(), output_size=kjt.values().numel())
        weights = kjt.weights_or_none()
        new_lengths = lengths * keep_seg.to(lengths.dtype)
        values = kjt.values()[keep_val]
        new_weights = None if weights is None else weights[keep_val]
        if kjt.variable_stride_per_key():
            return KeyedJaggedTensor(
                keys=keys, values=values, weights=new_weights, lengths=new_lengths,
                stride_per_key_per_rank=kjt.stride_per_key_per_rank(),
                inverse_indices=kjt.inverse_indices_or_none(),
            )
        return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=new_lengths, weights=new_weights)

    def __call__(self, batch: Any) -> Any:
        """``batch`` with the pruned features' ids removed (a new object; ``batch`` is unchanged).

        Raises:
            TypeError: for a batch that is neither a ``KeyedJaggedTensor`` nor a dataclass
                holding one (the message names its type).
            RuntimeError: when called inside a forward that ``torch.fx`` traces, which is what
                TorchRec's train pipelines do before they move the input distribution out of
                the forward: the mask would be bypassed, silently.
        """
        if isinstance(batch, torch.fx.Proxy):
            raise RuntimeError(_TRACED)
        if isinstance(batch, KeyedJaggedTensor):
            return self.filter_kjt(batch)
        if not dataclasses.is_dataclass(batch) or isinstance(batch, type):
            raise TypeError(f"FeatureMask: cannot drop features from a {type(batch).__name__}; expected a "
                            "KeyedJaggedTensor or a dataclass batch holding one (torchrec Batch, ModelInput)")
        kjts = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)
                if isinstance(getattr(batch, f.name), KeyedJaggedTensor)}
        if not kjts:
            raise TypeError(f"FeatureMask: {type(batch).__name__} has no KeyedJaggedTensor field to drop features from")
        if not self.pruned:
            return batch
        return dataclasses.replace(batch, **{k: self.filter_kjt(v) for k, v in kjts.items()})

    def wrap(self, loader: Iterable[Any]) -> "MaskedLoader":
        """An iterable over ``loader`` whose batches have the current mask applied (see
        :class:`MaskedLoader`)."""
        return MaskedLoader(loader, self)


class MaskedLoader:
    """Iterates ``loader`` and applies ``mask`` to each batch as it is drawn, i.e. with the
    mask of that moment: hand it to a TorchRec training pipeline (``TrainPipelineSparseDist``,
    ``TrainPipelineBase``), which runs the input distribution of batch ``i + 1`` before the
    forward of batch ``i``, so that a mask applied inside the model would come too late.

    The pipeline draws up to two batches ahead, so after ``finalize()`` those already drawn
    still carry the pruned features' ids (their over-arch weights are zero, so they change
    nothing; their tables are looked up once more).

    Args:
        loader: any iterable of batches (a ``DataLoader``, a list, a generator function's result).
        mask: the :class:`FeatureMask` (e.g. ``umec.feature_mask``), read at each batch.

    Example::

        pipeline = TrainPipelineSparseDist(dmp, umec, torch.device("cpu"))
        it = iter(umec.feature_mask.wrap(loader))
        while True:
            try:
                pipeline.progress(it)
            except StopIteration:
                break
    """

    def __init__(self, loader: Iterable[Any], mask: FeatureMask) -> None:
        self.loader = loader
        self.mask = mask

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield self.mask(batch)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
