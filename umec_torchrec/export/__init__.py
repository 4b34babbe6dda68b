"""Export of a compressed run: the compact TorchRec model, its torch.export program, a manifest.

Entry points: :func:`export_run` (``umec export``), :func:`export_model`, :func:`build_compact`,
:func:`load_compact`, :func:`load_program`, :func:`compare_models` (dense against compact).

Modules: ``compact`` (module surgery), ``module_config`` (the config of a user's DLRM),
``deepfm`` (surgery and program of a declared ``SimpleDeepFMNN``), ``program`` / ``aligned`` /
``served_tables`` (the serving program), ``table_dtypes`` (per-table dtype rules),
``checkpoint_reader`` (kept tensors from a DCP checkpoint), ``measure`` (FLOPs, bytes),
``samples`` (check rows), ``quantize`` (TorchRec's per-table quantization), ``manifest`` (the
directory's files and manifest), ``atomic_dir`` (atomic write), ``exporter`` (export_model / export_run),
``loaders`` (load_compact / load_program), ``compare`` (dense against compact).
"""

from umec_torchrec.export.compact import build_compact, compact_config, compact_state_dict
from umec_torchrec.export.exporter import export_model, export_run
from umec_torchrec.export.loaders import load_compact, load_program
from umec_torchrec.export.manifest import read_manifest
from umec_torchrec.export.program import CompactPredictor, JaggedPredictor, ids_of, jagged_of

__all__ = [
    "build_compact",
    "compact_config",
    "compact_state_dict",
    "export_model",
    "export_run",
    "load_compact",
    "load_program",
    "read_manifest",
    "CompactPredictor",
    "JaggedPredictor",
    "ids_of",
    "jagged_of",
]
