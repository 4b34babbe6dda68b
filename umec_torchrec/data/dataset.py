"""CTR datasets (one id per categorical feature per row, or several for a multi-hot feature;
in memory, or memory-mapped from a prepared directory) and their batching into TorchRec
``Batch`` objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from umec_torchrec.data.jagged import JaggedIds

__all__ = ["CTRData"]


@dataclass
class CTRData:
    """Encoded click-log rows.

    Args:
        dense: ``float32 [N, n_dense]``, already transformed (``log(1 + max(x, 0))``).
            Sources without dense features carry one all-zero column named ``"none"``,
            so that every model has a dense arch.
        sparse: ``int64 [N, n_sparse]``, the embedding row of each categorical feature,
            in ``[0, table_sizes[j])``; or any object with ``shape`` ``(N, n_sparse)`` whose
            ``sparse[index]`` is the ``int64`` tensor of those rows (the memory-mapped
            :class:`~umec_torchrec.data.prepared.ColumnIds` of a prepared directory). Batches
            and :meth:`subset` index only the rows they need; nothing here copies whole arrays.
        labels: ``float32 [N]`` in {0, 1}.
        dense_names / feature_names: column names.
        table_sizes: rows of each feature's table.
        info: provenance (source, vocabulary mode, bad-line counts, ...).
        prefetch: when > 0, :meth:`batches` assembles that many batches ahead in a worker
            thread (:func:`~umec_torchrec.data.prefetch.prefetch`); a prepared directory's
            splits use :data:`~umec_torchrec.data.prefetch.PREFETCH_DEPTH`.
        multi_hot: ``{feature: JaggedIds}`` of the multi-hot features (several embedding rows
            per sample, pooled by the model's table pooling); their column of ``sparse`` is
            0 and unused. A batch's KJT gives them their lengths.
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    labels: torch.Tensor
    dense_names: List[str]
    feature_names: List[str]
    table_sizes: List[int]
    info: Dict[str, Any] = field(default_factory=dict)
    prefetch: int = 0
    multi_hot: Dict[str, JaggedIds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        for f, jag in self.multi_hot.items():
            if f not in self.feature_names:
                raise ValueError(f"multi-hot feature {f!r} is not one of the features {self.feature_names}")
            if len(jag) != n:
                raise ValueError(f"multi-hot feature {f!r} has {len(jag)} rows, the data {n}")
        if self.dense.shape != (n, len(self.dense_names)):
            raise ValueError(f"dense shape {tuple(self.dense.shape)} != ({n}, {len(self.dense_names)})")
        if self.sparse.shape != (n, len(self.feature_names)):
            raise ValueError(f"sparse shape {tuple(self.sparse.shape)} != ({n}, {len(self.feature_names)})")
        if len(self.table_sizes) != len(self.feature_names):
            raise ValueError("one table size per feature is required")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "CTRData":
        """Rows ``index`` (a LongTensor or bool mask), same vocabulary."""
        return CTRData(
            self.dense[index], self.sparse[index], self.labels[index],
            list(self.dense_names), list(self.feature_names), list(self.table_sizes), dict(self.info),
            multi_hot={f: jag.take(index) for f, jag in self.multi_hot.items()},
        )

    def ids_per_sample(self) -> Dict[str, float]:
        """Mean ids per row of each multi-hot feature (``{}`` when every feature has one id).

        Example::

            data.ids_per_sample()      # {"tags": 2.7}
        """
        return {f: jag.mean_length() for f, jag in self.multi_hot.items()}

    def split(self, test_fraction: float, seed: int = 0, time_ordered: bool = False) -> Tuple["CTRData", "CTRData"]:
        """(train, test). Seeded random split, or the first rows train when ``time_ordered``."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n = len(self)
        n_test = max(1, int(round(n * test_fraction)))
        if time_ordered:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(order[: n - n_test]), self.subset(order[n - n_test:])

    def split_three(self, test_fraction: float, valid_fraction: float = 0.1, seed: int = 0,
                    time_ordered: bool = False) -> Tuple["CTRData", "CTRData", "CTRData"]:
        """(train, valid, test) by :func:`~umec_torchrec.data.split.split_rows`: the test rows
        are those of :meth:`split` with the same arguments; valid is carved out of its train.

        Example::

            train, valid, test = data.split_three(0.23, 0.1, seed=0)
        """
        from umec_torchrec.data.split import split_rows

        tr, va, te = split_rows(len(self), test_fraction, valid_fraction, seed, time_ordered)
        return tuple(self.subset(torch.from_numpy(np.ascontiguousarray(r))) for r in (tr, va, te))  # type: ignore[return-value]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start: int = 0,
    ) -> Iterator[Batch]:
        """Yield ``Batch`` objects of global size ``batch_size``.

        With ``world_size > 1`` each rank gets its contiguous ``1/world_size`` slice of
        every global batch, so the union over ranks of step ``i`` is exactly the global
        batch ``i`` of a single process (``batch_size`` must divide by ``world_size``).
        The order depends only on ``(seed, epoch)``; ``start`` skips the first batches.
        With ``prefetch > 0`` the batches are assembled ahead in a worker thread.
        """
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not divide by world size {world_size}")
        it = self._batches(batch_size, shuffle, seed, epoch, rank, world_size, drop_last, start)
        if self.prefetch > 0:
            from umec_torchrec.data.prefetch import prefetch

            it = prefetch(it, self.prefetch)
        yield from it

    def _batches(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int,
                 drop_last: bool, start: int) -> Iterator[Batch]:
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        else:
            order = torch.arange(n)
        local = batch_size // world_size
        for b in range(start, self.num_batches(batch_size, drop_last)):
            idx = order[b * batch_size: (b + 1) * batch_size]
            if world_size > 1:
                if idx.numel() < batch_size:  # last partial batch: split as evenly as possible
                    idx = idx.tensor_split(world_size)[rank]
                else:
                    idx = idx[rank * local: (rank + 1) * local]
            if idx.numel() == 0:
                continue
            yield self.make_batch(idx)

    def make_batch(self, idx: torch.Tensor) -> Batch:
        """A ``Batch`` of rows ``idx``: KJT keys = ``feature_names``, one id per row, or the
        row's ids of a multi-hot feature (its lengths; an empty row is an empty bag)."""
        ids = self.sparse[idx]  # [B, F]
        b, f = ids.shape
        if not self.multi_hot:
            values, lengths = ids.t().reshape(-1), torch.ones(b * f, dtype=torch.int32)
        else:
            vals, lens = [], []
            for j, name in enumerate(self.feature_names):  # one vectorised gather per feature
                jag = self.multi_hot.get(name)
                if jag is None:
                    vals.append(ids[:, j])
                    lens.append(torch.ones(b, dtype=torch.int32))
                else:
                    part = jag.take(idx)
                    vals.append(torch.from_numpy(part.values.astype(np.int64, copy=False)))
                    lens.append(torch.from_numpy(part.lengths.astype(np.int32)))
            values, lengths = torch.cat(vals), torch.cat(lens)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(self.feature_names), values=values, lengths=lengths)
        return Batch(dense_features=self.dense[idx], sparse_features=kjt, labels=self.labels[idx])
