"""Old home of the training runtime and the stages; moved to :mod:`umec_torchrec.train.build`,
:mod:`umec_torchrec.train.fit` and :mod:`umec_torchrec.stages` (bench/quality.py still imports
from here)."""

from umec_torchrec.train.build import build_training, make_model_config  # noqa: F401  moved: shim until integration
from umec_torchrec.train.fit import fit  # noqa: F401  moved: shim until integration

__all__ = ["build_training", "fit", "make_model_config"]
