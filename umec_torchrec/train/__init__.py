"""Training: optimizers, sharding, the loop, metrics, checkpoints and the run-level API.

Main entry points::

    from umec_torchrec.distributed import init_distributed
    from umec_torchrec.train import TrainConfig, train_run, evaluate_run
    ctx = init_distributed()
    metrics = train_run("synthetic", {"kind": "cat"}, TrainConfig(), "runs/r1", ctx)
"""

from umec_torchrec.train.api import (
    build_training,
    evaluate_run,
    fit,
    load_run_model,
    make_model_config,
    resolve_data,
    train_run,
)
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.loop import num_train_steps, train_batches, train_steps
from umec_torchrec.train.metrics import binary_metrics, evaluate, roc_auc
from umec_torchrec.train.optim import LRSchedule, TrainConfig, apply_embedding_optimizer, build_optimizer
from umec_torchrec.train.sharding import plan_summary, shard_model

__all__ = [
    "TrainConfig",
    "LRSchedule",
    "apply_embedding_optimizer",
    "build_optimizer",
    "shard_model",
    "plan_summary",
    "train_steps",
    "train_batches",
    "num_train_steps",
    "evaluate",
    "roc_auc",
    "binary_metrics",
    "save_checkpoint",
    "load_checkpoint",
    "build_training",
    "fit",
    "train_run",
    "evaluate_run",
    "load_run_model",
    "make_model_config",
    "resolve_data",
]
