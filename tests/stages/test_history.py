"""What a user watching a long ``umec compress`` sees (generated data: ``synthetic:rows=3000``):
the budget trajectory in ``RUN/history.jsonl`` (each resource against its budget, ``s``,
``z``, the loss, per log step), ``umec plot RUN`` drawing it into a PNG, the history cut
back on ``--resume``, and a warning with advice when ``finalize()`` had to repair many groups."""

from __future__ import annotations

import json
import math
import os
import struct

import pytest

from umec_torchrec import cli
from umec_torchrec.history import HISTORY_FILE, append_record, read_history, truncate_history

DATA = "synthetic:rows=3000,seed=1,min_count=2"
SMALL = ["--embedding-dim", "8", "--bottom", "16,8", "--top", "16,1", "--batch-size", "128", "--no-progress"]
BUDGETS = ["--budget", "flops=0.4", "--budget", "embedding_bytes=0.6"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "dense")
    assert cli.main(["train", "--data", DATA, *SMALL, "--steps", "10", "--out", out]) == 0
    return out


def _png_size(path: str) -> tuple:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head
    return struct.unpack(">II", head[16:24])


def test_compress_writes_the_budget_trajectory_and_plot_draws_it(dense_run, tmp_path, capsys):
    run = str(tmp_path / "c")
    assert cli.main(["compress", "--from", dense_run, *BUDGETS, "--steps", "20", "--no-progress", "--out", run]) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    recs = read_history(os.path.join(run, HISTORY_FILE))
    assert [r["step"] for r in recs] == [4, 8, 12, 16, 20]  # every max(1, min(50, 20 // 5)) steps
    for r in recs:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert set(r["resources"]) == {"flops", "embedding_bytes"}
        assert r["resources"]["flops"]["budget"] == pytest.approx(0.4)
        assert r["resources"]["embedding_bytes"]["budget"] == pytest.approx(0.6)
        assert all(0.0 < v["fraction"] <= 1.0 for v in r["resources"].values())
        assert set(r["s"]) == set(cfg["umec"]["sets"]) and set(r["z"]) == {"flops", "embedding_bytes"}
        assert all(0.0 <= r["s"][k] <= cfg["umec"]["sets"][k] for k in r["s"])
    assert recs[0]["s"] != recs[-1]["s"]  # the trajectory moves
    assert recs[-1]["resources"]["flops"]["fraction"] <= recs[0]["resources"]["flops"]["fraction"]
    # the last record is the search's end; metrics.json holds the repaired result
    assert metrics["resources"]["flops"]["fraction"] <= 0.4 + 1e-9
    capsys.readouterr()
    assert cli.main(["plot", run]) == 0
    png = os.path.join(run, "history.png")
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    w, h = _png_size(png)
    assert w > 300 and h > 3 * 150  # three panels: loss, flops, embedding_bytes
    out = str(tmp_path / "elsewhere" / "h.png")
    assert cli.main(["plot", os.path.join(run, HISTORY_FILE), "--out", out]) == 0 and _png_size(out) == (w, h)


def test_plot_errors_are_one_line(dense_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["plot", dense_run]) == 2  # a train run has no history
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"umec: error: {os.path.join(dense_run, HISTORY_FILE)}: no such history file "
                   "(umec compress writes it at each log step)"]
    bad = tmp_path / "h.jsonl"
    bad.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 3}\n')
    assert cli.main(["plot", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"umec: error: {bad}:2: not a history record"), err
    assert not os.path.exists(tmp_path / "history.png")


def test_history_file_torn_tail_and_truncation(tmp_path):
    """Generated records: a torn last line (a kill while appending) is skipped when read and
    removed by truncation, which keeps the records up to the resumed step."""
    p = str(tmp_path / HISTORY_FILE)
    for s in (5, 10, 15):
        append_record(p, {"step": s, "loss": 0.5, "nan": float("nan")})
    with open(p, "a") as f:
        f.write('{"step": 20, "lo')
    recs = read_history(p)
    assert [r["step"] for r in recs] == [5, 10, 15] and recs[0]["nan"] is None
    assert truncate_history(p, 10) == 2
    assert open(p).read().splitlines() == [json.dumps(r) for r in recs[:2]]
    with pytest.raises(ValueError, match="integer 'step'"):
        append_record(p, {"step": "7"})
    assert [r["step"] for r in read_history(p)] == [5, 10]  # nothing half-written


def test_resume_cuts_the_history_back_to_the_checkpoint(dense_run, tmp_path):
    run = str(tmp_path / "c")
    argv = ["compress", "--from", dense_run, *BUDGETS, "--steps", "20", "--checkpoint-every", "8", "--no-progress",
            "--out", run]
    assert cli.main(argv) == 0
    hist = os.path.join(run, HISTORY_FILE)
    ref = read_history(hist)
    os.remove(os.path.join(run, "metrics.json"))  # as if killed after its last checkpoint (step 20)
    append_record(hist, {"step": 24, "loss": 1.0})  # written after that checkpoint, before the kill
    with open(hist, "a") as f:
        f.write('{"step": 2')
    assert cli.main([*argv, "--resume"]) == 0
    assert read_history(hist) == ref and open(hist).read().endswith("\n")


def test_finalize_repairing_many_groups_warns_with_advice(dense_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["compress", "--from", dense_run, "--budget", "flops=0.2", "--steps", "2", "--no-progress",
                     "--out", str(tmp_path / "short")]) == 0
    cap = capsys.readouterr()
    m = json.load(open(tmp_path / "short" / "metrics.json"))
    warn = [ln for ln in cap.err.splitlines() if ln.startswith("umec: warning: finalize")]
    assert m["budget_repair"]["pruned"] > 3 and len(warn) == 1, cap.err
    assert f"pruned {m['budget_repair']['pruned']} more groups" in warn[0]
    assert "--steps" in warn[0] and "--s-lr" in warn[0] and "--target-every" in warn[0]
    assert cli.main(["compress", "--from", dense_run, "--budget", "flops=0.2", "--steps", "20", "--s-lr", "0.5",
                     "--target-every", "1", "--no-progress", "--out", str(tmp_path / "long")]) == 0
    cap = capsys.readouterr()
    m = json.load(open(tmp_path / "long" / "metrics.json"))
    assert m["budget_repair"]["pruned"] <= 3 and "umec: warning: finalize" not in cap.err, (m["budget_repair"],
                                                                                           cap.err)
