"""``umec export``: write the compact model of a (compressed) run into a directory, atomically.

Output directory contents (see :mod:`~umec_torchrec.export.manifest`):

* ``model.pt``: the compact model's state dict, its config, the source config and the masks;
  :func:`~umec_torchrec.export.loaders.load_compact` rebuilds the compact DLRM from it;
* ``program.pt2``: ``torch.export`` program of :class:`~umec_torchrec.export.program.CompactPredictor`
  (dynamic batch; ``torch.export.load(path).module()(dense, ids)``) or of
  :class:`~umec_torchrec.export.program.JaggedPredictor` (``(dense, values, lengths)``), needs only ``torch``;
* ``manifest.json``: kept/pruned features and tables, layer sizes, FLOPs and embedding bytes
  before/after, budgets, source run, library versions, and the checks made at export;
* ``vocabulary.npz`` when the run recorded its data's vocabulary (``manifest.json``'s
  ``vocabulary`` section says how raw values become the program's ``ids``);
* with every table int8 (``--dtype int8``, or its old alias ``--int8``): ``model_int8.pt``, the
  state dict after TorchRec's inference quantization (:mod:`~umec_torchrec.export.quantize`);
  ``load_compact(int8=True)``.

The program serves the tables in the dtypes asked for (``dtype`` / ``table_dtypes``: fp32,
fp16, int8, int4), from TorchRec's quantized rows, and takes one id per feature (``ids``) or
jagged multi-hot inputs (``values``, ``lengths``); ``manifest.json``'s ``dtypes`` section
gives each table's dtype and bytes and the logit difference against the fp32 compact model.

The directory is written by :func:`~umec_torchrec.export.atomic_dir.atomic_directory`, so
``out_dir`` is either absent, the previous export, or complete.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from umec_torchrec.export.aligned import check_align
from umec_torchrec.export.atomic_dir import atomic_directory, check_export_dir
from umec_torchrec.export.checkpoint_reader import load_dlrm_state, read_metadata, verify_files
from umec_torchrec.export.compact import (
    check_masks,
    compact_config,
    compact_state_dict,
    full_masks,
    skeleton,
    table_poolings,
    tag_config,
)
from umec_torchrec.export.deepfm import find_deepfm
from umec_torchrec.export.manifest import (
    INT8_FILE,
    MANIFEST,
    MODEL_FILE,
    PROGRAM_FILE,
    VOCABULARY_FILE,
    build_manifest,
    dtypes_entry,
    int8_entry,
    run_budgets,
    vocabulary_entry,
)
from umec_torchrec.export.module_config import module_config
from umec_torchrec.export.program import (
    DEFAULT_ALIGN,
    INPUTS,
    CompactPredictor,
    JaggedPredictor,
    export_program,
    ids_of,
    jagged_of,
    served_tables,
)
from umec_torchrec.export.quantize import INT8_METHOD, int8_state_dict, int8_table_bytes, quantize_tables
from umec_torchrec.export.samples import (
    Sample,
    is_one_hot,
    kjt_logits,
    multi_hot_inputs,
    sample_inputs,
    sample_kjt,
    select_features,
)
from umec_torchrec.export.served_tables import ServedTables
from umec_torchrec.export.table_dtypes import Rules, parse_rules, resolve, uniform
from umec_torchrec.io import raise_if_disk_full, write_json
from umec_torchrec.models import ModelConfig, find_dlrm
from umec_torchrec.umec.hard_prune import flush_subnormal_
from umec_torchrec.umec.masks import PruningMasks


def _save(write: Callable[[io.BytesIO], None], path: str) -> None:
    """Serialise in memory, then write with Python file I/O: a full disk is then an
    ``OSError`` (:class:`~umec_torchrec.io.DiskFull`), not an abort inside the C++ writer."""
    buf = io.BytesIO()
    write(buf)
    try:
        with open(path, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise_if_disk_full(e, path)
        raise


def _without_subnormals(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy with its subnormal entries zeroed (:func:`flush_subnormal_`: the CPU's
    slow arithmetic path; the source model is never modified)."""
    if not t.is_floating_point():
        return t
    tiny = torch.finfo(t.dtype).tiny
    if not bool(((t != 0) & (t.abs() < tiny)).any()):
        return t
    return flush_subnormal_(t.detach().clone())


