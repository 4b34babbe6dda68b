"""``umec compress`` and ``umec finetune`` end to end on small synthetic data (generated,
known answer not needed here), plus their user errors."""

import json
import os

import pytest
import torch.distributed.checkpoint as dcp

from umec_torchrec.cli import main
from umec_torchrec.models import ModelConfig, build_model
from umec_torchrec.umec import PruningMasks


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "dense")
    rc = main(["train", "--data", "synthetic:rows=3000,seed=1,min_count=2", "--bottom", "32,16", "--top", "32,16,1",
               "--batch-size", "128", "--epochs", "1", "--out", out, "--no-progress"])
    assert rc == 0
    return out


def test_compress_then_finetune(dense_run, tmp_path, capsys):
    c, f = str(tmp_path / "c"), str(tmp_path / "f")
    rc = main(["compress", "--from", dense_run, "--budget", "flops=0.3", "--budget", "embedding_bytes=0.6",
               "--out", c, "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "budget 30.0%" in out and "kept" in out  # progress shows resources against budgets
    m = json.load(open(os.path.join(c, "metrics.json")))
    assert m["resources"]["flops"]["fraction"] <= 0.3 + 1e-9
    assert m["resources"]["embedding_bytes"]["fraction"] <= 0.6 + 1e-9
    assert m["resources"]["flops"]["value"] < m["resources"]["flops"]["dense"]
    assert set(m["test"]) >= {"auc", "log_loss", "accuracy"} and 0.0 <= m["test"]["auc"] <= 1.0
    masks = PruningMasks.load(os.path.join(c, "masks.json"))
    assert masks.kept_features == m["kept_features"] and masks.kept_units() == m["kept_units"]

    rc = main(["finetune", "--from", c, "--out", f, "--epochs", "1", "--no-progress", "--finetune-model", "masked"])
    assert rc == 0
    mf = json.load(open(os.path.join(f, "metrics.json")))
    assert mf["resources"] == m["resources"] and "auc" in mf["test"]
    # the masked fine-tuned checkpoint keeps every pruned weight exactly zero (compact: test_compact_finetune_run.py)
    cfg = ModelConfig.from_dict(json.load(open(os.path.join(f, "config.json")))["model"])
    model = build_model(cfg)
    sd = {"model": model.state_dict()}
    dcp.load(sd, checkpoint_id=os.path.join(f, "checkpoint"))
    model.load_state_dict(sd["model"])
    from umec_torchrec.umec import weight_masks

    for p, k in weight_masks(model, masks).items():
        assert float((p.detach() * (k == 0)).abs().sum()) == 0.0


def test_finetune_rewind_starts_from_dense_weights(dense_run, tmp_path):
    """--start rewind (the default): the fine-tuned run starts from the dense run's weights (masked), recorded in
    its config; after one step its weights are near the masked dense weights, not near the
    weights the UMEC search left."""
    c, f = str(tmp_path / "c"), str(tmp_path / "f")
    assert main(["compress", "--from", dense_run, "--budget", "flops=0.4", "--out", c, "--no-progress"]) == 0
    assert main(["finetune", "--from", c, "--out", f, "--steps", "1", "--no-progress",
                 "--finetune-model", "masked"]) == 0
    cfg = json.load(open(os.path.join(f, "config.json")))
    assert cfg["umec"]["weights_from"] == os.path.abspath(dense_run)

    def dense_weights(run):
        mcfg = ModelConfig.from_dict(json.load(open(os.path.join(run, "config.json")))["model"])
        model = build_model(mcfg)
        sd = {"model": model.state_dict()}
        dcp.load(sd, checkpoint_id=os.path.join(run, "checkpoint"))
        model.load_state_dict(sd["model"])
        return model

    base, tuned, searched = dense_weights(dense_run), dense_weights(f), dense_weights(c)
    masks = PruningMasks.load(os.path.join(c, "masks.json"))
    from umec_torchrec.umec import apply_masks_

    apply_masks_(base, masks)
    w = [m.model.over_arch.model[0]._mlp[0]._linear.weight.detach() for m in (base, tuned, searched)]
    assert float((w[1] - w[0]).norm()) < 0.5 * float((w[1] - w[2]).norm())


@pytest.mark.parametrize("argv,msg", [
    (["compress", "--from", "/nonexistent/run", "--budget", "flops=0.3"], "/nonexistent/run"),
    (["compress", "--from", "{run}", "--budget", "flops=1.5"], "(0, 1]"),
    (["compress", "--from", "{run}", "--budget", "speed=0.5"], "unknown resource"),
    (["compress", "--from", "{run}", "--budget", "flops=0.00001"], "below the smallest model"),
    (["finetune", "--from", "{run}"], "not a compressed run"),
])
def test_user_errors_are_one_line(dense_run, tmp_path, capsys, argv, msg):
    argv = [a.replace("{run}", dense_run) for a in argv] + ["--out", str(tmp_path / "x"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("umec: error:") and msg in err[0]
    assert not os.path.exists(tmp_path / "x")  # nothing half-written
