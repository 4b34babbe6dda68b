"""``umec demo``: the whole pipeline end to end on synthetic data, in a few minutes.

Stages: load the data (once; every stage is handed the same bundle) -> train (DMP, fused
row-wise Adagrad + Adagrad) -> reload the checkpoint and evaluate -> compress with UMEC
under FLOPs and embedding-bytes budgets -> finetune with the masks fixed -> export the
physically pruned model, and print dense against compact.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Set

from umec_torchrec.distributed import DistContext, init_distributed
from umec_torchrec.export.checkpoint_reader import load_dlrm_state
from umec_torchrec.export.compact import build_compact, full_masks
from umec_torchrec.export.compare import compare_models, format_comparison
from umec_torchrec.export.exporter import export_run
from umec_torchrec.export.manifest import summary_lines
from umec_torchrec.log import say
from umec_torchrec.runs import Run
from umec_torchrec.stages.compress import compress_run, finetune_run
from umec_torchrec.stages.lifecycle import format_metrics
from umec_torchrec.stages.train import evaluate_run, train_run
from umec_torchrec.train.config import TrainConfig

# min_count=3: ids seen fewer than 3 times in the training split share the OOV row, as in
# production vocabularies (otherwise 100k-id noise features memorise the training labels)
DEMO_DATA = "synthetic:min_count=3"
DEMO_BUDGETS = ("flops=0.3", "embedding_bytes=0.5")
DEMO_MODEL = {"kind": "cat", "embedding_dim": 16, "bottom": [512, 256, 64, 16], "top": [512, 256, 1]}


def _ground_truth(bundle: Any) -> Set[str]:
    """The signal features of synthetic data (empty for real data)."""
    info = getattr(bundle, "info", None) or {}
    return set(info.get("signal_features", []))


def run_demo(
    out_dir: str,
    *,
    data: Optional[str] = None,
    ctx: Optional[DistContext] = None,
    epochs: int = 2,
    progress: bool = True,
    force: bool = True,
    budgets: Sequence[str] = DEMO_BUDGETS,
    compress_epochs: int = 2,
    finetune_epochs: int = 1,
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
        budgets: UMEC budgets of the compress stage.
        compress_epochs / finetune_epochs: epochs of those stages.

    The compressed, fine-tuned and exported results go next to ``out_dir``:
    ``<out_dir>-compressed``, ``<out_dir>-finetuned``, ``<out_dir>-export``.

    Returns:
        ``{"run": out_dir, "stages": [{"stage", "seconds", ...}, ...], "metrics": test metrics}``.
    """
    ctx = ctx or init_distributed()
    data = data or DEMO_DATA
    t0 = time.perf_counter()
    stages: List[Dict[str, Any]] = []
    say(ctx, f"umec demo: data {data!r}; model: the default concatenation ('cat') DLRM "
             f"(D={DEMO_MODEL['embedding_dim']}, bottom MLP {DEMO_MODEL['bottom']}, top MLP {DEMO_MODEL['top']})")

    from umec_torchrec.data import DataOptions, load_data

    opts = DataOptions()
    bundle = load_data(data, opts)  # once: every stage below is handed this bundle

    say(ctx, "\n[1] train")
    cfg = TrainConfig(epochs=epochs, batch_size=128, log_every=100)
    t = time.perf_counter()
    m = train_run(bundle, DEMO_MODEL, cfg, out_dir, ctx, data_options=opts, force=force, progress=progress)
    stages.append({"stage": "train", "seconds": time.perf_counter() - t, **m["test"]})

    say(ctx, "\n[2] evaluate: reload the run (config + checkpoint) and evaluate the held-out split")
    t = time.perf_counter()
    ev = evaluate_run(out_dir, ctx, data=bundle)
    stages.append({"stage": "evaluate", "seconds": time.perf_counter() - t, **ev})
    say(ctx, format_metrics(ev, "evaluate"))

    root = os.path.dirname(os.path.abspath(out_dir)) or "."
    base = os.path.basename(os.path.abspath(out_dir))
    c_dir, f_dir, x_dir = (os.path.join(root, f"{base}-{n}") for n in ("compressed", "finetuned", "export"))

    say(ctx, f"\n[3] compress with UMEC under budgets {', '.join(budgets)} (features, bottom and top MLP units)")
    t = time.perf_counter()
    cm = compress_run(out_dir, budgets, c_dir, ctx, epochs=compress_epochs, force=force, progress=progress,
                      data=bundle)
    stages.append({"stage": "compress", "seconds": time.perf_counter() - t, **cm["test"]})
    truth = _ground_truth(bundle)
    if truth:
        kept = set(cm["kept_features"])
        say(ctx, f"ground truth of the synthetic data: {len(kept & truth)}/{len(truth)} signal features kept, "
                 f"{len(kept - truth)} noise features kept")

    say(ctx, "\n[4] finetune the compressed architecture (pruned weights stay exactly zero)")
    t = time.perf_counter()
    fm = finetune_run(c_dir, f_dir, ctx, epochs=finetune_epochs, force=force, progress=progress, data=bundle)
    stages.append({"stage": "finetune", "seconds": time.perf_counter() - t, **fm["test"]})

    say(ctx, "\n[5] export the physically pruned model (kept tables only, narrower layers)")
    t = time.perf_counter()
    if ctx.rank == 0:
        manifest = export_run(f_dir, x_dir, force=force)
        for line in summary_lines(manifest, x_dir):
            say(ctx, line)
        dense_run = Run.open(out_dir)
        dense_cfg = dense_run.model_config()
        dense = build_compact(load_dlrm_state(dense_run.checkpoint_dir, dense_cfg, full_masks(dense_cfg)),
                              dense_cfg, full_masks(dense_cfg))
        cmp = compare_models(dense, dense_cfg, x_dir, bundle.test)
        say(ctx, "\ndense against compact (held-out split):\n" + format_comparison(cmp))
        stages.append({"stage": "export", "seconds": time.perf_counter() - t, "auc": cmp["compact"]["auc"],
                       "log_loss": float("nan"), "accuracy": float("nan")})
    ctx.barrier()

    total = time.perf_counter() - t0
    say(ctx, f"\ndemo finished in {total:.1f}s; run directory: {out_dir}")
    for s in stages:
        nan = s["log_loss"] != s["log_loss"]
        extra = "" if nan else f"  log loss {s['log_loss']:.4f}  accuracy {s['accuracy']:.4f}"
        say(ctx, f"  {s['stage']:<10} {s['seconds']:6.1f}s  AUC {s['auc']:.4f}{extra}")
    return {"run": out_dir, "stages": stages, "metrics": ev, "seconds": total}


__all__ = ["run_demo", "DEMO_DATA", "DEMO_MODEL"]