def export_model(
    source: "nn.Module | Dict[str, torch.Tensor]",
    masks: "Optional[PruningMasks] | ModelConfig" = None,
    out_dir: "Optional[str] | PruningMasks" = None,
    legacy_out_dir: Optional[str] = None,
    *,
    cfg: Optional[ModelConfig] = None,
    dtype: str = "fp32",
    table_dtypes: Rules = None,
    inputs: str = "auto",
    int8: bool = False,
    force: bool = False,
    align: int = DEFAULT_ALIGN,
    source_run: Optional[str] = None,
    budgets: Optional[Dict[str, Any]] = None,
    sample: Optional[Sample] = None,
    vocabulary: Any = None,
    report_against: Optional[Tuple[ModelConfig, PruningMasks]] = None,
) -> Dict[str, Any]:
    """Export the compact model of ``source`` into ``out_dir``; returns the manifest.

    ``source`` is a TorchRec DLRM (``DLRM``, ``DLRM_DCN``, ``DLRMConcat``, or a module holding
    one, e.g. ``DLRMTrain``) with any table names: what the surgery needs is read from the
    module (:func:`~umec_torchrec.export.module_config.module_config`). With ``cfg`` it may
    also be the DLRM-relative state dict (pruned tables may be missing). The old call form
    ``export_model(source, cfg, masks, out_dir)`` still works.

    Args:
        source: the trained model (masked or not: pruned weights are dropped either way).
        masks: what survives (``None`` keeps all).
        out_dir: output directory (written atomically; see :func:`atomic_directory`).
        legacy_out_dir: ``out_dir`` of the old call form (``masks`` is then the config).
        cfg: the model's config; ``None``: read from ``source``.
        dtype: the tables' dtype in the program, ``fp32``, ``fp16``, ``int8`` or ``int4`` (TorchRec's
            ``quantize_inference_model``; :mod:`~umec_torchrec.export.quantize`).
        table_dtypes: per-table rules over ``dtype`` (:mod:`~umec_torchrec.export.table_dtypes`:
            ``"t_C3=int4,largest:2=int8"`` or a mapping).
        inputs: the program's input form, ``"ids"`` (one id per feature), ``"jagged"``
            (``values, lengths``: multi-hot) or ``"auto"`` (jagged when ``sample`` has a bag
            that is not one id, or, without ``sample``, when the config has multi-hot features:
            ``ModelConfig.ids_per_sample``).
        int8: the old ``--int8``: ``dtype="int8"`` for every table, and the TorchRec int8 state
            dict written as ``model_int8.pt``.
        force: replace an existing export.
        align: the program's MLP hidden widths are zero-padded to a multiple of this (faster
            CPU GEMMs, same logits; 1 = exact widths). The state dict keeps the exact widths.
        source_run / budgets: recorded in the manifest.
        sample: check rows over the *full* feature set: ``(dense [n, n_dense], ids [n, F])`` or
            ``(dense, KJT)``; default generated rows (:mod:`~umec_torchrec.export.samples`;
            multi-hot when ``inputs="jagged"``).
        vocabulary: the data's :class:`~umec_torchrec.data.vocab.Vocabulary` (``export_run``: the
            run's ``vocabulary.npz``), written as ``vocabulary.npz`` with the manifest's
            ``vocabulary`` section (how raw values become the program's ``ids``); ``None``: none.
        report_against: ``(dense config, masks)`` the manifest's before/after figures compare
            with, when ``source`` is already compact (a compact fine-tuned run:
            ``export_run`` passes the dense model and masks its ``config.json`` records).

    Subnormal float weights (below ``finfo.tiny``) are exported as zeros (the same logits to
    float32 resolution, without the CPU's slow path); the source is not modified.

    Raises:
        TypeError: ``source`` holds no DLRM the surgery knows (the message says what it found).
        ValueError: bad masks, dtypes, rules or inputs; ``FileExistsError``: ``out_dir`` exists.

    Example::

        manifest = export_model(my_dlrm, masks, "exports/c", dtype="int8", table_dtypes="largest:2=int4")
        logits = load_program("exports/c")(dense, ids)
    """
    if isinstance(masks, ModelConfig):  # the old form export_model(source, cfg, masks, out_dir)
        cfg, masks, out_dir = masks, out_dir, legacy_out_dir  # type: ignore[assignment]
    if not isinstance(out_dir, str):
        raise TypeError(f"export_model: out_dir must be a path, got {type(out_dir).__name__}")
    if int8:
        if dtype not in ("fp32", "int8") or table_dtypes:
            raise ValueError("int8=True (--int8) is dtype='int8' for every table; give dtype / table_dtypes instead")
        dtype = "int8"
    if inputs not in INPUTS + ("auto",):
        raise ValueError(f"inputs must be one of {INPUTS + ('auto',)}, got {inputs!r}")
    pooling: Optional[Dict[str, str]] = None
    if cfg is None and isinstance(source, nn.Module) and not _has_dlrm(source) and find_deepfm(source) is not None:
        return _export_deepfm(find_deepfm(source), masks, out_dir, dtype=dtype, table_dtypes=table_dtypes,
                              inputs=inputs, force=force, source_run=source_run, budgets=budgets, sample=sample)
    if cfg is None:
        if not isinstance(source, nn.Module):
            raise TypeError("export_model: a state dict needs its ModelConfig (cfg=...); or pass the model")
        cfg, pooling = module_config(source)
    if isinstance(source, nn.Module):
        dlrm = find_dlrm(source)
        pooling = pooling or table_poolings(dlrm)
        state = dlrm.state_dict()
    else:
        state = source
    masks = masks or full_masks(cfg)
    check_masks(cfg, masks)
    check_export_dir(out_dir, force)
    check_align(align)
    ccfg = compact_config(cfg, masks)
    csd = {k: _without_subnormals(v) for k, v in compact_state_dict(state, cfg, masks).items()}
    compact = tag_config(skeleton(ccfg, pooling), ccfg)
    compact.load_state_dict(csd, assign=True)
    compact.eval()

    if inputs == "auto" and sample is None and cfg.ids_per_sample:  # the config says it has multi-hot features
        inputs = "jagged"
    if sample is None:
        sample = multi_hot_inputs(cfg) if inputs == "jagged" else sample_inputs(cfg)
    dense_in, kjt_full = sample_kjt(sample, cfg.feature_names)
    form = inputs if inputs != "auto" else ("ids" if is_one_hot(kjt_full) else "jagged")
    kjt = select_features(kjt_full, ccfg.feature_names)
    if form == "ids" and not is_one_hot(kjt):
        raise ValueError("inputs='ids' takes one id per feature and row, the check rows have other bag sizes; "
                         "use inputs='jagged'")
    table_rows = ccfg.table_rows()
    dtypes, ignored = resolve({t: n * ccfg.embedding_dim for t, n in table_rows.items()}, dtype, table_dtypes,
                              pruned=[t for t in cfg.table_rows() if t not in table_rows])
    with torch.no_grad():
        ref = kjt_logits(compact, dense_in, kjt)  # the TorchRec module, fp32 tables
        q, served = None, None
        if uniform(dtypes) != "fp32":
            q, tables = quantize_tables(compact, dtypes)
            served = ServedTables(tables)
        elif form == "jagged":
            served = served_tables(compact)
        pred = (JaggedPredictor if form == "jagged" else CompactPredictor)(compact, align=align, served=served).eval()
        program = export_program(pred, cfg.dense_in_features)
        args = jagged_of(kjt, ccfg.feature_names) if form == "jagged" else (ids_of(kjt, ccfg.feature_names),)
        out = program.module()(dense_in, *args)
        qref = kjt_logits(q, dense_in, kjt) if q is not None else ref
        prog_diff = float((out - qref).abs().max())
    n_rows = int(dense_in.shape[0])
    rcfg, rmasks = report_against if report_against is not None else (cfg, masks)
    manifest = build_manifest(rcfg, ccfg, rmasks, compact, pred, prog_diff, n_rows,
                              source_run=source_run, budgets=budgets)
    manifest["pooling"] = table_poolings(compact)
    manifest["dtypes"] = dtypes_entry(dtype, table_dtypes, ignored, pred, dtypes, table_rows, ccfg.embedding_dim,
                                      (out - ref).abs(), float((qref - ref).abs().max()) if q is not None else 0.0)

    with atomic_directory(out_dir, force=force) as tmp:
        _save(lambda f: torch.save(
            {"state_dict": compact.state_dict(), "config": ccfg.to_dict(), "source_config": cfg.to_dict(),
             "masks": masks.to_dict(), "pooling": table_poolings(compact)}, f), os.path.join(tmp, MODEL_FILE))
        _save(lambda f: torch.export.save(program, f), os.path.join(tmp, PROGRAM_FILE))
        if q is not None and uniform(dtypes) == "int8":
            qsd = int8_state_dict(q)
            _save(lambda f: torch.save(qsd, f), os.path.join(tmp, INT8_FILE))
            manifest["int8"] = int8_entry(float((qref - ref).abs().max()), n_rows, int8_table_bytes(qsd), INT8_METHOD)
        if vocabulary is not None:
            vocabulary.save(os.path.join(tmp, VOCABULARY_FILE))
            manifest["vocabulary"] = vocabulary_entry(vocabulary, list(ccfg.feature_names))
        manifest["files"] = sorted(os.listdir(tmp)) + [MANIFEST]
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest


