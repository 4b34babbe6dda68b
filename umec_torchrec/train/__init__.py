"""The training runtime: settings, optimizers, sharding, the loop, ``fit``, metrics and
checkpoints. The stages that write run directories (train, evaluate, compress, finetune,
demo) are one layer up, in :mod:`umec_torchrec.stages`.

Example::

    from umec_torchrec.distributed import session
    from umec_torchrec.train import TrainConfig, build_training, fit, evaluate, make_model_config
    with session() as ctx:
        dmp, opt = build_training(make_model_config(data.train), TrainConfig(), ctx)
        fit(dmp, opt, data.train, TrainConfig(), ctx)
        print(evaluate(dmp, data.test, 8192, ctx))
"""

from umec_torchrec.classification import binary_metrics, roc_auc
from umec_torchrec.train.build import build_training, make_model_config
from umec_torchrec.train.checkpoint import load_checkpoint, save_checkpoint
from umec_torchrec.train.config import TrainConfig
from umec_torchrec.train.fit import fit
from umec_torchrec.train.loop import num_train_steps, train_batches, train_steps
from umec_torchrec.train.metrics import evaluate
from umec_torchrec.train.optim import LRSchedule, apply_embedding_optimizer, build_optimizer
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
    "make_model_config",
]
