"""Train a DLRM with the library API, step by step (the pieces ``umec train`` uses).

    python examples/train_dlrm.py                       # 1 process, synthetic data
    torchrun --nproc_per_node 2 examples/train_dlrm.py  # 2 processes, same code
"""

from umec_torchrec.data import DataOptions, load_data
from umec_torchrec.distributed import session
from umec_torchrec.train import TrainConfig, build_training, evaluate, fit, make_model_config, save_checkpoint


def main() -> None:
    with session() as ctx:
        bundle = load_data("synthetic:rows=20000,seed=0", DataOptions())
        model_cfg = make_model_config(bundle.train, {"kind": "cat", "bottom": [64, 32, 16], "top": [64, 32, 1]})
        train_cfg = TrainConfig(epochs=1, batch_size=128, lr_schedule="linear", warmup_steps=20)
        dmp, optimizer = build_training(model_cfg, train_cfg, ctx)  # DMP + CombinedOptimizer
        stats = fit(dmp, optimizer, bundle.train, train_cfg, ctx)
        metrics = evaluate(dmp, bundle.test, 4096, ctx)
        save_checkpoint("runs/example/checkpoint", dmp, optimizer)
        if ctx.rank == 0:
            print(f"{stats['steps']} steps, {stats['samples_per_s']:.0f} samples/s; test {metrics}")


if __name__ == "__main__":
    main()
