"""Stages: the steps of the pipeline that read and write run directories, above the
training runtime (:mod:`umec_torchrec.train`).

* :mod:`~umec_torchrec.stages.lifecycle` - the common life of a stage's run (create or
  reopen, resume checks, restore-or-start, finish);
* :mod:`~umec_torchrec.stages.train` - :func:`train_run`, :func:`evaluate_run`;
* :mod:`~umec_torchrec.stages.compress` - :func:`compress_run`, :func:`finetune_run`;
* :mod:`~umec_torchrec.stages.demo` - :func:`run_demo` (train -> evaluate -> compress ->
  finetune -> export on synthetic data).

Example::

    from umec_torchrec.distributed import session
    from umec_torchrec.stages import train_run, compress_run
    with session() as ctx:
        train_run("synthetic", {"kind": "cat"}, TrainConfig(), "runs/dense", ctx)
        compress_run("runs/dense", ["flops=0.3"], "runs/c", ctx)
"""

from umec_torchrec.stages.compress import compress_run, finetune_run
from umec_torchrec.stages.train import evaluate_run, train_run

__all__ = ["train_run", "evaluate_run", "compress_run", "finetune_run"]