def _has_dlrm(model: nn.Module) -> bool:
    try:
        find_dlrm(model)
        return True
    except TypeError:
        return False


def _export_deepfm(fm: nn.Module, masks: Optional[PruningMasks], out_dir: str, *, dtype: str, table_dtypes: Rules,
                   inputs: str, force: bool, source_run: Optional[str], budgets: Optional[Dict[str, Any]],
                   sample: Optional[Sample]) -> Dict[str, Any]:
    """:func:`export_model` of a ``SimpleDeepFMNN`` (:mod:`~umec_torchrec.export.deepfm`)."""
    from types import SimpleNamespace

    from umec_torchrec.export import deepfm
    from umec_torchrec.export.manifest import FORMAT
    from umec_torchrec.runs import versions

    names = deepfm.feature_names(fm)
    masks = masks or PruningMasks(feature_names=names, kept_features=names)
    check_export_dir(out_dir, force)
    compact, ccfg = deepfm.compact_deepfm(fm, masks)
    full = deepfm.deepfm_config(fm)
    rows = {t["name"]: t["num_embeddings"] for t in full["tables"]}
    gen = SimpleNamespace(dense_in_features=full["num_dense_features"], feature_names=names,
                          table_sizes=[rows[t["name"]] for t in full["tables"] for _ in t["feature_names"]])
    if sample is None:
        sample = multi_hot_inputs(gen) if inputs == "jagged" else sample_inputs(gen)
    dense_in, kjt_full = sample_kjt(sample, names)
    form = inputs if inputs != "auto" else ("ids" if is_one_hot(kjt_full) else "jagged")
    kept = deepfm.feature_names(compact)
    kjt = select_features(kjt_full, kept)
    if form == "ids" and not is_one_hot(kjt):
        raise ValueError("inputs='ids' takes one id per feature and row, the check rows have other bag sizes")
    table_rows = {t["name"]: t["num_embeddings"] for t in ccfg["tables"]}
    dim = ccfg["tables"][0]["embedding_dim"]
    dtypes, ignored = resolve({t: n * dim for t, n in table_rows.items()}, dtype, table_dtypes,
                              pruned=[t for t in rows if t not in table_rows])
    with torch.no_grad():
        ref = kjt_logits(compact, dense_in, kjt)
        q = None
        if uniform(dtypes) != "fp32":
            copy = deepfm.build_deepfm(ccfg)
            copy.load_state_dict(compact.state_dict(), assign=True)
            q, tables = quantize_tables(compact, dtypes, rebuilt=copy)
            served = ServedTables(tables)
        else:
            served = served_tables(compact)
        pred = (deepfm.DeepFMJaggedPredictor if form == "jagged" else deepfm.DeepFMPredictor)(compact, served).eval()
        program = export_program(pred, full["num_dense_features"], inputs=form)
        args = jagged_of(kjt, kept) if form == "jagged" else (ids_of(kjt, kept),)
        out = program.module()(dense_in, *args)
        qref = kjt_logits(q, dense_in, kjt) if q is not None else ref
    n_rows = int(dense_in.shape[0])
    pooling = table_poolings(compact)
    manifest: Dict[str, Any] = {
        "format": FORMAT, **deepfm.deepfm_manifest(fm, ccfg, masks), "source_run": source_run,
        "budgets": budgets or {},
        "program": {"file": PROGRAM_FILE, "form": form,
                    "inputs": "dense float32 [B, n_dense], then ids int64 [B, F'] (ids) or values int64 [N], "
                              "lengths int64 [F', B] (jagged), features in 'features.kept' order",
                    "output": "float32 [B]: the model's output (SimpleDeepFMNN: its sigmoid)",
                    "pooling": pooling, "max_abs_diff_vs_module": float((out - qref).abs().max()),
                    "check_rows": n_rows},
        "pooling": pooling,
        "dtypes": dtypes_entry(dtype, table_dtypes, ignored, pred, dtypes, table_rows, dim, (out - ref).abs(),
                               float((qref - ref).abs().max()) if q is not None else 0.0),
        "versions": versions(),
    }
    with atomic_directory(out_dir, force=force) as tmp:
        _save(lambda f: torch.save({"state_dict": compact.state_dict(), "deepfm_config": ccfg,
                                    "source_deepfm_config": full, "masks": masks.to_dict(), "pooling": pooling}, f),
              os.path.join(tmp, MODEL_FILE))
        _save(lambda f: torch.export.save(program, f), os.path.join(tmp, PROGRAM_FILE))
        manifest["files"] = sorted(os.listdir(tmp)) + [MANIFEST]
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest


