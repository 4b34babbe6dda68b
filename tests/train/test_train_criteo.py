"""REAL data: the shared Criteo Kaggle sample (../shared/data, 19,532 rows). Skipped when
the folder is absent."""

from __future__ import annotations

from umec_torchrec.data import DataOptions, load_data
from umec_torchrec.distributed import init_distributed
from umec_torchrec.train import TrainConfig, build_training, evaluate, fit, make_model_config


def test_dense_dlrm_one_epoch_reaches_auc_070_on_real_criteo(criteo_sample):
    """A plain (dot-interaction) DLRM, default MLPs, one epoch on a seeded random ~77/23
    split of the real Criteo sample: held-out AUC >= 0.70 (TorchRec DLRM: ~0.73-0.75)."""
    bundle = load_data(f"criteo:{criteo_sample}", DataOptions(test_fraction=0.23, split_seed=0))
    assert 0.2 < len(bundle.test) / (len(bundle.train) + len(bundle.test)) < 0.26
    ctx = init_distributed("gloo")
    tc = TrainConfig(epochs=1, seed=0, log_every=0)  # defaults: batch 128, row-wise Adagrad + Adagrad
    dmp, opt = build_training(make_model_config(bundle.train, {"kind": "dot"}), tc, ctx)
    fit(dmp, opt, bundle.train, tc, ctx, progress=False)
    m = evaluate(dmp, bundle.test, 4096, ctx)
    assert m["rows"] == len(bundle.test)
    assert m["auc"] >= 0.70, m
    assert m["log_loss"] < 0.55, m  # predicting the base rate (CTR 23.8%) gives ~0.55
