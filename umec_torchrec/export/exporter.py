"""``umec export``: write the compact model of a (compressed) run into a directory, atomically.

Output directory contents (see :mod:`~umec_torchrec.export.manifest`):

* ``model.pt``: the compact model's state dict, its config, the source config and the masks;
  :func:`~umec_torchrec.export.loaders.load_compact` rebuilds the compact DLRM from it;
* ``program.pt2``: ``torch.export`` program of :class:`~umec_torchrec.export.program.CompactPredictor`
  (dynamic batch; ``torch.export.load(path).module()(dense, ids)``), needs only ``torch``;
* ``manifest.json``: kept/pruned features and tables, layer sizes, FLOPs and embedding bytes
  before/after, budgets, source run, library versions, and the checks made at export;
* ``vocabulary.npz`` when the run recorded its data's vocabulary (``manifest.json``'s
  ``vocabulary`` section says how raw values become the program's ``ids``);
* with ``int8``: ``model_int8.pt``, the state dict after TorchRec's inference quantization
  (:mod:`~umec_torchrec.export.quantize`); ``load_compact(int8=True)``.

The directory is written by :func:`~umec_torchrec.export.atomic_dir.atomic_directory`, so
``out_dir`` is either absent, the previous export, or complete.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torchrec.models.dlrm import DLRM

from umec_torchrec.export.aligned import check_align
from umec_torchrec.export.atomic_dir import atomic_directory, check_export_dir
from umec_torchrec.export.checkpoint_reader import load_dlrm_state, read_metadata, verify_files
from umec_torchrec.export.compact import (
    check_masks,
    compact_config,
    compact_state_dict,
    full_masks,
    skeleton,
    tag_config,
)
from umec_torchrec.export.manifest import (
    INT8_FILE,
    MANIFEST,
    MODEL_FILE,
    PROGRAM_FILE,
    VOCABULARY_FILE,
    build_manifest,
    int8_entry,
    run_budgets,
    vocabulary_entry,
)
from umec_torchrec.export.program import DEFAULT_ALIGN, CompactPredictor, export_program
from umec_torchrec.export.quantize import INT8_METHOD, int8_state_dict, int8_table_bytes, quantize_int8
from umec_torchrec.export.samples import module_logits, sample_inputs
from umec_torchrec.io import raise_if_disk_full, write_json
from umec_torchrec.models import ModelConfig
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


def export_model(
    source: "DLRM | Dict[str, torch.Tensor]",
    cfg: ModelConfig,
    masks: Optional[PruningMasks],
    out_dir: str,
    *,
    int8: bool = False,
    force: bool = False,
    align: int = DEFAULT_ALIGN,
    source_run: Optional[str] = None,
    budgets: Optional[Dict[str, Any]] = None,
    sample: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    vocabulary: Any = None,
) -> Dict[str, Any]:
    """Export the compact model of ``source`` (a full DLRM or its DLRM-relative state dict;
    pruned tables may be missing) into ``out_dir``; returns the manifest.

    Args:
        source / cfg / masks: the trained model, its config and what survives (``None`` keeps all).
        out_dir: output directory (written atomically; see :func:`atomic_directory`).
        int8: also write the int8-quantized model and report its largest logit difference.
        force: replace an existing export.
        align: the program's MLP hidden widths are zero-padded to a multiple of this (faster
            CPU GEMMs, same logits; 1 = exact widths). The state dict keeps the exact widths.
        source_run / budgets: recorded in the manifest.
        sample: ``(dense [n, n_dense], ids [n, F])`` over the *full* feature set, used for the
            export checks; default :func:`~umec_torchrec.export.samples.sample_inputs` (generated rows).
        vocabulary: the data's :class:`~umec_torchrec.data.vocab.Vocabulary` (``export_run``: the
            run's ``vocabulary.npz``), written as ``vocabulary.npz`` with the manifest's
            ``vocabulary`` section (how raw values become the program's ``ids``); ``None``: none.

    Example::

        manifest = export_model(dlrm, cfg, masks, "exports/c", int8=True)
    """
    masks = masks or full_masks(cfg)
    check_masks(cfg, masks)
    check_export_dir(out_dir, force)
    ccfg = compact_config(cfg, masks)
    state = source.state_dict() if isinstance(source, torch.nn.Module) else source
    csd = compact_state_dict(state, cfg, masks)
    compact = tag_config(skeleton(ccfg), ccfg)
    compact.load_state_dict(csd, assign=True)
    compact.eval()

    dense_in, ids_full = sample if sample is not None else sample_inputs(cfg)
    kept_idx = [cfg.feature_names.index(f) for f in ccfg.feature_names]
    ids = ids_full[:, kept_idx]
    pred = CompactPredictor(compact, align=align).eval()
    with torch.no_grad():
        ref = module_logits(compact, dense_in, ids, ccfg.feature_names)  # the TorchRec module, through a KJT
        program = export_program(pred, cfg.dense_in_features)
        prog_diff = float((program.module()(dense_in, ids) - ref).abs().max())
    manifest = build_manifest(cfg, ccfg, masks, compact, pred, prog_diff, int(ids.shape[0]),
                              source_run=source_run, budgets=budgets)

    with atomic_directory(out_dir, force=force) as tmp:
        _save(lambda f: torch.save(
            {"state_dict": compact.state_dict(), "config": ccfg.to_dict(), "source_config": cfg.to_dict(),
             "masks": masks.to_dict()}, f), os.path.join(tmp, MODEL_FILE))
        _save(lambda f: torch.export.save(program, f), os.path.join(tmp, PROGRAM_FILE))
        if int8:
            q = quantize_int8(compact)
            with torch.no_grad():
                qref = module_logits(q, dense_in, ids, ccfg.feature_names)
            qsd = int8_state_dict(q)
            _save(lambda f: torch.save(qsd, f), os.path.join(tmp, INT8_FILE))
            manifest["int8"] = int8_entry(float((qref - ref).abs().max()), int(ids.shape[0]),
                                          int8_table_bytes(qsd), INT8_METHOD)
        if vocabulary is not None:
            vocabulary.save(os.path.join(tmp, VOCABULARY_FILE))
            manifest["vocabulary"] = vocabulary_entry(vocabulary, list(ccfg.feature_names))
        manifest["files"] = sorted(os.listdir(tmp)) + [MANIFEST]
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest


def export_run(run_dir: str, out_dir: str, int8: bool = False, force: bool = False,
               sample: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               align: int = DEFAULT_ALIGN) -> Dict[str, Any]:
    """Export the run in ``run_dir`` (its ``config.json``, ``masks.json`` if compressed, and
    ``checkpoint/`` from any number of ranks) into ``out_dir``; returns the manifest.

    Only the kept tables and the dense parameters are read from the checkpoint.

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
    return export_model(state, cfg, masks, out_dir, int8=int8, force=force, align=align, source_run=run.path,
                        budgets=run_budgets(run.config), sample=sample, vocabulary=run.vocabulary())


__all__ = ["export_model", "export_run"]
