"""umec-torchrec: UMEC compression (features, tables and MLP neurons under resource
budgets) for TorchRec DLRM-style ranking models.

The names a user needs are importable from here; they load on first use, so
``import umec_torchrec`` stays cheap (no torch import).

Example::

    from umec_torchrec import UMECConfig, UMECOptimizer, discover_groups, export_model

    umec = UMECOptimizer(optimizer, dmp, ["flops=0.3"], UMECConfig(), holdout=lambda: valid.batches(4096))
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: Dict[str, str] = {
    # the optimizer and what it produces
    "UMECOptimizer": "umec_torchrec.umec",
    "UMECConfig": "umec_torchrec.umec",
    "MaskedOptimizer": "umec_torchrec.umec",
    "FeatureMask": "umec_torchrec.umec",
    "PruningMasks": "umec_torchrec.umec",
    "discover_groups": "umec_torchrec.umec",
    "declare_groups": "umec_torchrec.umec",
    "parse_budgets": "umec_torchrec.umec",
    # the compact model
    "export_model": "umec_torchrec.export",
    "load_compact": "umec_torchrec.export",
    # training and the stages
    "TrainConfig": "umec_torchrec.train.config",
    "train_run": "umec_torchrec.stages",
    "evaluate_run": "umec_torchrec.stages",
    "compress_run": "umec_torchrec.stages",
    "finetune_run": "umec_torchrec.stages",
}

__all__: List[str] = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'umec_torchrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
