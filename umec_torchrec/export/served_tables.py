"""The serving program's embedding tables: per-table dtypes (fp32, fp16, int8, int4), looked
up and pooled in plain aten ops, for one id per feature or for jagged (multi-hot) inputs.

Storage: the tables of one dtype are concatenated into one buffer (one "group"), as
TorchRec's TBE does; feature ``k`` reads rows ``row_offset[k] + id`` of its group. A table
read by several features (a shared table) is stored once. Per dtype a row is:

* ``fp32`` / ``fp16``: ``D`` floats;
* ``int8``: ``D`` uint8 codes ``q`` and an fp16 ``scale`` and ``bias``; the value is
  ``q * scale + bias`` (TorchRec's row-wise quantization, the same codes as its
  ``QuantEmbeddingBagCollection``);
* ``int4``: ``ceil(D / 2)`` bytes, two codes per byte (low nibble first), same scale/bias.

Pooling of a jagged input (``values [N]``, ``lengths [F, B]`` as in a KJT: key-major) is
``index_add`` of the dequantized rows into their bag, then a division by the bag length for
MEAN tables (an empty bag pools to 0, as TorchRec's). All shapes follow ``N`` and ``B``
without data-dependent control flow, so ``torch.export`` keeps both dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

DTYPES = ("fp32", "fp16", "int8", "int4")
"""Table dtypes of the serving program."""
POOLINGS = ("SUM", "MEAN")
"""Poolings the serving program computes (TorchRec ``PoolingType`` names)."""


@dataclass
class TableData:
    """One table as the program stores it.

    Args:
        name: the table's name.
        features: the features that read it (model order).
        dtype: one of :data:`DTYPES`.
        pooling: ``"SUM"`` or ``"MEAN"``.
        data: ``float32 [R, D]`` (fp32), ``float16 [R, D]`` (fp16), ``uint8 [R, D]`` (int8) or
            ``uint8 [R, ceil(D/2)]`` (int4, low nibble first).
        scale / bias: ``float16 [R]`` for int8 / int4, else ``None``.
        dim: D.
    """

    name: str
    features: List[str]
    dtype: str
    pooling: str
    data: torch.Tensor
    dim: int
    scale: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"table {self.name}: dtype {self.dtype!r}, expected one of {DTYPES}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"table {self.name}: pooling {self.pooling!r}; the serving program computes "
                             f"{POOLINGS} only")
        want = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.uint8, "int4": torch.uint8}[self.dtype]
        width = (self.dim + 1) // 2 if self.dtype == "int4" else self.dim
        if self.data.dtype != want or self.data.dim() != 2 or self.data.shape[1] != width:
            raise ValueError(f"table {self.name}: {self.dtype} data must be {want} [rows, {width}], got "
                             f"{self.data.dtype} {tuple(self.data.shape)}")
        quantized = self.dtype in ("int8", "int4")
        if quantized != (self.scale is not None and self.bias is not None):
            raise ValueError(f"table {self.name}: scale and bias are needed exactly for int8/int4")

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the program stores for this table (codes plus per-row scale and bias)."""
        n = self.data.numel() * self.data.element_size()
        for t in (self.scale, self.bias):
            if t is not None:
                n += t.numel() * t.element_size()
        return int(n)

    @classmethod
    def fp32(cls, name: str, features: Sequence[str], weight: torch.Tensor, pooling: str = "SUM") -> "TableData":
        """A float table (``weight [R, D]``) stored as fp32 (shared, not copied)."""
        w = weight.detach()
        return cls(name, list(features), "fp32", pooling, w.float(), int(w.shape[1]))


def dequantize(dtype: str, data: torch.Tensor, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               dim: int) -> torch.Tensor:
    """``float32 [n, dim]`` values of ``n`` stored rows (``data [n, ...]``, ``scale/bias [n]``)."""
    if dtype == "fp32":
        return data
    if dtype == "fp16":
        return data.float()
    if dtype == "int4":
        data = torch.stack([data & 15, data >> 4], dim=-1).flatten(1)[:, :dim]
    assert scale is not None and bias is not None
    return data.float() * scale.float().unsqueeze(1) + bias.float().unsqueeze(1)