def export_run(run_dir: str, out_dir: str, int8: bool = False, force: bool = False,
               sample: Optional[Sample] = None, align: int = DEFAULT_ALIGN, dtype: str = "fp32",
               table_dtypes: Rules = None, inputs: str = "auto") -> Dict[str, Any]:
    """Export the run in ``run_dir`` (its ``config.json``, ``masks.json`` if compressed, and
    ``checkpoint/`` from any number of ranks) into ``out_dir``; returns the manifest.

    Only the kept tables and the dense parameters are read from the checkpoint. ``dtype``,
    ``table_dtypes``, ``inputs``, ``int8``, ``sample`` and ``align``: as :func:`export_model`.

    Raises:
        FileNotFoundError: no run directory / checkpoint.
        FileExistsError: ``out_dir`` exists and ``force`` is off.
        ValueError: corrupt checkpoint (every file is checked against the checkpoint's
            ``manifest.json``), non-finite weights, checkpoint from another architecture, bad
            masks, align < 1, an incomplete run (a compressed run without ``masks.json``).

    Example::

        manifest = export_run("runs/compressed", "exports/c", int8=True)
    """
    from umec_torchrec.runs import Run

    run = Run.open(run_dir)
    cfg = run.model_config()
    check_export_dir(out_dir, force)  # fail before reading anything
    check_align(align)
    parse_rules(table_dtypes)
    run.check_complete()
    mpath = run.file("masks.json")
    masks = PruningMasks.load(mpath) if os.path.isfile(mpath) else full_masks(cfg)
    try:
        check_masks(cfg, masks)
    except ValueError as e:
        raise ValueError(f"{mpath}: {e}") from None
    if not os.path.exists(run.checkpoint_dir):
        raise FileNotFoundError(f"{run.checkpoint_dir}: the run has no checkpoint")
    read_metadata(run.checkpoint_dir)
    verify_files(run.checkpoint_dir)
    state = load_dlrm_state(run.checkpoint_dir, cfg, masks)
    umec = run.config.get("umec") or {}
    report = None
    if umec.get("dense_model") and umec.get("dense_masks"):  # a compact fine-tuned run: report against dense
        report = (ModelConfig.from_dict(umec["dense_model"]), PruningMasks.from_dict(umec["dense_masks"]))
    return export_model(state, masks, out_dir, cfg=cfg, int8=int8, dtype=dtype, table_dtypes=table_dtypes,
                        inputs=inputs, force=force, align=align, source_run=run.path,
                        budgets=run_budgets(run.config), sample=sample, vocabulary=run.vocabulary(),
                        report_against=report)


__all__ = ["export_model", "export_run"]
