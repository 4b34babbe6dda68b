"""``umec demo``: the pipeline as far as it exists, end to end on synthetic data.

Stages so far: load data -> train (DMP, fused row-wise Adagrad + Adagrad) -> reload the
checkpoint and evaluate. Later stages (compress, finetune, export) append themselves to
:func:`run_demo` and to its returned ``stages`` list.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from umec_torchrec.distributed import DistContext, init_distributed
from umec_torchrec.train.api import evaluate_run, format_metrics, say, train_run
from umec_torchrec.train.optim import TrainConfig

DEMO_DATA = "synthetic"
DEMO_MODEL = {"kind": "cat", "embedding_dim": 16, "bottom": [512, 256, 64, 16], "top": [512, 256, 1]}


def run_demo(
    out_dir: str,
    *,
    data: str = DEMO_DATA,
    ctx: Optional[DistContext] = None,
    epochs: int = 2,
    progress: bool = True,
    force: bool = True,
) -> Dict[str, Any]:
    """Run the demo pipeline into ``out_dir`` and print what it does.

    Args:
        out_dir: run directory of the trained model (a previous demo run there is replaced
            when ``force``).
        data: data spec (default: the synthetic generator's default, 20,000 rows).
        ctx: distributed context (default: :func:`init_distributed`).
        epochs: training epochs.
        progress: tqdm bars.
        force: replace an existing run directory.

    Returns:
        ``{"run": out_dir, "stages": [{"stage", "seconds", ...}, ...], "metrics": test metrics}``.
    """
    ctx = ctx or init_distributed()
    t0 = time.perf_counter()
    stages: List[Dict[str, Any]] = []
    say(ctx, f"umec demo: data {data!r}; model: the default concatenation ('cat') DLRM "
             f"(D={DEMO_MODEL['embedding_dim']}, bottom MLP {DEMO_MODEL['bottom']}, top MLP {DEMO_MODEL['top']})")

    say(ctx, "\n[1] train")
    cfg = TrainConfig(epochs=epochs, batch_size=128, log_every=100)
    t = time.perf_counter()
    m = train_run(data, DEMO_MODEL, cfg, out_dir, ctx, force=force, progress=progress)
    stages.append({"stage": "train", "seconds": time.perf_counter() - t, **m["test"]})

    say(ctx, "\n[2] evaluate: reload the run (config + checkpoint) and evaluate the held-out split")
    t = time.perf_counter()
    ev = evaluate_run(out_dir, ctx)
    stages.append({"stage": "evaluate", "seconds": time.perf_counter() - t, **ev})
    say(ctx, format_metrics(ev, "evaluate"))

    # later stages (compress, finetune, export) go here

    total = time.perf_counter() - t0
    say(ctx, f"\ndemo finished in {total:.1f}s; run directory: {out_dir}")
    for s in stages:
        say(ctx, f"  {s['stage']:<10} {s['seconds']:6.1f}s  AUC {s['auc']:.4f}  log loss {s['log_loss']:.4f}  "
                 f"accuracy {s['accuracy']:.4f}")
    return {"run": out_dir, "stages": stages, "metrics": ev, "seconds": total}


__all__ = ["run_demo", "DEMO_DATA", "DEMO_MODEL"]