class ServedTables(nn.Module):
    """The tables of a program: ``lookup(ids [B, F]) -> [B, F, D]`` and
    ``pool(values [N], lengths [F, B]) -> [B, F, D]``, both in the model's feature order.

    Args:
        tables: the tables (model order); their ``features`` together give the feature order.

    Example::

        st = ServedTables([TableData.fp32("t_a", ["a"], w_a), TableData.fp32("t_b", ["b", "c"], w_b, "MEAN")])
        x = st.pool(torch.tensor([3, 1, 4]), torch.tensor([[1, 0], [2, 0], [0, 0]]))  # [2, 3, D]
    """

    def __init__(self, tables: Sequence[TableData]) -> None:
        super().__init__()
        if not tables:
            raise ValueError("a serving program needs at least one table")
        dims = {t.dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"tables have different dims {sorted(dims)}; a DLRM's tables share one dim")
        self.dim = dims.pop()
        self.feature_names: List[str] = [f for t in tables for f in t.features]
        self.dtypes: Dict[str, str] = {t.name: t.dtype for t in tables}
        self.poolings: Dict[str, str] = {t.name: t.pooling for t in tables}
        self.table_bytes: Dict[str, int] = {t.name: t.nbytes for t in tables}
        self.groups: List[str] = [d for d in DTYPES if any(t.dtype == d for t in tables)]
        nf = len(self.feature_names)
        if len(set(self.feature_names)) != nf:
            raise ValueError(f"a feature is read by two tables: {self.feature_names}")
        pos = {f: k for k, f in enumerate(self.feature_names)}
        group, offset, mean, rows = [0] * nf, [0] * nf, [False] * nf, [0] * nf
        for g, d in enumerate(self.groups):
            members = [t for t in tables if t.dtype == d]
            start = 0
            for t in members:
                for f in t.features:
                    group[pos[f]], offset[pos[f]], mean[pos[f]], rows[pos[f]] = g, start, t.pooling == "MEAN", t.rows
                start += t.rows
            self.register_buffer(f"data_{g}", torch.cat([t.data for t in members]) if len(members) > 1
                                 else members[0].data)
            if d in ("int8", "int4"):
                self.register_buffer(f"scale_{g}", torch.cat([t.scale.reshape(-1) for t in members]))
                self.register_buffer(f"bias_{g}", torch.cat([t.bias.reshape(-1) for t in members]))
        self.register_buffer("feature_group", torch.tensor(group, dtype=torch.long))
        self.register_buffer("row_offset", torch.tensor(offset, dtype=torch.long))
        self.register_buffer("is_mean", torch.tensor(mean, dtype=torch.bool))
        self.rows: List[int] = rows
        """Rows of each feature's table (feature order)."""

    def _group_rows(self, g: int, rows: torch.Tensor) -> torch.Tensor:
        d = self.groups[g]
        data = getattr(self, f"data_{g}")
        scale = getattr(self, f"scale_{g}", None)
        bias = getattr(self, f"bias_{g}", None)
        return dequantize(d, data.index_select(0, rows), None if scale is None else scale.index_select(0, rows),
                          None if bias is None else bias.index_select(0, rows), self.dim)

    def _rows(self, feature: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``float32 [n, D]`` rows of ``ids [n]`` read by features ``feature [n]``."""
        rows = ids + self.row_offset.index_select(0, feature)
        if len(self.groups) == 1:
            return self._group_rows(0, rows)
        group = self.feature_group.index_select(0, feature)
        out = None
        for g in range(len(self.groups)):
            hit = group == g
            part = self._group_rows(g, torch.where(hit, rows, torch.zeros_like(rows)))
            part = torch.where(hit.unsqueeze(1), part, torch.zeros_like(part))
            out = part if out is None else out + part
        assert out is not None
        return out

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``float32 [B, F, D]``: the row of each feature's id (``ids int64 [B, F]``); a SUM or
        MEAN bag of one id is that row."""
        b, nf = ids.shape
        feature = torch.arange(nf, device=ids.device).expand(b, nf).reshape(-1)
        return self._rows(feature, ids.reshape(-1)).view(b, nf, self.dim)

    def pool(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``float32 [B, F, D]``: each feature's pooled bag.

        Args:
            values: ``int64 [N]`` ids, key-major: feature 0's bags of rows 0..B-1, then feature 1's...
                (``KeyedJaggedTensor.values()`` with the program's keys).
            lengths: ``int64 [F, B]`` bag sizes (``kjt.lengths().view(F, B)``); ``N = lengths.sum()``.
        """
        nf, b = lengths.shape
        flat = lengths.reshape(-1)
        bag = torch.repeat_interleave(torch.arange(nf * b, device=values.device), flat, output_size=values.shape[0])
        rows = self._rows(torch.div(bag, b, rounding_mode="floor"), values)
        pooled = torch.zeros(nf * b, self.dim, dtype=rows.dtype, device=rows.device).index_add(0, bag, rows)
        mean = self.is_mean.repeat_interleave(b)
        div = torch.where(mean, flat.clamp(min=1).to(rows.dtype), torch.ones_like(flat, dtype=rows.dtype))
        return (pooled / div.unsqueeze(1)).view(nf, b, self.dim).transpose(0, 1)


__all__ = ["DTYPES", "POOLINGS", "TableData", "dequantize", "ServedTables"]
