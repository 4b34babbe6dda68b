"""The compress and finetune stages of a run (``umec compress``, ``umec finetune``)."""

from umec_torchrec.compress.api import compress_run, finetune_run

__all__ = ["compress_run", "finetune_run"]
