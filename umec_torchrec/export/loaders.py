"""Loading an export: the compact DLRM (float or int8) and the serving program.

Plain CPU modules; no ``torch.distributed`` process group is needed.
"""

from __future__ import annotations

import os

import torch
from torchrec.models.dlrm import DLRM

from umec_torchrec.export.compact import skeleton, tag_config
from umec_torchrec.export.manifest import INT8_FILE, MODEL_FILE, PROGRAM_FILE, read_manifest
from umec_torchrec.export.quantize import int8_tables
from umec_torchrec.models import ModelConfig
from umec_torchrec.umec import layout


def load_compact(export_dir: str, int8: bool = False) -> DLRM:
    """Rebuild the compact DLRM from ``model.pt`` (or the int8 model from ``model_int8.pt``).

    The model is in eval mode and carries its config as ``.umec_config``.

    Raises:
        FileNotFoundError: not an export, or no int8 model in it when ``int8``.

    Example::

        model = load_compact("exports/c")
        logits = model(batch.dense_features, batch.sparse_features)
    """
    read_manifest(export_dir)
    blob = torch.load(os.path.join(export_dir, MODEL_FILE), map_location="cpu", weights_only=True)
    if "deepfm_config" in blob:  # a SimpleDeepFMNN export (umec_torchrec.export.deepfm)
        if int8:
            raise FileNotFoundError(f"{export_dir}: a SimpleDeepFMNN export has no TorchRec int8 model; its program "
                                    "serves the quantized tables")
        from umec_torchrec.export.deepfm import build_deepfm

        fm = build_deepfm(blob["deepfm_config"])
        fm.load_state_dict(blob["state_dict"], assign=True)
        return fm.eval()  # type: ignore[return-value]
    ccfg = ModelConfig.from_dict(blob["config"])
    pooling = blob.get("pooling")
    model = tag_config(skeleton(ccfg, pooling), ccfg)
    if not int8:
        model.load_state_dict(blob["state_dict"], assign=True)
        return model.eval()
    path = os.path.join(export_dir, INT8_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no int8 model in this export (export with --dtype int8)")
    layout.set_embedding_bag_collection(model, int8_tables(ccfg, pooling))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True, assign=False)
    return model.eval()


def load_program(export_dir: str) -> torch.nn.Module:
    """The exported program as a callable module: ``(dense [B, n_dense], ids [B, F']) -> logits [B]``,
    or ``(dense, values [N], lengths [F', B])`` for a ``jagged`` export (``manifest["program"]["form"]``).

    Example::

        logits = load_program("exports/c")(dense, ids)
    """
    read_manifest(export_dir)
    return torch.export.load(os.path.join(export_dir, PROGRAM_FILE)).module()


__all__ = ["load_compact", "load_program"]
