"""``umec export``: write the compact model of a (compressed) run into a directory, atomically.

Output directory contents:

* ``model.pt``: ``torch.save`` of ``{"state_dict", "config" (compact ModelConfig dict),
  "source_config", "masks"}``; :func:`load_compact` rebuilds the compact DLRM from it;
* ``program.pt2``: ``torch.export`` program of :class:`~umec_torchrec.export.program.CompactPredictor`
  (dynamic batch; ``torch.export.load(path).module()(dense, ids)``), needs only ``torch``;
* ``manifest.json``: kept/pruned features and tables, layer sizes, FLOPs and embedding bytes
  before/after, budgets, source run, library versions, and the checks made at export;
* with ``int8``: ``model_int8.pt``, the state dict after TorchRec's inference quantization
  (row-wise int8 tables, ``quantize_inference_model``); :func:`load_compact` ``(int8=True)``.
  The quantized model is not exported as a program (fbgemm TBE ops).

The directory is written under a temporary name next to ``out_dir`` and renamed into place,
so ``out_dir`` is either absent, the previous export, or complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import DataType

from umec_torchrec.train.sharding import quiet_torchrec
from umec_torchrec.export import measure
from umec_torchrec.export.aligned import check_align
from umec_torchrec.export.checkpoint_reader import load_dlrm_state
from umec_torchrec.export.compact import (
    build_compact,
    check_masks,
    compact_config,
    compact_state_dict,
    full_masks,
    skeleton,
    TABLE_PREFIX,
)
from umec_torchrec.export.program import DEFAULT_ALIGN, CompactPredictor, export_program, program_signature
from umec_torchrec.io import read_json, write_json
from umec_torchrec.models import ModelConfig, table_configs
from umec_torchrec.umec.masks import PruningMasks

FORMAT = "umec-torchrec-export/1"
MODEL_FILE = "model.pt"
INT8_FILE = "model_int8.pt"
PROGRAM_FILE = "program.pt2"
MANIFEST = "manifest.json"


# --- atomic directory ---------------------------------------------------------------------
@contextlib.contextmanager
def atomic_directory(out_dir: str, force: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory next to ``out_dir``; on success rename it to ``out_dir``.

    An existing ``out_dir`` is refused (``FileExistsError``) unless ``force``; with ``force``
    it must be an export (holds ``manifest.json``) or empty, and it is replaced only after the
    new one is complete. On error the temporary directory is removed and ``out_dir`` untouched.
    """
    out = os.path.abspath(out_dir).rstrip("/")
    check_output(out, force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    try:
        yield tmp
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.old-")
            os.rename(out, os.path.join(old, "x"))
        os.rename(tmp, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(out_dir: str, force: bool) -> None:
    """Refuse an existing ``out_dir`` (without ``force``) or one that is not an export."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    if not os.listdir(out_dir):
        return
    if not force:
        raise FileExistsError(f"{out_dir}: output already exists; pass --force to overwrite it")
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise FileExistsError(f"{out_dir}: not empty and not an export (no {MANIFEST}); refusing to overwrite it")


# --- figures --------------------------------------------------------------------------------
def sample_inputs(cfg: ModelConfig, n: int = 512, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generated ``(dense [n, n_dense], ids [n, F])`` covering every table's id range (seeded)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, cfg.dense_in_features, generator=g) * 3.0
    sizes = torch.tensor(cfg.table_sizes, dtype=torch.float64)
    ids = (torch.rand(n, len(sizes), generator=g, dtype=torch.float64) * sizes).long()
    return dense, ids


def _budgets(config: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for section, body in config.items():
        if isinstance(body, dict):
            for k, v in body.items():
                if "budget" in k.lower():
                    out[f"{section}.{k}"] = v
    return out


def _ratio(a: float, b: float) -> Optional[float]:
    return None if not b else a / b


def quantize_int8(compact: DLRM) -> DLRM:
    """TorchRec inference quantization of ``compact`` (row-wise int8 tables, fp32 dense
    layers); ``compact`` is not modified (its tensors are shared by a shallow rebuild)."""
    from torchrec.inference.modules import quantize_inference_model

    shallow = skeleton(_config_of(compact))
    shallow.load_state_dict(compact.state_dict(), assign=True)
    with quiet_torchrec():
        return quantize_inference_model(shallow, quantization_dtype=torch.qint8).eval()


def _config_of(dlrm: DLRM) -> ModelConfig:
    cfg = getattr(dlrm, "umec_config", None)
    if cfg is None:
        raise ValueError("the model carries no ModelConfig (build it with build_compact or load_compact)")
    return cfg


def _tagged(dlrm: DLRM, cfg: ModelConfig) -> DLRM:
    dlrm.umec_config = cfg  # type: ignore[attr-defined]
    return dlrm


# --- export ---------------------------------------------------------------------------------
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
            export checks; default :func:`sample_inputs` (generated rows).
    """
    from umec_torchrec.runs import versions

    masks = masks or full_masks(cfg)
    check_masks(cfg, masks)
    check_output(os.path.abspath(out_dir), force)
    ccfg = compact_config(cfg, masks)
    state = source.state_dict() if isinstance(source, torch.nn.Module) else source
    csd = compact_state_dict(state, cfg, masks)
    compact = _tagged(skeleton(ccfg), ccfg)
    compact.load_state_dict(csd, assign=True)
    compact.eval()

    dense_in, ids_full = sample if sample is not None else sample_inputs(cfg)
    kept_idx = [cfg.feature_names.index(f) for f in ccfg.feature_names]
    ids = ids_full[:, kept_idx]
    pred = CompactPredictor(compact, align=align).eval()
    with torch.no_grad():
        ref = _module_logits(compact, dense_in, ids, ccfg)  # the TorchRec module, through a KJT
        program = export_program(pred, cfg.dense_in_features)
        prog_diff = float((program.module()(dense_in, ids) - ref).abs().max())

    before, after = measure.model_figures(cfg), measure.model_figures(ccfg)
    kept = set(masks.kept_features)
    manifest: Dict[str, Any] = {
        "format": FORMAT,
        "kind": cfg.kind,
        "source_run": source_run,
        "features": {"all": list(cfg.feature_names), "kept": list(ccfg.feature_names), "pruned": masks.pruned_features},
        "tables": {
            "kept": {cfg.table_name(f): n for f, n in zip(cfg.feature_names, cfg.table_sizes) if f in kept},
            "pruned": {cfg.table_name(f): n for f, n in zip(cfg.feature_names, cfg.table_sizes) if f not in kept},
        },
        "embedding_dim": cfg.embedding_dim,
        "dense_in_features": cfg.dense_in_features,
        "layers": {
            "bottom": {"before": list(cfg.bottom), "after": list(ccfg.bottom)},
            "top": {"before": list(cfg.top), "after": list(ccfg.top)},
            "over_arch_in": {
                "before": int(skeleton(cfg).over_arch.model[0]._mlp[0]._linear.in_features) if len(cfg.top) > 1 else None,
                "after": int(compact.over_arch.model[0]._mlp[0]._linear.in_features) if len(ccfg.top) > 1 else None,
            },
        },
        "flops_per_sample": {
            "before": before["flops_per_sample"], "after": after["flops_per_sample"],
            "ratio": _ratio(after["flops_per_sample"], before["flops_per_sample"]),
            "how": "torch.utils.flop_counter.FlopCounterMode, batch 1, dense path (lookups count 0)",
        },
        "embedding_bytes": {
            "before": before["embedding_bytes"], "after": after["embedding_bytes"],
            "ratio": _ratio(after["embedding_bytes"], before["embedding_bytes"]),
        },
        "lookup_bytes_per_sample": {
            "before": before["lookup_bytes_per_sample"], "after": after["lookup_bytes_per_sample"],
            "ratio": _ratio(after["lookup_bytes_per_sample"], before["lookup_bytes_per_sample"]),
        },
        "parameters": {"before": before["parameters"], "after": after["parameters"]},
        "budgets": budgets or {},
        "model_config": ccfg.to_dict(),
        "source_model_config": cfg.to_dict(),
        "program": {"file": PROGRAM_FILE, **program_signature(cfg.dense_in_features, pred),
                    "max_abs_diff_vs_module": prog_diff, "check_rows": int(ids.shape[0])},
        "int8": None,
        "versions": versions(),
    }

    with atomic_directory(out_dir, force=force) as tmp:
        torch.save(
            {"state_dict": compact.state_dict(), "config": ccfg.to_dict(), "source_config": cfg.to_dict(),
             "masks": masks.to_dict()},
            os.path.join(tmp, MODEL_FILE),
        )
        torch.export.save(program, os.path.join(tmp, PROGRAM_FILE))
        if int8:
            q = quantize_int8(compact)
            with torch.no_grad():
                qref = _module_logits(q, dense_in, ids, ccfg)
            qsd = _int8_state_dict(q)
            torch.save(qsd, os.path.join(tmp, INT8_FILE))
            q_bytes = int(sum(t.numel() * t.element_size() for k, t in qsd.items() if k.startswith(TABLE_PREFIX)))
            manifest["int8"] = {
                "file": INT8_FILE,
                "method": "torchrec.inference.modules.quantize_inference_model (row-wise int8 tables, fp32 dense)",
                "max_abs_logit_diff": float((qref - ref).abs().max()),
                "check_rows": int(ids.shape[0]),
                "embedding_bytes": q_bytes,
            }
        manifest["files"] = sorted(os.listdir(tmp)) + [MANIFEST]
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest


def _int8_state_dict(q: DLRM) -> Dict[str, torch.Tensor]:
    """The quantized model's state dict without the TBE's bookkeeping buffers (``tbes.*``):
    int8 table rows (with their fp16 scale and bias) and the fp32 dense parameters."""
    return {k: v for k, v in q.state_dict().items() if ".tbes." not in k}


def _module_logits(dlrm: DLRM, dense: torch.Tensor, ids: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Logits of a DLRM (float or quantized) on one-id-per-feature rows, through a KJT."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    b, f = ids.shape
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(cfg.feature_names), values=ids.t().reshape(-1), lengths=torch.ones(b * f, dtype=torch.int32)
    )
    return dlrm(dense, kjt).squeeze(-1).float()


def export_run(run_dir: str, out_dir: str, int8: bool = False, force: bool = False,
               sample: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               align: int = DEFAULT_ALIGN) -> Dict[str, Any]:
    """Export the run in ``run_dir`` (its ``config.json``, ``masks.json`` if compressed, and
    ``checkpoint/`` from any number of ranks) into ``out_dir``; returns the manifest.

    Only the kept tables and the dense parameters are read from the checkpoint.

    Raises:
        FileNotFoundError: no run directory / checkpoint.
        FileExistsError: ``out_dir`` exists and ``force`` is off.
        ValueError: corrupt checkpoint, checkpoint from another architecture, bad masks, align < 1.
    """
    from umec_torchrec.runs import Run

    run = Run.open(run_dir)
    cfg = run.model_config()
    check_output(os.path.abspath(out_dir), force)  # fail before reading anything
    check_align(align)
    mpath = run.file("masks.json")
    masks = PruningMasks.load(mpath) if os.path.isfile(mpath) else full_masks(cfg)
    try:
        check_masks(cfg, masks)
    except ValueError as e:
        raise ValueError(f"{mpath}: {e}") from None
    if not os.path.exists(run.checkpoint_dir):
        raise FileNotFoundError(f"{run.checkpoint_dir}: the run has no checkpoint")
    state = load_dlrm_state(run.checkpoint_dir, cfg, masks)
    return export_model(state, cfg, masks, out_dir, int8=int8, force=force, align=align, source_run=run.path,
                        budgets=_budgets(run.config), sample=sample)


def summary_lines(manifest: Dict[str, Any], out_dir: str) -> list:
    """A few human-readable lines about an export."""
    m = manifest
    f, e = m["flops_per_sample"], m["embedding_bytes"]
    lines = [
        f"exported {m['kind']} model to {out_dir}: {len(m['features']['kept'])}/{len(m['features']['all'])} features kept",
        f"  bottom {m['layers']['bottom']['before']} -> {m['layers']['bottom']['after']}, "
        f"top {m['layers']['top']['before']} -> {m['layers']['top']['after']}",
        f"  FLOPs/sample {f['before']:,} -> {f['after']:,} ({f['ratio']:.3f}), "
        f"embedding bytes {e['before']:,} -> {e['after']:,} ({e['ratio']:.3f})",
    ]
    if m.get("int8"):
        lines.append(f"  int8 tables: {m['int8']['embedding_bytes']:,} bytes, "
                     f"max |logit diff| {m['int8']['max_abs_logit_diff']:.2e} on {m['int8']['check_rows']} rows")
    return lines


# --- loading ------------------------------------------------------------------------------
def read_manifest(export_dir: str) -> Dict[str, Any]:
    """The export's ``manifest.json`` (clear error if ``export_dir`` is not an export)."""
    p = os.path.join(export_dir, MANIFEST)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{export_dir}: not an export directory (no {MANIFEST})")
    m = read_json(p)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{p}: not a {FORMAT} manifest")
    return m


def load_compact(export_dir: str, int8: bool = False) -> DLRM:
    """Rebuild the compact DLRM from ``model.pt`` (or the int8 model from ``model_int8.pt``);
    plain CPU modules, no ``torch.distributed`` needed. The model is in eval mode and carries
    its config as ``.umec_config``."""
    read_manifest(export_dir)
    blob = torch.load(os.path.join(export_dir, MODEL_FILE), map_location="cpu", weights_only=True)
    ccfg = ModelConfig.from_dict(blob["config"])
    model = _tagged(skeleton(ccfg), ccfg)
    if not int8:
        model.load_state_dict(blob["state_dict"], assign=True)
        return model.eval()
    path = os.path.join(export_dir, INT8_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no int8 model in this export (export with --int8)")
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    tables = [dataclasses.replace(t, data_type=DataType.INT8) for t in table_configs(ccfg)]
    with quiet_torchrec():
        model.sparse_arch.embedding_bag_collection = QuantEBC(tables, is_weighted=False, device=torch.device("cpu"))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True, assign=False)
    return model.eval()


def load_program(export_dir: str) -> torch.nn.Module:
    """The exported program as a callable module: ``(dense, ids) -> logits``."""
    read_manifest(export_dir)
    return torch.export.load(os.path.join(export_dir, PROGRAM_FILE)).module()


__all__ = [
    "FORMAT",
    "atomic_directory",
    "check_output",
    "sample_inputs",
    "quantize_int8",
    "export_model",
    "export_run",
    "read_manifest",
    "load_compact",
    "load_program",
]
