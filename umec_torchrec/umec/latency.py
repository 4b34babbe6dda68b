r"""Predicted serving latency: pure math over a calibration table.

``umec calibrate`` (:mod:`umec_torchrec.export.calibrate`) measures the pieces of the
serving program (:class:`~umec_torchrec.export.program.CompactPredictor`, run as its
``torch.export`` program) on the machine that will serve, at one batch size ``B``, and
writes a :class:`LatencyTable`. The predicted time of one call on a batch of ``B`` rows is

.. math::
    T = T_0 + \phi \Big( \sum_{\text{Linear } i} L(\mathrm{in}_i, \mathrm{out}_i)
        + \sum_{f\ \text{kept}} E_{d_f}(\mathrm{rows}_f) + I(m) \Big) + \delta \cdot n_{\text{kept}},

* ``T_0``: the fixed per-call overhead (input checks, dispatch, the id transpose, the squeeze);
* ``phi``: the program factor, how much slower the pieces run inside the whole program than
  alone (activations that left the cache, allocation); ``delta``: a per-kept-field term (the
  dispatch a lookup pays alone and not inside the program, or the reverse); ``T_0``, ``phi``
  and ``delta`` are fitted on whole exported programs;
* ``L(in, out)``: one Linear of the program (``addmm`` then in-place ReLU), bilinear in the
  calibrated ``(in, out)`` grid;
* ``E_d(rows)``: one kept field's row lookup, piecewise linear in ``log10(rows)`` of its table
  (a 10M-row table misses the cache, a 10-row table does not), per table dtype ``d`` (``fp32``,
  ``fp16``, ``int8``, ``int4``: the names of ``umec export --dtype``; each is timed with the
  lookup code the exported program runs for it), each table priced at the dtype it will be
  served in (:class:`ServingDtypes`, ``umec compress --serve-dtype / --serve-table-dtype``);
* ``I(m)``: the interaction (``cat``: one concatenation; ``dot`` / ``dcn``: the model's
  interaction on the stacked embeddings), piecewise linear in ``m``, the number of its
  inputs (kept fields plus the dense vector).

Every table is made monotone non-decreasing along each axis when it is calibrated (each value
lowered to the least one at or above it: timing noise only adds time) and the
interpolation is linear between grid points and constant outside them, so the predictor
equals the table at its grid points and is monotone in every kept count.

:class:`LatencyPredictor` evaluates ``T`` as a resource of :mod:`~.resources` does: a batched
function of ``kept [..., S]`` (kept groups per set) and ``alive [..., F]`` (surviving
feature groups). For the resource, the Linear widths are the exact kept counts (the grid
interpolates between aligned widths), so pruning any one unit lowers the predicted time and
the primal-dual step sees every unit; the served program pads hidden widths up to a multiple
of the alignment, :func:`predict_program` with ``served=True`` predicts that exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch

from umec_torchrec.umec.groups import FEATURE_SET, DLRMStructure, GroupSpec

__all__ = [
    "DTYPES",
    "FORMAT",
    "LatencyTable",
    "LatencyPredictor",
    "ServingDtypes",
    "active_latency_table",
    "active_serving_dtypes",
    "dtype_of_element_size",
    "latency_report",
    "interp1",
    "interp2",
    "monotone",
    "predict_program",
    "reported_resources",
    "set_latency_table",
    "set_serving_dtypes",
    "using_latency_table",
]

FORMAT = "umec-latency/1"

#: table dtypes a lookup section can be calibrated for (``umec export --dtype`` names)
DTYPES = ("fp32", "fp16", "int8", "int4")
#: element size in bytes -> the dtype name a lookup class is calibrated for
_DTYPES = {4.0: "fp32", 2.0: "fp16", 1.0: "int8", 0.5: "int4"}
#: names of the first file format's lookup sections, read as the export names
_LEGACY = {"float32": "fp32", "float16": "fp16"}

Number = Union[int, float]


def dtype_of_element_size(size: float) -> str:
    """``"fp32"`` for 4 bytes, ``"fp16"`` for 2, ``"int8"`` for 1, ``"int4"`` for 0.5."""
    try:
        return _DTYPES[float(size)]
    except KeyError:
        raise ValueError(f"no table dtype has {size:g} bytes per element") from None


def monotone(values: torch.Tensor) -> torch.Tensor:
    """``values`` made non-decreasing along every dimension: each value becomes the least value
    at or after it (running minima from the end, dim by dim). Timing noise only adds time, so a
    spike is lowered to its neighbours' level rather than raising everything after it.

    Example::

        monotone(torch.tensor([1.0, 3.0, 2.0]))  # tensor([1., 2., 2.])
    """
    out = values
    for d in range(values.dim()):
        out = torch.flip(torch.cummin(torch.flip(out, [d]), dim=d).values, [d])
    return out


def _segment(x: torch.Tensor, xp: torch.Tensor) -> tuple:
    """Segment index ``j`` (``xp[j-1] <= x < xp[j]``, clamped to the grid) and the position
    ``t`` in it, clamped to ``[0, 1]`` (constant outside the grid)."""
    n = xp.numel()
    if n == 1:
        zero = torch.zeros_like(x, dtype=torch.long)
        return zero, zero, torch.zeros_like(x)
    j = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, n - 1)
    x0, x1 = xp[j - 1], xp[j]
    t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return j - 1, j, t


def interp1(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``f(x)`` through ``(xp, fp)``, constant outside ``[xp[0], xp[-1]]``.

    Args:
        x: ``[...]`` points.
        xp: ``[n]`` increasing grid.
        fp: ``[n]`` values at the grid.

    Returns:
        ``[...]``, equal to ``fp[k]`` at ``x = xp[k]``; monotone where ``fp`` is.

    Example::

        interp1(torch.tensor([1.5]), torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0]))  # 15
    """
    xp, fp = xp.to(x), fp.to(x)
    i0, i1, t = _segment(x, xp)
    return fp[i0] + t * (fp[i1] - fp[i0])


