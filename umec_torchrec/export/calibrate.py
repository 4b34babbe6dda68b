"""Calibration of the serving program's cost pieces (``umec calibrate``), and its file.

The pieces are timed with the operations the exported program
(:class:`~umec_torchrec.export.program.CompactPredictor`) runs, on this machine, at one batch
size and thread count:

* every Linear: ``addmm`` then in-place ReLU (as :class:`~umec_torchrec.export.aligned.AlignedMLP`)
  on a grid of ``(in, out)`` widths: multiples of the alignment up to the model's widest
  layer, plus the model's own fixed widths (dense input, D, the logit, the full interaction);
* one field's row lookup per table size class (10, 10^3, 10^5, 10^6, 10^7 rows up to the
  model's largest table) and table dtype (``dtypes``: fp32, fp16, int8, int4), with the code the
  exported program runs for that dtype: ``fp32`` as ``F.embedding`` on a column of the
  transposed id matrix (:class:`~umec_torchrec.export.program.CompactPredictor`'s fp32 path);
  ``fp16`` / ``int8`` / ``int4`` as
  :meth:`~umec_torchrec.export.served_tables.ServedTables.lookup` of a table of that dtype
  (gather of codes, scale and bias, dequantization) read by as many fields as the model has,
  per field; each dtype's classes are then scaled so that they add up to the model's whole
  lookup step timed with all its tables at their own sizes (one table alone does not see the
  others' rows competing for the cache: with int8 tables on this machine the step took about
  twice the sum of the classes);
* the interaction on ``m`` inputs (``torch.cat`` for ``cat``; the model's own interaction on
  the stacked embeddings for ``dot`` and ``dcn``);
* the fixed per-call overhead and the program factor: the exported programs of the model and
  of compact ones with a half and a quarter of its features and widths, built with
  :func:`~umec_torchrec.export.program.export_program` exactly as ``umec export`` builds them
  (tables capped at 1000 rows), timed whole; ``measured = overhead + factor * pieces`` is
  fitted by least squares (with a per-kept-field term ``delta`` when the programs determine it:
  :func:`fit_program_terms`), together with the dense program served in each other calibrated
  dtype (its tables in :class:`~umec_torchrec.export.served_tables.ServedTables` of that dtype,
  as ``umec export --dtype`` serves them); ``quick``: the dense programs only (fp32 alone:
  factor 1).

Each measurement is the fastest of ``reps`` blocks of calls (a block lasts about 2 ms or at
least one call): on a shared machine the fastest block is the uncontended time, as the
inference bench's best round. The tables are then made monotone
(:func:`umec_torchrec.umec.latency.monotone`; the raw values stay in ``raw``). The
file records the conditions (threads, batch, library versions, CPU model);
:func:`check_conditions` refuses or warns about a file measured under others.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.nn import functional as F

from umec_torchrec.export.aligned import aligned_width, check_align
from umec_torchrec.export.compact import build_compact
from umec_torchrec.export.program import DEFAULT_ALIGN, export_program
from umec_torchrec.export.served_tables import ServedTables, TableData
from umec_torchrec.io import read_json, write_json
from umec_torchrec.models import ModelConfig, build_dlrm
from umec_torchrec.umec import layout
from umec_torchrec.umec.latency import DTYPES, LatencyTable, monotone, predict_program
from umec_torchrec.umec.masks import PruningMasks

__all__ = [
    "CalibrationOptions",
    "calibrate",
    "check_conditions",
    "config_prediction",
    "current_conditions",
    "fit_overhead",
    "fit_program_terms",
    "linear_grid",
    "load_latency_table",
    "predicted_speedup",
    "save_latency_table",
]

#: table size classes of the lookup calibration (plus the model's largest table)
ROW_CLASSES = (10, 10**3, 10**5, 10**6, 10**7)
#: rows of the reference programs' tables (their lookups use this class)
REFERENCE_ROWS = 1000
#: the clocks a calibration can time with: wall time, or the calling thread's CPU time (one
#: thread only: it leaves out the time the thread waits for a core on a loaded machine)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
#: conditions that make a table wrong for this machine, and those that only make it doubtful
STRICT_CONDITIONS = ("torch", "threads", "batch", "clock")
SOFT_CONDITIONS = ("torchrec", "fbgemm_gpu", "cpu", "align")


@dataclass
class CalibrationOptions:
    """How ``umec calibrate`` measures.

    Args:
        batch: rows per call (the serving batch; a latency budget is per call of this size).
        threads: intra-op threads (``torch.set_num_threads``); ``None`` keeps the current number.
        reps: timed blocks per measurement (the fastest counts); ``None``: 7, or 2 with ``quick``.
        quick: a few widths, size classes and interaction points (CI-sized).
        align: hidden-width alignment of the program (``umec export --align``).
        seed: seed of the random inputs.
        clock: ``"wall"`` (default) or ``"cpu"``: the thread's CPU time, which a loaded machine
            does not inflate (needs ``threads=1``; compare with ``umec bench inference --clock cpu``).
        dtypes: the table dtypes whose lookups are timed (``umec export --dtype`` names; a
            latency budget or prediction for tables of another dtype is refused); fp32 always.
    """

    batch: int = 4096
    threads: Optional[int] = None
    reps: Optional[int] = None
    quick: bool = False
    align: int = DEFAULT_ALIGN
    seed: int = 0
    clock: str = "wall"
    dtypes: Tuple[str, ...] = DTYPES

    def validate(self) -> None:
        """``ValueError`` naming the field on a bad value."""
        for name in ("batch", "threads", "reps", "align"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise ValueError(f"clock 'cpu' times one thread: it needs threads 1, got {self.threads}")
        bad = [d for d in self.dtypes if d not in DTYPES]
        if bad or len(set(self.dtypes)) != len(self.dtypes) or "fp32" not in self.dtypes:
            raise ValueError(f"dtypes must be distinct names among {', '.join(DTYPES)}, fp32 among them (the dense "
                             f"program's), got {list(self.dtypes)}")

    @property
    def repetitions(self) -> int:
        return self.reps if self.reps is not None else (2 if self.quick else 7)


# ---------------------------------------------------------------------- conditions
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def current_conditions(threads: Optional[int] = None, batch: Optional[int] = None) -> Dict[str, Any]:
    """This process's conditions: library versions, CPU model, threads (default: the current
    number) and, when given, the batch size."""
    from umec_torchrec.runs import versions

    out: Dict[str, Any] = dict(versions())
    out.update({"cpu": _cpu_model(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                "threads": int(threads if threads is not None else torch.get_num_threads())})
    if batch is not None:
        out["batch"] = int(batch)
    return out


def check_conditions(table: LatencyTable, source: str, threads: Optional[int] = None, batch: Optional[int] = None,
                     strict: bool = True, clock: Optional[str] = None) -> List[str]:
    """Compare ``table``'s conditions with this process's.

    Args:
        table: the calibration.
        source: its file (named in the messages).
        threads / batch / clock: the thread count, batch size and clock the prediction is
            compared with (not compared when ``None``; a table without a clock is ``wall``).
        strict: a different torch version, thread count or batch size raises ``ValueError``
            (a measurement on this machine is compared with the prediction); otherwise every
            difference is only a warning (a budget chosen on another machine than the one that
            will serve).

    Returns:
        one warning per other difference (torchrec, fbgemm_gpu, CPU model), naming both values.
    """
    rec = table.conditions
    now = current_conditions(threads)
    now.pop("threads")
    if threads is not None:
        now["threads"] = int(threads)
    if batch is not None:
        now["batch"] = int(batch)
    if clock is not None:
        now["clock"] = clock
    rec = dict(rec, batch=table.batch, clock=rec.get("clock", "wall"))
    warnings = []
    for key in STRICT_CONDITIONS + SOFT_CONDITIONS:
        if key not in now or key not in rec or str(rec[key]) == str(now[key]):
            continue
        msg = f"{source}: calibrated with {key} {rec[key]}, this run has {key} {now[key]}"
        if strict and key in STRICT_CONDITIONS:
            raise ValueError(msg + ("; calibrate again here (umec calibrate"
                                    + (f" --{key} {now[key]}" if key in ("threads", "batch", "clock") else "")
                                    + ")"))
        warnings.append(msg)
    return warnings


# ---------------------------------------------------------------------- the file
def save_latency_table(path: str, table: LatencyTable) -> None:
    """Write ``table`` to ``path`` atomically (JSON)."""
    write_json(path, table.to_dict())


def load_latency_table(path: str) -> LatencyTable:
    """Read a table written by :func:`save_latency_table`; ``ValueError`` naming the file and
    the field on a malformed one."""
    return LatencyTable.from_dict(read_json(path), source=path)


# ---------------------------------------------------------------------- grids
def _top_in(cfg: ModelConfig, owners: int) -> int:
    d = cfg.embedding_dim
    return d + owners * (owners - 1) // 2 if cfg.kind == "dot" else owners * d


def linear_grid(cfg: ModelConfig, align: int = DEFAULT_ALIGN, quick: bool = False) -> Tuple[List[int], List[int]]:
    """The ``(in, out)`` widths a calibration times for ``cfg``'s program.

    Multiples ``k * align`` (``k`` = 1, 2, 3, 4, 6, 8, 12, 16, ...; with ``quick`` only
    powers of 4) up to the widest layer, plus the fixed widths: dense input, full interaction
    width, D, the logit and the model's own (aligned) hidden widths.

    Example::

        ins, outs = linear_grid(kaggle_model_config())   # ins start 13, 16, ...; outs 1, 16, ...
    """
    check_align(align)
    n_owners = len(cfg.feature_names) + 1
    hidden = [aligned_width(w, align) for w in list(cfg.bottom[:-1]) + list(cfg.top[:-1])]
    max_in = max([cfg.dense_in_features, _top_in(cfg, n_owners)] + hidden)
    max_out = max(hidden + [cfg.embedding_dim, 1])
    ks = [1, 4, 16, 64, 256] if quick else [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    fixed_in = {cfg.dense_in_features, _top_in(cfg, n_owners), max_in}
    fixed_out = {1, cfg.embedding_dim, max_out}
    if not quick:
        fixed_in |= set(hidden)
        fixed_out |= set(hidden)
    ins = sorted({k * align for k in ks if k * align < max_in} | fixed_in)
    outs = sorted({k * align for k in ks if k * align < max_out} | fixed_out)
    return ins, outs


def _row_classes(cfg: ModelConfig, quick: bool) -> List[int]:
    top = max(cfg.table_sizes)
    classes = (10, 10**3) if quick else ROW_CLASSES
    return sorted({r for r in classes if 2 * r <= top} | {top})  # no class next to the largest table


def _interaction_inputs(cfg: ModelConfig, quick: bool) -> List[int]:
    n = len(cfg.feature_names)
    qs = (0.5,) if quick else (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
    return sorted({2, n + 1} | {1 + max(1, round(n * q)) for q in qs})


# ---------------------------------------------------------------------- timing
_CLOCK: List[Callable[[], float]] = [time.perf_counter]  # the clock of the calibration running now


def _seconds(fn: Callable[[int], Any], reps: int, n_inputs: int = 1, min_block_s: float = 2e-3) -> float:
    """Seconds per call of ``fn(i)`` (``i`` cycling over ``n_inputs``) in the fastest of
    ``reps`` timed blocks of enough calls to last about ``min_block_s``, after a warm-up call."""
    clock = _CLOCK[0]
    fn(0)
    t = clock()
    fn(0)
    one = max(clock() - t, 1e-7)
    calls = max(n_inputs, min(200, math.ceil(min_block_s / one)))
    out = []
    for _ in range(reps):
        t = clock()
        for i in range(calls):
            fn(i % n_inputs)
        out.append((clock() - t) / calls)
    return min(out)


def _time_linears(ins: List[int], outs: List[int], batch: int, reps: int, g: torch.Generator) -> List[List[float]]:
    rows = []
    for n_in in ins:  # the calibration grid: one measurement per point (not a hot path)
        x = torch.rand(batch, n_in, generator=g)
        row = []
        for n_out in outs:
            w = torch.rand(n_out, n_in, generator=g) - 0.5
            b = torch.rand(n_out, generator=g)
            row.append(_seconds(lambda i: torch.addmm(b, x, w.t()).relu_(), reps))
        rows.append(row)
    return rows


def _time_lookups(classes: List[int], cfg: ModelConfig, batch: int, reps: int, g: torch.Generator) -> List[float]:
    out = []
    n_f = len(cfg.feature_names)
    for rows in classes:
        weight = torch.rand(rows, cfg.embedding_dim, generator=g)
        ids = [torch.randint(rows, (batch, n_f), generator=g).t() for _ in range(4)]  # [F, B] as in the program
        out.append(_seconds(lambda i: F.embedding(ids[i][0], weight), reps, n_inputs=len(ids)))
    return out


def random_table_data(name: str, features: List[str], dtype: str, rows: int, dim: int, g: torch.Generator,
                      pooling: str = "SUM") -> TableData:
    """A random ``rows x dim`` table of ``dtype`` as the exported program stores it (``int8`` /
    ``int4``: random codes with an fp16 scale and bias per row; the lookup's cost does not
    depend on the values)."""
    if dtype in ("fp32", "fp16"):
        w = torch.rand(rows, dim, generator=g)
        return TableData(name, features, dtype, pooling, w if dtype == "fp32" else w.half(), dim)
    width = dim if dtype == "int8" else (dim + 1) // 2
    codes = torch.randint(256, (rows, width), generator=g, dtype=torch.uint8)
    scale, bias = (torch.rand(rows, generator=g) * 0.01).half(), (torch.rand(rows, generator=g) - 0.5).half()
    return TableData(name, features, dtype, pooling, codes, dim, scale=scale, bias=bias)


def served_lookup_table(dtype: str, rows: int, dim: int, fields: int, g: torch.Generator) -> ServedTables:
    """A :class:`ServedTables` of one random ``rows x dim`` table of ``dtype`` read by ``fields``
    features (:func:`random_table_data`)."""
    return ServedTables([random_table_data("t", [f"f{k}" for k in range(fields)], dtype, rows, dim, g)])


def _time_served_lookups(dtype: str, classes: List[int], cfg: ModelConfig, batch: int, reps: int,
                         g: torch.Generator) -> List[float]:
    """Seconds per field of ``ServedTables.lookup`` (the quantized program's lookup) on one
    table of each size class read by all the model's fields."""
    out = []
    n_f = len(cfg.feature_names)
    for rows in classes:  # the calibration grid (not a hot path)
        st = served_lookup_table(dtype, rows, cfg.embedding_dim, n_f, g)
        ids = [torch.randint(rows, (batch, n_f), generator=g) for _ in range(4)]  # [B, F] as the program's input
        out.append(_seconds(lambda i: st.lookup(ids[i]), reps, n_inputs=len(ids)) / n_f)
    return out


def _time_model_lookups(dtype: str, cfg: ModelConfig, batch: int, reps: int, g: torch.Generator) -> float:
    """Seconds of the dense program's whole lookup step with ``dtype`` tables of ``cfg``'s own
    sizes (random rows): ``F.embedding`` per field for fp32 (``CompactPredictor.forward``),
    ``ServedTables.lookup`` of all fields otherwise (the tables in one buffer, as served)."""
    n_f, d = len(cfg.feature_names), cfg.embedding_dim
    sizes = torch.tensor(cfg.table_sizes, dtype=torch.float64)
    ids = [(torch.rand(batch, n_f, generator=g, dtype=torch.float64) * sizes).long() for _ in range(4)]
    if dtype == "fp32":
        weights = [torch.rand(int(r), d, generator=g) for r in cfg.table_sizes]
        cols = [x.t() for x in ids]
        return _seconds(lambda i: [F.embedding(cols[i][k], w) for k, w in enumerate(weights)], reps,
                        n_inputs=len(ids))
    st = ServedTables([random_table_data(f"t{k}", [f"f{k}"], dtype, int(r), d, g)
                       for k, r in enumerate(cfg.table_sizes)])
    return _seconds(lambda i: st.lookup(ids[i]), reps, n_inputs=len(ids))


def _time_interactions(inputs: List[int], cfg: ModelConfig, batch: int, reps: int, g: torch.Generator) -> List[float]:
    out = []
    d = cfg.embedding_dim
    for m in inputs:
        dense = torch.rand(batch, d, generator=g)
        rows = [torch.rand(batch, d, generator=g) for _ in range(m - 1)]
        if cfg.kind == "cat":  # CompactPredictor.forward's two interaction paths
            out.append(_seconds(lambda i: torch.cat([dense] + rows, dim=1), reps))
        else:
            sub = dataclasses.replace(cfg, feature_names=list(cfg.feature_names[: m - 1]), table_sizes=[1] * (m - 1))
            inter = layout.interaction(build_dlrm(sub).eval())
            out.append(_seconds(
                lambda i: inter(dense_features=dense, sparse_features=torch.stack(rows, dim=1)), reps))
    return out


def _share_masks(cfg: ModelConfig, share: float) -> PruningMasks:
    """The first ``share`` of the features and of every hidden layer's units."""
    kept = list(cfg.feature_names[: max(1, round(len(cfg.feature_names) * share))])
    widths = layout.prunable_widths(cfg)
    layers = {n: list(range(max(1, round(w * share)))) for n, w in widths.items()}
    return PruningMasks(list(cfg.feature_names), kept, layers, widths)


def _time_programs(table: LatencyTable, cfg: ModelConfig, batch: int, reps: int, quick: bool,
                   g: torch.Generator, dtypes: Tuple[str, ...] = ("fp32",)) -> List[Dict[str, Any]]:
    """The reference programs (tables capped at :data:`REFERENCE_ROWS` rows): the dense, half
    and quarter fp32 programs (``quick``: the dense one) and the dense program in each other
    dtype of ``dtypes``, measured against the sum of their predicted pieces (``table`` without
    overhead, factor 1)."""
    from umec_torchrec.export.compact import compact_config

    ref = dataclasses.replace(cfg, table_sizes=[min(REFERENCE_ROWS, r) for r in cfg.table_sizes])
    dense = build_dlrm(ref).eval()
    models = [("dense", dense, ref, "fp32")] if "fp32" in dtypes else []
    for name, share in ([] if quick or "fp32" not in dtypes else [("half", 0.5), ("quarter", 0.25)]):
        masks = _share_masks(ref, share)
        models.append((name, build_compact(dense.state_dict(), ref, masks), compact_config(ref, masks), "fp32"))
    models += [(f"dense {d}", dense, ref, d) for d in dtypes if d != "fp32"]
    out = []
    for name, model, mcfg, dt in models:
        served = None
        if dt != "fp32":  # as umec export --dtype dt serves them: rows of that dtype in ServedTables
            served = ServedTables([random_table_data(c.name, list(c.feature_names or [c.name]), dt,
                                                     int(c.num_embeddings), int(c.embedding_dim), g, c.pooling.name)
                                   for c in layout.embedding_configs(model)])
        prog = export_program(model, ref.dense_in_features, align=table.align, served=served).module()
        sizes = torch.tensor(mcfg.table_sizes, dtype=torch.float64)
        inputs = [(torch.rand(batch, ref.dense_in_features, generator=g) * 3.0,
                   (torch.rand(batch, len(sizes), generator=g, dtype=torch.float64) * sizes).long())
                  for _ in range(4)]
        measured = _seconds(lambda i: prog(*inputs[i]), reps, n_inputs=len(inputs))
        pieces = predict_program(table, mcfg.kind, mcfg.embedding_dim, mcfg.dense_in_features, mcfg.bottom, mcfg.top,
                                 mcfg.table_sizes, served=True, dtypes=[dt] * len(mcfg.table_sizes))
        out.append({"program": name, "dtype": dt, "measured_s": measured,
                    "pieces_s": pieces["total"] - pieces["overhead"], "bottom": list(mcfg.bottom),
                    "top": list(mcfg.top), "features": len(mcfg.feature_names)})
    return out


@torch.inference_mode()
def calibrate(cfg: ModelConfig, options: Optional[CalibrationOptions] = None, model_like: str = "",
              log: Callable[[str], None] = lambda s: None) -> LatencyTable:
    """Measure the serving program's pieces for models shaped like ``cfg`` (its kind, D, dense
    input, widest layers, table sizes and number of features) on this machine.

    Args:
        cfg: the model whose serving the table predicts (and its compressed versions).
        options: batch, threads, repetitions, ``quick``, alignment.
        model_like: what ``cfg`` came from (recorded in the conditions).
        log: progress lines.

    Returns:
        the :class:`LatencyTable` (write it with :func:`save_latency_table`).

    Example::

        table = calibrate(kaggle_model_config(), CalibrationOptions(batch=4096, threads=1))
        save_latency_table("LATENCY.json", table)
    """
    opts = options or CalibrationOptions()
    opts.validate()
    start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    _CLOCK[0] = CLOCKS[opts.clock]
    try:
        g = torch.Generator().manual_seed(opts.seed)
        reps, B = opts.repetitions, opts.batch
        ins, outs = linear_grid(cfg, opts.align, opts.quick)
        log(f"calibrate: {torch.get_num_threads()} threads, batch {B}, {reps} repetitions; "
            f"Linear grid {len(ins)} x {len(outs)} (in {ins[0]}..{ins[-1]}, out {outs[0]}..{outs[-1]})")
        lin_raw = _time_linears(ins, outs, B, reps, g)
        classes = _row_classes(cfg, opts.quick)
        look_raw: Dict[str, List[float]] = {}
        for dt in opts.dtypes:  # a loop over the (few) dtypes
            log(f"calibrate: {dt} lookups, table classes {classes} rows")
            look_raw[dt] = (_time_lookups(classes, cfg, B, reps, g) if dt == "fp32"
                            else _time_served_lookups(dt, classes, cfg, B, reps, g))
        look_scale: Dict[str, float] = {}
        model_look: Dict[str, float] = {}
        for dt in opts.dtypes:  # the model's whole lookup step: the classes alone miss how its tables share the cache
            model_look[dt] = _time_model_lookups(dt, cfg, B, reps, g)
            per_class = LatencyTable.lookup_interp(classes, monotone(torch.tensor(look_raw[dt], dtype=torch.float64)),
                                                   cfg.table_sizes)
            look_scale[dt] = model_look[dt] / float(per_class.sum()) if float(per_class.sum()) > 0 else 1.0
            log(f"calibrate: {dt} lookups of the model's {len(cfg.table_sizes)} tables together: "
                f"{1e3 * model_look[dt]:.3f} ms, {look_scale[dt]:.3f} x the size classes alone")
        inputs = _interaction_inputs(cfg, opts.quick)
        log(f"calibrate: {cfg.kind} interaction at {inputs} inputs")
        inter_raw = _time_interactions(inputs, cfg, B, reps, g)
        table = LatencyTable(
            batch=B, align=opts.align, embedding_dim=cfg.embedding_dim, kind=cfg.kind, linear_in=ins, linear_out=outs,
            linear_s=monotone(torch.tensor(lin_raw, dtype=torch.float64)).tolist(),
            lookup={dt: {"rows": classes,
                         "seconds": (look_scale[dt] * monotone(torch.tensor(v, dtype=torch.float64))).tolist()}
                    for dt, v in look_raw.items()},
            interaction_inputs=inputs,
            interaction_s=monotone(torch.tensor(inter_raw, dtype=torch.float64)).tolist(),
            overhead_s=0.0,
        )
        log("calibrate: whole exported programs, for the fixed overhead")
        progs = _time_programs(table, cfg, B, reps, opts.quick, g, tuple(opts.dtypes))
        cheapest = min(min(b["seconds"]) for b in table.lookup.values())
        table.overhead_s, table.program_factor, table.field_s = fit_program_terms(
            [p["pieces_s"] for p in progs], [p["features"] for p in progs], [p["measured_s"] for p in progs], cheapest)
        log(f"calibrate: overhead {1e3 * table.overhead_s:.3f} ms, program factor {table.program_factor:.3f}, "
            f"per kept field {1e6 * table.field_s:+.2f} us ({len(progs)} programs)")
        table.conditions = current_conditions(batch=B)
        table.conditions.update({"align": opts.align, "reps": reps, "quick": opts.quick, "model_like": model_like,
                                 "clock": opts.clock, "dtypes": list(opts.dtypes),
                                 "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "seconds_taken": round(time.perf_counter() - start, 1)})
        table.raw = {"linear_s": lin_raw, "lookup": look_raw, "lookup_scale": look_scale,
                     "model_lookup_s": model_look, "interaction_s": inter_raw, "programs": progs}
        table.validate()
        return table
    finally:
        torch.set_num_threads(prev_threads)
        _CLOCK[0] = time.perf_counter


def fit_overhead(pieces: List[float], measured: List[float]) -> Tuple[float, float]:
    """``(overhead >= 0, factor > 0)`` of ``measured ~ overhead + factor * pieces`` (least
    squares over the reference programs); one program, or programs whose pieces differ by less
    than a fifth of their mean (e.g. ``quick``'s dense programs in several dtypes: the slope
    would be noise): factor 1 and the median residual.

    Example::

        fit_overhead([1.0, 2.0], [1.5, 2.7])  # (0.3, 1.2)
    """
    p = torch.tensor(pieces, dtype=torch.float64)
    m = torch.tensor(measured, dtype=torch.float64)
    if p.numel() >= 2 and float(p.max() - p.min()) > 0.2 * float(p.mean()):
        f = float(((p - p.mean()) * (m - m.mean())).sum() / ((p - p.mean()) ** 2).sum())
        o = float(m.mean() - f * p.mean())
        if o < 0:  # through the origin
            o, f = 0.0, float((p * m).sum() / (p * p).sum())
        if f > 0:
            return o, f
    return max(0.0, statistics.median((m - p).tolist())), 1.0


def fit_program_terms(pieces: List[float], fields: List[int], measured: List[float],
                      cheapest_lookup_s: float) -> Tuple[float, float, float]:
    """``(overhead >= 0, factor > 0, per-field seconds)`` of ``measured ~ overhead + factor *
    pieces + delta * fields`` (least squares over the reference programs), ``delta >= -factor *
    cheapest_lookup_s`` so that a kept field never lowers the time. With fewer than four
    programs, one number of fields, or a fit outside those bounds: :func:`fit_overhead` and
    ``delta = 0``.

    Example::

        fit_program_terms([1.0, 2.0, 4.0, 3.0], [2, 4, 4, 2], [1.4, 2.5, 4.9, 3.8], 0.5)  # (0.3, 1.2, -0.05)
    """
    o, f = fit_overhead(pieces, measured)
    if len(pieces) < 4 or len(set(fields)) < 2:
        return o, f, 0.0
    a = torch.tensor([[1.0, p, float(n)] for p, n in zip(pieces, fields)], dtype=torch.float64)
    m = torch.tensor(measured, dtype=torch.float64).unsqueeze(1)
    sol = torch.linalg.lstsq(a, m).solution.squeeze(1).tolist()
    o3, f3, d3 = sol
    if o3 >= 0 and f3 > 0 and d3 >= -f3 * cheapest_lookup_s:
        return o3, f3, d3
    return o, f, 0.0


def predicted_speedup(table: LatencyTable, dense: ModelConfig, compact: ModelConfig) -> Dict[str, float]:
    """Predicted seconds per call of the served ``dense`` and ``compact`` programs and their ratio."""
    def total(c: ModelConfig) -> float:
        return predict_program(table, c.kind, c.embedding_dim, c.dense_in_features, c.bottom, c.top,
                               c.table_sizes, served=True)["total"]

    d, c = total(dense), total(compact)
    return {"dense_s": d, "compact_s": c, "speedup": d / c if c else float("inf")}


def config_prediction(table: LatencyTable, cfg: ModelConfig, dtype: str = "fp32") -> Dict[str, float]:
    """Predicted seconds per call of ``cfg``'s served program with ``dtype`` tables, by piece
    (see :func:`~umec_torchrec.umec.latency.predict_program`)."""
    return predict_program(table, cfg.kind, cfg.embedding_dim, cfg.dense_in_features, cfg.bottom, cfg.top,
                           cfg.table_sizes, served=True, dtypes=[dtype] * len(cfg.table_sizes))

