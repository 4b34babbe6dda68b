"""``umec finetune`` with the compact model (the default) end to end: against the masked
reference run, on 2 gloo ranks against 1, killed by SIGINT and resumed, and the later stages on
its run (evaluate, export, a second finetune). Generated data (the built-in synthetic
generator, small row counts) and tiny MLPs.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from helpers.mp import run_multiprocess
from umec_torchrec import cli
from umec_torchrec.export.checkpoint_reader import load_dlrm_state
from umec_torchrec.export.compact import compact_config, compact_state_dict
from umec_torchrec.models import ModelConfig, build_dlrm
from umec_torchrec.umec.masks import PruningMasks

DATA = "synthetic:rows=2400,seed=3,min_count=2"
# tables pinned table-wise: their optimizer state then has one layout on 1 and on 2 ranks
SMALL = ["--embedding-dim", "8", "--bottom", "32,8", "--top", "32,16,1", "--batch-size", "128", "--no-progress",
         "--sharding", "table_wise"]
TIMING = {"seconds", "steps_per_s", "samples_per_s", "wall_seconds"}


def _json(run: str, name: str) -> dict:
    with open(os.path.join(run, name)) as f:
        return json.load(f)


def _metrics(run: str) -> dict:
    m = _json(run, "metrics.json")
    m.pop("wall_seconds", None)
    m["train"] = {k: v for k, v in m["train"].items() if k not in TIMING}
    return m


def _state(run: str) -> dict:
    """DLRM-relative weights of a run's final checkpoint (its own model config, all kept)."""
    cfg = ModelConfig.from_dict(_json(run, "config.json")["model"])
    masks = PruningMasks(list(cfg.feature_names), list(cfg.feature_names))
    return load_dlrm_state(os.path.join(run, "checkpoint"), cfg, masks)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dense run and its compressed run (flops=0.3)."""
    root = tmp_path_factory.mktemp("compact")
    dense, comp = str(root / "dense"), str(root / "comp")
    assert cli.main(["train", "--data", DATA, *SMALL, "--epochs", "1", "--out", dense]) == 0
    assert cli.main(["compress", "--from", dense, "--budget", "flops=0.3", "--steps", "12", "--no-progress",
                     "--out", comp]) == 0
    masks = PruningMasks.load(os.path.join(comp, "masks.json"))
    assert masks.pruned_features and masks.layers  # something to compact
    return root, dense, comp


def _finetune(comp: str, out: str, *extra: str) -> None:
    assert cli.main(["finetune", "--from", comp, "--steps", "6", "--no-progress", "--out", out, *extra]) == 0


def test_compact_run_equals_masked_run(runs):
    """The compact fine-tune (default) and the masked one (--finetune-model masked) train the
    same function: after 6 steps the compact weights equal the masked run's weights sliced to
    the kept groups (1e-4) and the test metrics agree; the compact run records the compact
    model, masks that keep all of it, the dense model and masks, the same resources against
    dense as the compressed run, and holds fewer table bytes."""
    root, dense, comp = runs
    compact, masked = str(root / "ft-compact"), str(root / "ft-masked")
    _finetune(comp, compact)
    _finetune(comp, masked, "--finetune-model", "masked")
    dcfg = ModelConfig.from_dict(_json(dense, "config.json")["model"])
    masks = PruningMasks.load(os.path.join(comp, "masks.json"))
    ccfg = compact_config(dcfg, masks)
    rec = _json(compact, "config.json")
    assert ModelConfig.from_dict(rec["model"]) == ccfg
    assert rec["umec"]["finetune_model"] == "compact" and rec["umec"]["dense_model"] == dcfg.to_dict()
    assert PruningMasks.from_dict(rec["umec"]["dense_masks"]) == masks
    own = PruningMasks.load(os.path.join(compact, "masks.json"))
    assert own.kept_features == ccfg.feature_names and not own.pruned_features
    assert own.kept_units() == {k: len(v) for k, v in masks.layers.items()} | {
        k: w for k, w in own.layer_widths.items() if k not in masks.layers}

    mc, mm, mcomp = _metrics(compact), _metrics(masked), _metrics(comp)
    assert mc["resources"] == mm["resources"] == mcomp["resources"]
    assert mc["kept_features"] == mcomp["kept_features"] and mc["finetune_model"] == "compact"
    assert mc["table_state_bytes"] < mm["table_state_bytes"]
    assert mc["train"]["loss"] == pytest.approx(mm["train"]["loss"], abs=1e-4)
    assert mc["test"]["log_loss"] == pytest.approx(mm["test"]["log_loss"], abs=1e-4)

    sliced = compact_state_dict(load_dlrm_state(os.path.join(masked, "checkpoint"), dcfg, masks), dcfg, masks)
    got = _state(compact)
    assert set(got) == set(sliced)
    for k, v in sliced.items():
        assert torch.allclose(got[k], v, atol=1e-4, rtol=0), (k, float((got[k] - v).abs().max()))


def test_compact_run_evaluate_export_and_second_finetune(runs, tmp_path):
    """On a compact fine-tuned run: ``umec evaluate`` gives its test metrics; ``umec export``
    writes a program whose logits equal the fine-tuned model's (1e-5); a second (compact)
    finetune from it trains the same compact model and reports the same savings against dense."""
    root, dense, comp = runs
    ft = str(root / "ft-eval")
    _finetune(comp, ft, "--start", "continue")
    m = _metrics(ft)
    assert cli.main(["evaluate", ft]) == 0
    ev = _json(ft, "metrics.json")["evaluate"]
    assert ev["log_loss"] == pytest.approx(m["test"]["log_loss"], abs=1e-6) and ev["rows"] == m["test"]["rows"]

    out = str(tmp_path / "export")
    assert cli.main(["export", "--from", ft, "--out", out]) == 0
    from umec_torchrec.export.loaders import load_program
    from umec_torchrec.export.samples import module_logits, sample_inputs

    ccfg = ModelConfig.from_dict(_json(ft, "config.json")["model"])
    model = build_dlrm(ccfg)
    model.load_state_dict(_state(ft))
    model.eval()
    dense_in, ids = sample_inputs(ccfg, n=64, seed=5)
    with torch.no_grad():
        want = module_logits(model, dense_in, ids, ccfg.feature_names)
        got = load_program(out)(dense_in, ids)
    assert torch.allclose(got.flatten(), want.flatten(), atol=1e-5, rtol=0)
    # the manifest compares with the dense model, as the export of the compressed run does
    ref = str(tmp_path / "export-comp")
    assert cli.main(["export", "--from", comp, "--out", ref]) == 0
    mf, mc = _json(out, "manifest.json"), _json(ref, "manifest.json")
    assert mf["features"] == mc["features"] and mf["tables"] == mc["tables"]
    for key in ("flops_per_sample", "embedding_bytes", "lookup_bytes_per_sample"):
        assert mf[key]["before"] == mc[key]["before"] and mf[key]["after"] == mc[key]["after"], key
    assert mf["flops_per_sample"]["before"] > mf["flops_per_sample"]["after"]

    again = str(tmp_path / "again")
    _finetune(ft, again, "--start", "continue")
    rec = _json(again, "config.json")
    assert rec["model"] == ccfg.to_dict() and rec["umec"]["dense_model"] == _json(dense, "config.json")["model"]
    assert _metrics(again)["resources"] == m["resources"]


def _two_rank_worker(rank: int, world_size: int, comp: str, out: str) -> dict:
    from umec_torchrec.distributed import init_distributed
    from umec_torchrec.stages.compress import finetune_run

    ctx = init_distributed("gloo")
    m = finetune_run(comp, out, ctx, steps=6, progress=False)
    return {"loss": m["train"]["loss"], "test": m["test"]}


def test_compact_finetune_two_ranks_equals_one(runs, tmp_path):
    """The compact fine-tune on 2 gloo ranks (the kept tables resharded from the 1-rank
    checkpoint) trains like 1 rank on the same global batches: loss, test metrics and final
    weights within 1e-4."""
    root, dense, comp = runs
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _finetune(comp, one)
    res = run_multiprocess(_two_rank_worker, world_size=2, comp=comp, out=two)
    assert res[0]["test"] == res[1]["test"]
    m1 = _metrics(one)
    assert res[0]["loss"] == pytest.approx(m1["train"]["loss"], abs=1e-4)
    assert res[0]["test"]["log_loss"] == pytest.approx(m1["test"]["log_loss"], abs=1e-4)
    a, b = _state(one), _state(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=0), k


def test_compact_finetune_sigint_then_resume_equals_uninterrupted(runs, tmp_path, capsys):
    """A SIGINT during step 3 of a compact fine-tune stops it with a checkpoint (exit 130);
    --resume completes it with the uninterrupted run's metrics, exactly."""
    import umec_torchrec.train.loop as loop

    root, dense, comp = runs
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    argv = ["finetune", "--from", comp, "--steps", "6", "--no-progress", "--checkpoint-every", "100"]
    assert cli.main([*argv, "--out", ref]) == 0
    orig = loop.StepGuard.check

    def check(self, step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, step, loss)

    loop.StepGuard.check = check
    try:
        rc = cli.main([*argv, "--out", run])
    finally:
        loop.StepGuard.check = orig
    assert rc == 130
    assert os.path.isdir(os.path.join(run, "checkpoints")) and not os.path.exists(os.path.join(run, "metrics.json"))
    assert cli.main([*argv, "--out", run, "--resume"]) == 0
    assert _metrics(run) == _metrics(ref)
