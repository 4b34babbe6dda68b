"""The sharding plan is recorded in the run (``config.json["sharding_plan"]``) and reused by every
later stage, so a planner-chosen plan (no ``--sharding``) trained on 2 ranks compresses,
fine-tunes, evaluates and exports on 1, and the reverse. The planner puts the small tables of
these runs on data-parallel and the larger ones table-wise, and chooses differently on 1 and 2
ranks: the optimizer state of a table trained data-parallel (dense Adagrad) does not fit one
trained table-wise (fused row-wise Adagrad), so a stage that let the planner choose again
failed with ``Missing key in checkpoint state_dict: optim.state...``.

Generated data (the built-in synthetic generator), tiny MLPs; 2 ranks via ``torchrun`` (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from umec_torchrec import cli
from umec_torchrec.distributed import init_distributed
from umec_torchrec.runs import Run
from umec_torchrec.train.build import build_training
from umec_torchrec.train.sharding import plan_record

DATA = "synthetic:rows=3000,seed=1,min_count=2"
SMALL = ["--embedding-dim", "8", "--bottom", "16,8", "--top", "16,1", "--batch-size", "128", "--no-progress",
         "--log-every", "0"]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _two_ranks(argv: list) -> None:
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", "localhost:0", "-m", "umec_torchrec.cli", *argv]
    env = dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]


def _one_rank(argv: list) -> None:
    assert cli.main(argv) == 0


def _types(run: str) -> dict:
    plan = json.load(open(os.path.join(run, "config.json")))["sharding_plan"]
    return {t: p["sharding_type"] for t, p in plan.items()}


def _planner_types_here(run: str) -> dict:
    """The sharding types the planner picks for ``run``'s model on this process (1 rank)."""
    r = Run.open(run)
    dmp, _ = build_training(r.model_config(), r.train_config(), init_distributed("gloo"), tables_on_meta=True)
    return {t: p["sharding_type"] for t, p in plan_record(dmp).items()}


def _later_stages(dense: str, tmp, launch, compact: bool) -> None:
    """compress, finetune (the compact model when ``compact``, and the masked model, both from the
    dense run's weights and optimizer state), evaluate, and export on 1 rank; every stage's run
    records the dense run's sharding types (the compact model: those of its kept tables)."""
    c, f, fm, e = (str(tmp / n) for n in ("c", "f", "fm", "e"))
    launch(["compress", "--from", dense, "--budget", "flops=0.4", "--steps", "6", "--no-progress", "--out", c])
    launch(["finetune", "--from", c, "--finetune-model", "masked", "--steps", "4", "--no-progress", "--out", fm])
    launch(["evaluate", c])
    types = _types(dense)
    assert _types(c) == types and _types(fm) == types
    if compact:
        launch(["finetune", "--from", c, "--steps", "4", "--no-progress", "--out", f])
        assert _types(f) == {t: types[t] for t in _types(f)} and len(_types(f)) < len(types)
    _one_rank(["export", "--from", f if compact else fm, "--out", e])
    assert os.listdir(e)  # the export wrote its files


def test_planner_plan_on_two_ranks_then_later_stages_on_one(tmp_path):
    """``train`` on 2 ranks with the planner's plan; compress, finetune, evaluate and export on
    1 rank (where the planner alone would lay some tables out otherwise)."""
    dense = str(tmp_path / "dense")
    _two_ranks(["train", "--data", DATA, *SMALL, "--epochs", "1", "--out", dense])
    types = _types(dense)
    assert {"data_parallel", "table_wise"} <= set(types.values())
    assert _planner_types_here(dense) != types  # the case that failed before the plan was reused
    _later_stages(dense, tmp_path, _one_rank, compact=True)


def test_planner_plan_on_one_rank_then_later_stages_on_two(tmp_path):
    """``train`` on 1 rank with the planner's plan; compress, finetune (masked) and evaluate on 2
    ranks, export on 1."""
    dense = str(tmp_path / "dense")
    _one_rank(["train", "--data", DATA, *SMALL, "--epochs", "1", "--out", dense])
    assert {"data_parallel", "table_wise"} <= set(_types(dense).values())
    _later_stages(dense, tmp_path, _two_ranks, compact=False)
