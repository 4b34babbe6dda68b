"""The ``umec`` command line, in process through ``cli.main(argv)``. Data: the built-in
synthetic generator (generated, small row counts); the console-script/torchrun test runs
``umec train`` in 2 real processes on generated data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from umec_torchrec import cli

SMALL = ["--embedding-dim", "8", "--bottom", "16,8", "--top", "16,1", "--no-progress", "--log-every", "0"]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "demo", "bench"):
        assert cmd in out


def test_train_then_evaluate(tmp_path, capsys):
    """Generated data: train writes the run; evaluate reloads it and reports the same AUC."""
    out = str(tmp_path / "run")
    rc = cli.main(["train", "--data", "synthetic:rows=3000,seed=1", "--out", out, "--epochs", "1", *SMALL])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test: AUC" in text
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["data"]["spec"] == "synthetic:rows=3000,seed=1" and cfg["model"]["bottom"] == [16, 8]
    assert cli.main(["evaluate", out, "--json", "--no-progress"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    assert ev["rows"] == metrics["test"]["rows"]


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    """Bad configs, bad data specs, missing runs, existing runs: one line, status 2."""
    cases = [
        ["train", "--data", "synthetic:rows=500", "--out", str(tmp_path / "a"), "--embedding-dim", "8",
         "--bottom", "16,4", "--no-progress"],
        ["train", "--data", "nosuchkind:x", "--out", str(tmp_path / "b"), *SMALL],
        ["train", "--data", "criteo:/nonexistent/file.tsv", "--out", str(tmp_path / "c"), *SMALL],
        ["evaluate", str(tmp_path / "missing"), "--no-progress"],
        ["train", "--emb-lr", "-1", "--out", str(tmp_path / "d"), *SMALL],
    ]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("umec: error: ") and "Traceback" not in "\n".join(err), (argv, err)
    # an existing run directory is refused without --force, accepted with it
    out = str(tmp_path / "run")
    assert cli.main(["train", "--data", "synthetic:rows=600", "--out", out, "--steps", "2", *SMALL]) == 0
    assert cli.main(["train", "--data", "synthetic:rows=600", "--out", out, "--steps", "2", *SMALL]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["train", "--data", "synthetic:rows=600", "--out", out, "--steps", "2", "--force", *SMALL]) == 0


def test_evaluate_detects_changed_data(tmp_path, capsys):
    """Generated data: a run whose recorded config now rebuilds different tables is refused."""
    out = str(tmp_path / "run")
    assert cli.main(["train", "--data", "synthetic:rows=800,seed=2", "--out", out, "--steps", "2", *SMALL]) == 0
    p = os.path.join(out, "config.json")
    cfg = json.load(open(p))
    cfg["data"]["spec"] = "synthetic:rows=900,seed=3"
    json.dump(cfg, open(p, "w"))
    assert cli.main(["evaluate", out, "--no-progress"]) == 2
    assert "data changed" in capsys.readouterr().err


def test_demo_library_function(tmp_path, capsys):
    """run_demo on a small generated data set: trains, reloads (same metrics), compresses
    under the budgets, finetunes, exports, and prints dense against compact."""
    import json

    from umec_torchrec.stages.demo import run_demo

    r = run_demo(str(tmp_path / "demo"), data="synthetic:rows=3000,min_count=2", epochs=1, progress=False,
                 compress_epochs=1, finetune_epochs=1)
    assert [s["stage"] for s in r["stages"]] == ["train", "evaluate", "compress", "finetune", "export"]
    assert r["stages"][0]["auc"] == pytest.approx(r["stages"][1]["auc"], abs=1e-9)
    assert r["metrics"]["auc"] > 0.6
    cm = json.load(open(tmp_path / "demo-compressed" / "metrics.json"))
    assert cm["resources"]["flops"]["fraction"] <= 0.3 + 1e-9
    assert cm["resources"]["embedding_bytes"]["fraction"] <= 0.5 + 1e-9
    manifest = json.load(open(tmp_path / "demo-export" / "manifest.json"))
    assert manifest["flops_per_sample"]["ratio"] <= 0.3 + 1e-9
    out = capsys.readouterr().out
    assert "demo finished" in out and "dense against compact" in out


def test_bench_train_small_tables():
    """The bench machinery on tiny tables (no timing assertion): a positive, finite figure."""
    from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES, kaggle_model_config
    from umec_torchrec.bench.train import run_train_bench

    assert len(KAGGLE_TABLE_SIZES) == 26 and sum(KAGGLE_TABLE_SIZES) == 33_762_577
    cfg = kaggle_model_config()
    assert cfg.bottom == [512, 256, 64, 16] and cfg.top == [512, 256, 1] and cfg.dense_in_features == 13
    r = run_train_bench(steps=2, batch_size=256, warmup=1, table_sizes=[50] * 26)
    assert r["samples_per_s"] > 0 and r["steps"] == 2 and r["table_rows"] == 50 * 26


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not next to the Python interpreter")
def test_torchrun_two_processes(tmp_path):
    """``torchrun --nproc_per_node 2 -m umec_torchrec.cli train`` on generated data writes one
    run; ``umec evaluate`` on 1 process reloads the 2-rank checkpoint with the same AUC."""
    out = str(tmp_path / "run")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP", OMP_NUM_THREADS="1")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", "localhost:0", "-m", "umec_torchrec.cli", "train",
           "--data", "synthetic:rows=2000,seed=4", "--out", out, "--steps", "10", "--batch-size", "64",
           "--sharding", "table_wise", *SMALL]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert json.load(open(os.path.join(out, "config.json")))["world_size"] == 2
    p = subprocess.run([sys.executable, "-m", "umec_torchrec", "evaluate", out, "--json", "--no-progress"],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    ev = json.loads(p.stdout.strip().splitlines()[-1])
    assert ev["auc"] == pytest.approx(m["test"]["auc"], abs=1e-6)
