"""Compress a sharded TorchRec model in place, on one process or many.

A plain TorchRec training set-up (``DistributedModelParallel`` + ``CombinedOptimizer`` of the
fused table optimizer and a dense optimizer); the lines marked ``# UMEC`` are what
compression adds. Every rank runs the same UMEC step on the replicated dense weights, so
the masks are identical everywhere (checked: an all-gathered checksum every
``check_every`` steps); pruned features are dropped before the input distribution, so their
tables are neither looked up nor communicated. Run it with::

    .venv/bin/python examples/distributed_compress.py                          # 1 process
    .venv/bin/torchrun --nproc_per_node 2 examples/distributed_compress.py     # 2 ranks (gloo on CPU)
    torchx run -s local_cwd dist.ddp -j 1x2 --script examples/distributed_compress.py
"""

import os

import torch

from umec_torchrec.data import DataOptions, load_data
from umec_torchrec.distributed import session
from umec_torchrec.train import TrainConfig, build_training, evaluate, make_model_config, save_checkpoint
from umec_torchrec.umec import UMECConfig, UMECOptimizer  # UMEC


def main() -> None:
    with session() as ctx:  # torchrun environment, or a 1-rank gloo group
        data = load_data("synthetic:rows=20000,seed=0,min_count=3", DataOptions())
        model_cfg = make_model_config(data.train, {"kind": "cat", "embedding_dim": 16,
                                                   "bottom": [64, 32, 16], "top": [64, 32, 1]})
        # table-wise sharding: each table lives on one rank (pin it; tiny tables would be data-parallel)
        train_cfg = TrainConfig(batch_size=256, sharding="table_wise", emb_lr=0.05, dense_lr=0.05)
        dmp, optimizer = build_training(model_cfg, train_cfg, ctx)  # DMP + CombinedOptimizer([fused, dense])

        umec = UMECOptimizer(optimizer, dmp, ["flops=0.3", "embedding_bytes=0.5"],  # UMEC
                             UMECConfig(check_every=50))

        for epoch in range(2):
            for batch in data.train.batches(train_cfg.batch_size, shuffle=True, epoch=epoch,
                                            rank=ctx.rank, world_size=ctx.world_size):
                loss, _ = dmp(umec.feature_mask(batch))  # UMEC: pruned ids never leave this rank
                loss.backward()
                umec.step()  # the wrapped optimizers' step, then the UMEC step (same on every rank)
                umec.zero_grad()

        masks = umec.finalize()  # UMEC: hard pruning; identical on every rank
        umec.check_consistency()  # raises UMECStateMismatch if the ranks disagree
        metrics = evaluate(dmp, data.test, 4096, ctx, batch_transform=umec.feature_mask)
        out = os.path.join("runs", "distributed_compress", "checkpoint")
        save_checkpoint(out, dmp, umec)  # "optim": the wrapped optimizers' and the UMEC state, as tensors
        if ctx.rank == 0:
            fr = umec.resource_fractions()
            print(f"{ctx.world_size} rank(s): kept {len(masks.kept_features)} of {len(masks.feature_names)} "
                  f"features ({', '.join(masks.kept_features)}), units {masks.kept_units()}")
            print(f"flops {100 * fr['flops']:.1f}% / embedding bytes {100 * fr['embedding_bytes']:.1f}% of dense; "
                  f"test AUC {metrics['auc']:.4f}; checkpoint (model, optimizer, UMEC state) in {out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