def interp2(x: torch.Tensor, y: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Bilinear ``f(x, y)`` on the grid ``xp [I] x yp [O]`` (values ``f [I, O]``), constant
    outside it; equal to ``f`` at the grid points, monotone in ``x`` and ``y`` where ``f`` is.

    Example::

        f = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        interp2(torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]), f)  # 1.5
    """
    xp, yp, f = xp.to(x), yp.to(x), f.to(x)
    x, y = torch.broadcast_tensors(x, y)
    i0, i1, tx = _segment(x, xp)
    j0, j1, ty = _segment(y, yp)
    f00, f01, f10, f11 = f[i0, j0], f[i0, j1], f[i1, j0], f[i1, j1]
    return (1 - tx) * ((1 - ty) * f00 + ty * f01) + tx * ((1 - ty) * f10 + ty * f11)


@dataclass
class LatencyTable:
    """A calibration of the serving program's pieces (seconds per call on ``batch`` rows).

    Args:
        batch: rows per call the pieces were timed at.
        align: hidden-width alignment of the calibrated program (the grid's widths are
            multiples of it, plus the model's fixed widths).
        embedding_dim: D of the lookups and of the interaction.
        kind: the interaction calibrated (``cat``, ``dot`` or ``dcn``).
        linear_in / linear_out: ``[I]`` / ``[O]`` increasing Linear widths.
        linear_s: ``[I][O]`` seconds of ``addmm`` + ReLU at each width pair (monotone).
        lookup: ``{dtype: {"rows": [C] increasing, "seconds": [C]}}``, one kept field's
            lookup per table size class (monotone in rows), per table dtype (:data:`DTYPES`;
            the first format's ``float32`` / ``float16`` are read as ``fp32`` / ``fp16``).
        interaction_inputs: ``[K]`` increasing ``m`` (kept fields + the dense vector).
        interaction_s: ``[K]`` seconds of the interaction (monotone).
        overhead_s: fixed seconds per call.
        program_factor: the pieces' time inside the whole program over their time alone.
        field_s: seconds per kept field the whole program pays beyond ``program_factor`` times
            its lookup (a per-op dispatch term, fitted like the overhead; negative when a lookup
            timed alone pays more dispatch than inside the program; never below minus the
            factor times the cheapest lookup, so every kept field still costs time; 0 in files
            written before it).
        conditions: where and how it was measured: ``threads``, ``batch``, ``torch``,
            ``torchrec``, ``fbgemm_gpu``, ``cpu``, ...
        raw: the measurements before they were made monotone, and the overhead fit.

    Example::

        table = LatencyTable.from_dict(read_json("LATENCY.json"), source="LATENCY.json")
        table.linear(torch.tensor([512.0]), torch.tensor([256.0]))  # seconds of that Linear
    """

    batch: int
    align: int
    embedding_dim: int
    kind: str
    linear_in: List[int]
    linear_out: List[int]
    linear_s: List[List[float]]
    lookup: Dict[str, Dict[str, List[float]]]
    interaction_inputs: List[int]
    interaction_s: List[float]
    overhead_s: float
    program_factor: float = 1.0
    field_s: float = 0.0
    conditions: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)
    #: where the table came from (its file, set by :meth:`from_dict`), named in errors
    source: ClassVar[str] = "the latency table"

    def __post_init__(self) -> None:
        self._normalize()
        self.validate()

    def _normalize(self) -> None:
        if isinstance(self.lookup, dict):
            self.lookup = {_LEGACY.get(k, k): v for k, v in self.lookup.items()}

    # ------------------------------------------------------------------ checks and I/O form
    def validate(self, source: str = "latency table") -> None:
        """Raise ``ValueError`` naming ``source`` and the field on a malformed table."""
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{source}: field {name!r} {why}")

        for name in ("batch", "align", "embedding_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, f"must be a positive integer, got {v!r}")
        if self.kind not in ("cat", "dot", "dcn"):
            raise bad("kind", f"must be cat, dot or dcn, got {self.kind!r}")
        for name in ("linear_in", "linear_out", "interaction_inputs"):
            _increasing(getattr(self, name), name, bad)
        rows = self.linear_s
        if (not isinstance(rows, list) or len(rows) != len(self.linear_in)
                or any(not isinstance(r, list) or len(r) != len(self.linear_out) for r in rows)):
            raise bad("linear_s", f"must be a {len(self.linear_in)} x {len(self.linear_out)} list of lists")
        _monotone_values(torch.tensor(rows, dtype=torch.float64), "linear_s", bad)
        if len(self.interaction_s) != len(self.interaction_inputs):
            raise bad("interaction_s", f"must have {len(self.interaction_inputs)} values, one per interaction input")
        _monotone_values(torch.tensor(self.interaction_s, dtype=torch.float64), "interaction_s", bad)
        if not isinstance(self.lookup, dict) or not self.lookup:
            raise bad("lookup", "must map a dtype to {rows, seconds}")
        for dt, body in self.lookup.items():
            if dt not in _DTYPES.values():
                raise bad("lookup", f"has unknown dtype {dt!r}; known: {sorted(_DTYPES.values())}")
            if not isinstance(body, dict) or set(body) != {"rows", "seconds"}:
                raise bad(f"lookup.{dt}", "must have exactly the keys rows and seconds")
            _increasing(body["rows"], f"lookup.{dt}.rows", bad)
            if len(body["seconds"]) != len(body["rows"]):
                raise bad(f"lookup.{dt}.seconds", "must have one value per rows class")
            _monotone_values(torch.tensor(body["seconds"], dtype=torch.float64), f"lookup.{dt}.seconds", bad)
        o = self.overhead_s
        if isinstance(o, bool) or not isinstance(o, (int, float)) or not math.isfinite(o) or o < 0:
            raise bad("overhead_s", f"must be a finite number >= 0, got {o!r}")
        f = self.program_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
            raise bad("program_factor", f"must be a finite number > 0, got {f!r}")
        fs = self.field_s
        if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs):
            raise bad("field_s", f"must be a finite number, got {fs!r}")
        cheapest = min(min(b["seconds"]) for b in self.lookup.values())
        if fs < -f * cheapest * (1 + 1e-9):
            raise bad("field_s", f"must be >= -program_factor x the cheapest lookup ({-f * cheapest:.3g}), got {fs!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (``{"format": FORMAT, ...fields}``)."""
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "latency table") -> "LatencyTable":
        """A table from its JSON form; errors name ``source`` and the field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ValueError(f"{source}: field 'format' is {d.get('format')!r}, expected {FORMAT!r} "
                             "(write one with umec calibrate)")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d and n not in ("conditions", "raw", "field_s")]
        if missing:
            raise ValueError(f"{source}: missing field {missing[0]!r}")
        unknown = sorted(set(d) - set(names) - {"format"})
        if unknown:
            raise ValueError(f"{source}: unknown field {unknown[0]!r}")
        t = cls.__new__(cls)
        for n in names:
            setattr(t, n, d.get(n, {}) if n in ("conditions", "raw") else d.get(n, 0.0) if n == "field_s" else d[n])
        t.source = source
        try:
            t._normalize()
            t.validate(source)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
        return t

    # ------------------------------------------------------------------ the pieces
    def _grid(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A field as a tensor of ``like``'s dtype and device (cached per dtype and device)."""
        cache = self.__dict__.setdefault("_tensors", {})
        key = (name, like.dtype, like.device)
        if key not in cache:
            cache[key] = torch.tensor(getattr(self, name), dtype=like.dtype, device=like.device)
        return cache[key]

    def linear(self, n_in: torch.Tensor, n_out: torch.Tensor) -> torch.Tensor:
        """``[...]`` seconds of one Linear (``addmm`` + ReLU) of widths ``n_in x n_out``."""
        n_in = _as_float(n_in)
        n_out = torch.as_tensor(n_out).to(n_in)
        return interp2(n_in, n_out, self._grid("linear_in", n_in), self._grid("linear_out", n_in),
                       self._grid("linear_s", n_in))

    def lookup_seconds(self, rows: Sequence[Number], element_size: Optional[Sequence[float]] = None,
                       dtypes: Optional[Sequence[str]] = None) -> torch.Tensor:
        """``[F]`` seconds of one kept field's lookup for tables of ``rows`` rows, served in
        ``dtypes`` (:data:`DTYPES`, one per table) or, without them, in the dtype of
        ``element_size`` bytes per element (interpolated in ``log10(rows)``).

        A dtype the table has no section for is a ``ValueError`` naming it and the file.

        Example::

            table.lookup_seconds([10**6, 10**3], dtypes=["int8", "fp32"])
        """
        if dtypes is None:
            if element_size is None:
                raise ValueError("lookup_seconds needs dtypes or element sizes")
            dtypes = [dtype_of_element_size(s) for s in element_size]
        dtypes = [_LEGACY.get(d, d) for d in dtypes]
        unknown = sorted(set(dtypes) - set(DTYPES))
        if unknown:
            raise ValueError(f"table dtype {unknown[0]!r}: expected one of {', '.join(DTYPES)}")
        if len(dtypes) != len(rows):
            raise ValueError(f"{len(rows)} tables, {len(dtypes)} dtypes")
        missing = sorted(set(dtypes) - set(self.lookup), key=lambda d: DTYPES.index(d) if d in DTYPES else 99)
        if missing:
            raise ValueError(f"{self.source}: has no {missing[0]} lookups (calibrated: "
                             f"{', '.join(sorted(self.lookup, key=DTYPES.index))}); calibrate with umec calibrate "
                             f"--dtypes {','.join(sorted(set(self.lookup) | set(missing), key=DTYPES.index))}")
        out = torch.zeros(len(rows), dtype=torch.float64)
        for dt in sorted(set(dtypes)):  # a loop over the (few) dtypes
            sel = torch.tensor([d == dt for d in dtypes], dtype=torch.bool)
            body = self.lookup[dt]
            v = self.lookup_interp(body["rows"], torch.tensor(body["seconds"], dtype=torch.float64), rows)
            out = torch.where(sel, v, out)
        return out

    @staticmethod
    def lookup_interp(classes: Sequence[Number], seconds: torch.Tensor, rows: Sequence[Number]) -> torch.Tensor:
        """``[F]`` seconds of lookups in tables of ``rows`` rows from one section's ``classes`` /
        ``seconds`` (piecewise linear in ``log10(rows)``, constant outside)."""
        r = torch.tensor([float(x) for x in rows], dtype=torch.float64).clamp(min=1.0).log10()
        return interp1(r, torch.tensor([float(c) for c in classes], dtype=torch.float64).log10(),
                       seconds.to(torch.float64))

    def interaction(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[...]`` seconds of the interaction with ``inputs`` inputs (kept fields + dense)."""
        inputs = _as_float(inputs)
        return interp1(inputs, self._grid("interaction_inputs", inputs), self._grid("interaction_s", inputs))

    def max_widths(self) -> Dict[str, int]:
        """The largest calibrated ``in`` / ``out`` Linear widths and interaction inputs."""
        return {"in": self.linear_in[-1], "out": self.linear_out[-1], "interaction": self.interaction_inputs[-1]}


def _as_float(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def _increasing(v: Any, name: str, bad: Any) -> None:
    if (not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v)
            or any(not b > a for a, b in zip(v, v[1:])) or v[0] <= 0):
        raise bad(name, f"must be a non-empty list of increasing positive numbers, got {v!r}")


def _monotone_values(t: torch.Tensor, name: str, bad: Any) -> None:
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise bad(name, "must hold finite seconds >= 0")
    if not torch.equal(monotone(t), t):
        raise bad(name, "must be non-decreasing along every axis (umec calibrate writes it so)")


# ---------------------------------------------------------------------- serving dtypes
@dataclass
class ServingDtypes:
    """The dtypes the tables will be served in, as ``umec export --dtype`` / ``--table-dtype``
    take them (:mod:`umec_torchrec.export.table_dtypes`): the latency resource prices each
    table's lookups at its dtype (``umec compress --serve-dtype / --serve-table-dtype``).

    ``largest:K`` ranks all the model's tables (rows x dim) here, the kept ones at export: the
    same tables while the K largest are kept.

    Args:
        dtype: the dtype of tables no rule names (``fp32``, ``fp16``, ``int8``, ``int4``).
        table_dtypes: rules over ``dtype``: ``NAME=DTYPE`` or ``largest:K=DTYPE``, comma-separated.

    Example::

        with using_latency_table(table, ServingDtypes("int8", "largest:3=int4")):
            umec = UMECOptimizer(opt, model, ["latency=0.3"])
    """

    dtype: str = "fp32"
    table_dtypes: Optional[str] = None

    def validate(self) -> None:
        """``ValueError`` naming the flag on a bad dtype or rule."""
        from umec_torchrec.export.table_dtypes import parse_rules

        if self.dtype not in DTYPES:
            raise ValueError(f"--serve-dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            parse_rules(self.table_dtypes)
        except ValueError as e:
            raise ValueError(str(e).replace("--table-dtype", "--serve-table-dtype")) from None

    def resolve(self, table_sizes: Mapping[str, float]) -> Dict[str, str]:
        """``{table: dtype}`` of tables of ``table_sizes`` (``{table: rows x dim}``, model order)."""
        from umec_torchrec.export.table_dtypes import resolve

        self.validate()
        try:
            return resolve(table_sizes, self.dtype, self.table_dtypes)[0]
        except ValueError as e:
            raise ValueError(str(e).replace("--table-dtype", "--serve-table-dtype")) from None


_SERVING: ContextVar[Optional[ServingDtypes]] = ContextVar("umec_serving_dtypes", default=None)


def set_serving_dtypes(serving: Optional[ServingDtypes]) -> None:
    """Make ``serving`` the table dtypes latency budgets and reports price in this context
    (``umec compress --serve-dtype / --serve-table-dtype``); ``None``: each table's own
    element type (fp32 for a trained DLRM)."""
    if serving is not None:
        serving.validate()
    _SERVING.set(serving)


def active_serving_dtypes() -> Optional[ServingDtypes]:
    """The dtypes set by :func:`set_serving_dtypes` / :func:`using_latency_table`, or ``None``."""
    return _SERVING.get()


# ---------------------------------------------------------------------- the active table
_ACTIVE: ContextVar[Optional[LatencyTable]] = ContextVar("umec_latency_table", default=None)


def set_latency_table(table: Optional[LatencyTable]) -> None:
    """Make ``table`` the latency model of ``latency`` budgets and reports in this context
    (the CLI's ``--latency-model``); ``None`` clears it."""
    _ACTIVE.set(table)


@contextlib.contextmanager
def using_latency_table(table: LatencyTable, serving: Optional[ServingDtypes] = None) -> Iterator[LatencyTable]:
    """``with using_latency_table(t):`` latency budgets and reports use ``t`` inside the block,
    pricing the tables at ``serving``'s dtypes (default: their own element type).

    Example::

        with using_latency_table(load_latency_table("LATENCY.json")):
            umec = UMECOptimizer(opt, model, ["latency=0.2"])   # the resource keeps the table
    """
    if serving is not None:
        serving.validate()
    token = _ACTIVE.set(table)
    stoken = _SERVING.set(serving)
    try:
        yield table
    finally:
        _SERVING.reset(stoken)
        _ACTIVE.reset(token)


def active_latency_table(required: bool = True) -> Optional[LatencyTable]:
    """The table set by :func:`set_latency_table` / :func:`using_latency_table`; without one,
    ``ValueError`` (or ``None`` when not ``required``)."""
    t = _ACTIVE.get()
    if t is None and required:
        raise ValueError("a latency budget needs a latency model: pass --latency-model LATENCY.json "
                         "(written by umec calibrate), or use umec_torchrec.umec.latency.using_latency_table")
    return t


def reported_resources(spec: Optional[GroupSpec] = None) -> tuple:
    """The resources a report shows: every registered one, ``latency`` only while a latency
    table is active (and, given ``spec``, covers its model: otherwise a warning says why it
    is left out, so a finished run is never lost to its report).

    Example::

        resources_of_masks(spec, masks, reported_resources(spec))
    """
    from umec_torchrec.umec.resources import RESOURCES

    table = active_latency_table(required=False)
    ok = table is not None
    if ok and spec is not None:
        try:
            LatencyPredictor(spec, table)
        except ValueError as e:
            warnings.warn(f"predicted latency not reported: {e}", stacklevel=2)
            ok = False
    return tuple(n for n in RESOURCES if n != "latency" or ok)


def latency_report(spec: GroupSpec) -> Optional[Dict[str, Any]]:
    """What ``metrics.json`` records about the latency resource next to its value: the
    calibration (file, batch, threads, clock) and the dtype each table was priced at; ``None``
    without an active table (or one that does not cover the model).

    Example::

        latency_report(spec)  # {"calibration": {...}, "serving": {"dtype": "int8", ..., "tables": {...}}}
    """
    table = active_latency_table(required=False)
    if table is None:
        return None
    try:
        pred = LatencyPredictor(spec, table)
    except ValueError:
        return None
    serving = active_serving_dtypes()
    return {"calibration": {"file": table.source, "batch": table.batch,
                            **{k: table.conditions.get(k) for k in ("threads", "clock", "cpu", "calibrated_at")}},
            "serving": {"dtype": serving.dtype if serving else None,
                        "table_dtypes": serving.table_dtypes if serving else None,
                        "tables": dict(pred.table_dtypes)}}


# ---------------------------------------------------------------------- predictions
def _aligned(w: torch.Tensor, align: int) -> torch.Tensor:
    return torch.ceil(w / align) * align


def _chain_time(table: LatencyTable, first_in: torch.Tensor, outs: List[torch.Tensor], served: bool) -> torch.Tensor:
    """Seconds of a Linear chain reading ``first_in`` columns with output widths ``outs``
    (hidden ones padded to the alignment when ``served``)."""
    total = torch.zeros_like(first_in)
    prev = first_in
    for i, w in enumerate(outs):  # a loop over the (few) layers
        if served and i < len(outs) - 1:
            w = _aligned(w, table.align)
        total = total + table.linear(prev, w)
        prev = w
    return total


def _top_input(kind: str, owners: torch.Tensor, dim: int) -> torch.Tensor:
    if kind == "dot":
        return dim + owners * (owners - 1.0) / 2.0
    return owners * dim


def predict_program(
    table: LatencyTable,
    kind: str,
    embedding_dim: int,
    dense_in: int,
    bottom: Sequence[Number],
    top: Sequence[Number],
    table_rows: Sequence[Number],
    element_size: Union[float, Sequence[float]] = 4.0,
    served: bool = True,
    dtypes: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """Predicted seconds of one call of the serving program of a DLRM, by piece.

    Args:
        table: the calibration.
        kind / embedding_dim / dense_in: the model's interaction, D and dense input width.
        bottom / top: its MLP widths (exact; the last bottom is D, the last top is 1).
        table_rows: rows of each kept table (one lookup each).
        element_size: bytes per table element (one for all, or one per table).
        served: pad hidden widths to ``table.align`` as the program does.
        dtypes: the dtype each kept table is served in (:data:`DTYPES`; one per entry of
            ``table_rows``), over ``element_size``.

    Returns:
        ``{"total", "overhead", "linear", "lookup", "interaction"}`` in seconds (the pieces as
        they run inside the program: times the program factor).

    Example::

        predict_program(table, "cat", 16, 13, [512, 256, 64, 16], [512, 256, 1], [1000] * 26)["total"]
        predict_program(table, "cat", 16, 13, [512, 256, 64, 16], [512, 256, 1], [1000] * 26,
                        dtypes=["int8"] * 26)["total"]   # the same program with int8 tables
    """
    _check_kind(table, kind, embedding_dim)
    dt = torch.float64
    owners = torch.tensor(float(len(table_rows) + 1), dtype=dt)
    outs_b = [torch.tensor(float(w), dtype=dt) for w in bottom]
    outs_t = [torch.tensor(float(w), dtype=dt) for w in top]
    lin = (_chain_time(table, torch.tensor(float(dense_in), dtype=dt), outs_b, served)
           + _chain_time(table, _top_input(kind, owners, embedding_dim), outs_t, served))
    sizes = [float(element_size)] * len(table_rows) if isinstance(element_size, (int, float)) else list(element_size)
    f = float(table.program_factor)
    look = table.lookup_seconds(list(table_rows), sizes, dtypes=dtypes).sum() + len(table_rows) * table.field_s / f
    inter = table.interaction(owners)
    parts = {"overhead": float(table.overhead_s), "linear": f * float(lin), "lookup": f * float(look),
             "interaction": f * float(inter)}
    parts["total"] = sum(parts.values())
    return parts


def _check_kind(table: LatencyTable, kind: str, dim: int) -> None:
    if kind != table.kind or dim != table.embedding_dim:
        raise ValueError(f"the latency table was calibrated for a {table.kind} interaction with "
                         f"D={table.embedding_dim}, the model is {kind} with D={dim}: calibrate with --model-like "
                         "a run of this model")


class LatencyPredictor:
    """The predicted serving time (seconds per call of ``table.batch`` rows) of the model
    ``spec`` describes, as a function of kept counts, like every resource model.

    ``__call__(kept [..., S], alive [..., F]) -> [...]``: the fixed overhead, each Linear at
    its (exact) kept widths, the lookups of the surviving features and the interaction of
    the surviving inputs. Needs a discovered DLRM (:class:`DLRMStructure`) whose widths the
    table covers.

    Args:
        spec: the groups.
        table: the calibration.
        serving: the dtype each table is served in (default: the active
            :class:`ServingDtypes`, else each table's own element type): its lookups are
            priced at that dtype's section of the table (one it lacks: ``ValueError`` naming
            the dtype and the file).

    Example::

        pred = LatencyPredictor(discover_groups(model), load_latency_table("LATENCY.json"))
        pred(kept, alive)  # seconds per batch
        LatencyPredictor(spec, table, ServingDtypes("int8"))  # the same model with int8 tables
    """

    def __init__(self, spec: GroupSpec, table: LatencyTable, serving: Optional[ServingDtypes] = None) -> None:
        st = spec.structure
        if not isinstance(st, DLRMStructure):
            raise ValueError("a latency budget needs a discovered DLRM (the serving program is a DLRM's); "
                             "declared Linear chains have no calibrated program")
        _check_kind(table, st.kind, int(st.embedding_dim))
        self.table = table
        self.st = st
        self.fi = spec.set_index(FEATURE_SET) if spec.feature_set is not None else None
        self.dense_group = bool(spec.dense_is_group)

        def idx(name: str) -> Optional[int]:
            try:
                return spec.set_index(name)
            except KeyError:
                return None

        self.bottom_idx = [idx(n) for n in st.bottom_names] + [None]
        self.top_idx = [idx(n) for n in st.top_names] + [None]
        n = int(st.num_features)
        tb, lb = list(spec.feature_table_bytes), list(spec.feature_lookup_bytes)
        if len(tb) != n or len(lb) != n:
            raise ValueError(f"a latency budget needs the table sizes of all {n} features in the group spec")
        d = float(st.embedding_dim)
        rows = [t / lb_f if lb_f else 1.0 for t, lb_f in zip(tb, lb)]
        names = list(spec.feature_names) or [f"f{i}" for i in range(n)]
        tables = [t or f for t, f in zip(list(spec.feature_tables) or [""] * n, names)]
        serving = serving if serving is not None else active_serving_dtypes()
        if serving is None:
            dtypes = [dtype_of_element_size(lb_f / d) for lb_f in lb]
        else:  # rank the tables by rows x dim as export does (fp32 bytes: the same order)
            by_table = serving.resolve({t: float(b) for t, b in zip(tables, tb)})
            dtypes = [by_table[t] for t in tables]
        self.dtypes: List[str] = dtypes
        """The dtype each feature's lookups are priced at (feature order)."""
        self.table_dtypes: Dict[str, str] = dict(zip(tables, dtypes))
        """``{table: dtype}`` (model order)."""
        # float64; cast to the counts' dtype when used. A field's share of the per-field term is
        # added to its lookup (never below 0: LatencyTable.validate)
        costs = table.lookup_seconds(rows, dtypes=dtypes) + float(table.field_s) / float(table.program_factor)
        self.all_lookups = float(costs.sum())
        self.lookup_costs = torch.cat([costs.new_zeros(1), costs]) if self.dense_group else costs  # feature-set order
        top_in_full = float(_top_input(st.kind, torch.tensor(float(n + 1)), st.embedding_dim))
        need = {"in": int(max([st.dense_in_features, top_in_full] + list(st.bottom[:-1]) + list(st.top[:-1]))),
                "out": int(max(list(st.bottom) + list(st.top))), "interaction": n + 1}
        have = table.max_widths()
        over = [k for k in need if need[k] > have[k]]
        if over:
            k = over[0]
            raise ValueError(f"the latency table covers {k} widths up to {have[k]}, the model needs {need[k]}: "
                             "calibrate with --model-like a run of this model")

    def feature_costs(self) -> torch.Tensor:
        """``[F]`` lookup seconds of each feature group alone (the dense-arch group costs 0)."""
        return self.lookup_costs

    def __call__(self, kept: torch.Tensor, alive: Optional[torch.Tensor]) -> torch.Tensor:
        st = self.st
        lead = kept.shape[:-1]

        def width(i: Optional[int], full: int) -> torch.Tensor:
            return torch.full(lead, float(full), dtype=kept.dtype, device=kept.device) if i is None else kept[..., i]

        if self.fi is None:
            owners = width(None, st.num_features + 1)
        else:
            owners = kept[..., self.fi] + (0.0 if self.dense_group else 1.0)
        t = self.table
        bottom = [width(i, w) for i, w in zip(self.bottom_idx, st.bottom)]
        top = [width(i, w) for i, w in zip(self.top_idx, st.top)]
        pieces = (_chain_time(t, width(None, st.dense_in_features), bottom, served=False)
                  + _chain_time(t, _top_input(st.kind, owners, st.embedding_dim), top, served=False)
                  + t.interaction(owners))
        if alive is None:
            look = torch.full(lead, self.all_lookups, dtype=kept.dtype, device=kept.device)
        else:
            look = alive @ self.lookup_costs.to(device=alive.device, dtype=alive.dtype)
        return (float(t.overhead_s) + float(t.program_factor) * (pieces + look)).to(kept.dtype)
