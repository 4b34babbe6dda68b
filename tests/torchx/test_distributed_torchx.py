"""TorchX: a 2-rank ``local_cwd`` launch of ``torchx_components/umec.py:compress`` completes
on small generated data (``synthetic:rows=2000``) and writes its history, and the component's
AppDef is the expected torchrun over ``umec_torchrec.cli``. The source run is made with ``umec train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # local_cwd runs `torchrun`
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("MASTER_PORT", None)
    return env


def _torchx() -> str:
    pytest.importorskip("torchx", reason="torchx is not installed (pip install torchx==0.7.0)")
    exe = BIN / "torchx"
    if not exe.is_file():
        pytest.skip(f"{exe} not found: the torchx console script is not installed next to this Python")
    if not (BIN / "torchrun").is_file():
        pytest.skip(f"{BIN / 'torchrun'} not found: local_cwd launches need torchrun")
    return str(exe)


def test_component_is_torchrun_over_the_cli():
    pytest.importorskip("torchx", reason="torchx is not installed (pip install torchx==0.7.0)")
    sys.path.insert(0, str(ROOT))
    try:
        from torchx_components import umec as comp
    finally:
        sys.path.remove(str(ROOT))
    for stage in ("train", "compress", "finetune"):
        app = getattr(comp, stage)("--out", "runs/x", j="1x2")
        (role,) = app.roles
        cmd = " ".join(role.args)
        assert "torchrun" in cmd and "--nproc_per_node 2" in cmd, cmd
        assert f"-m umec_torchrec.cli {stage} --out runs/x" in cmd, cmd
        assert role.resource.gpu == 0 and app.name == f"umec-{stage}"


def test_torchx_local_cwd_compress_on_two_ranks(tmp_path):
    torchx = _torchx()
    src, out = tmp_path / "base", tmp_path / "compressed"
    train = [sys.executable, "-m", "umec_torchrec.cli", "train", "--data", "synthetic:rows=2000,seed=0",
             "--embedding-dim", "8", "--bottom", "16,8", "--top", "16,8,1", "--steps", "20", "--batch-size", "64",
             "--sharding", "table_wise", "--no-progress", "--out", str(src)]
    r = subprocess.run(train, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    cmd = [torchx, "run", "-s", "local_cwd", "-cfg", f"log_dir={tmp_path / 'logs'}",
           "torchx_components/umec.py:compress", "-j", "1x2", "--",
           "--from", str(src), "--budget", "flops=0.5", "--steps", "12", "--no-progress", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    log = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0 and "SUCCEEDED" in log, log
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    masks = json.loads((out / "masks.json").read_text())
    assert cfg["world_size"] == 2 and cfg["umec"]["stage"] == "compress"
    assert metrics["resources"]["flops"]["fraction"] <= 0.5 + 1e-9
    assert 0 < len(masks["kept_features"]) < len(masks["feature_names"])
    assert (out / "checkpoint" / ".metadata").is_file()
    from umec_torchrec.history import read_history

    hist = read_history(str(out / "history.jsonl"))  # rank 0 writes it; the loss is the mean over the 2 ranks
    assert [r["step"] for r in hist] == [2, 4, 6, 8, 10, 12] and all(r["loss"] > 0 for r in hist), hist
    assert set(hist[-1]["resources"]) == {"flops"} and hist[-1]["resources"]["flops"]["budget"] == 0.5
