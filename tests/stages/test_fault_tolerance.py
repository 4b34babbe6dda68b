"""Fault tolerance of train / compress / finetune: periodic checkpoints, kill and resume,
torn checkpoints, non-finite losses, SIGTERM/SIGINT. All tests use generated data (the
built-in synthetic generator, small row counts) and tiny MLPs.

Kill tests launch ``python -m umec_torchrec.cli`` (or torchrun with 2 ranks) as a
subprocess in its own session, wait until a periodic checkpoint exists, SIGKILL the whole
process group mid-run, resume with ``--resume`` and compare with an uninterrupted run of
the same seed: metrics (except timings) and masks must be exactly equal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from umec_torchrec import cli
from umec_torchrec.train.checkpoint import verify_checkpoint

DATA = "synthetic:rows=3000,seed=1,min_count=2"
SMALL = ["--embedding-dim", "8", "--bottom", "32,8", "--top", "32,1", "--batch-size", "128", "--no-progress",
         "--log-every", "5"]
TIMING = {"seconds", "steps_per_s", "samples_per_s", "wall_seconds"}
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _metrics(run: str) -> dict:
    m = json.load(open(os.path.join(run, "metrics.json")))
    m.pop("wall_seconds", None)
    m["train"] = {k: v for k, v in m["train"].items() if k not in TIMING}
    return m


def _steps(run: str) -> list:
    d = os.path.join(run, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(int(n[5:]) for n in os.listdir(d) if re.fullmatch(r"step-\d+", n))


def _cmd(argv: list, nproc: int) -> list:
    if nproc == 1:
        return [sys.executable, "-m", "umec_torchrec.cli", *argv]
    return [TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", "0", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", "localhost:0", "-m", "umec_torchrec.cli", *argv]


def _env() -> dict:
    return dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP",
                PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"])


def _run(argv: list, nproc: int = 1) -> subprocess.CompletedProcess:
    p = subprocess.run(_cmd(argv, nproc), capture_output=True, text=True, timeout=300, env=_env())
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _descendants(pid: int) -> list:
    """``pid`` and all its descendants (from /proc; torchrun starts its workers in their own
    sessions, so killing its process group would leave them running)."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _kill_mid_run(argv: list, run: str, min_step: int, nproc: int = 1, sig: int = signal.SIGKILL) -> tuple:
    """Start the command, wait for a checkpoint at >= ``min_step``, send ``sig`` to the
    whole process group (torchrun and its workers), wait for the exit."""
    proc = subprocess.Popen(_cmd(argv, nproc), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        s = _steps(run)
        if s and s[-1] >= min_step:
            if sig == signal.SIGKILL:  # the whole tree at once, as when a node dies
                for p in _descendants(proc.pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                proc.send_signal(sig)
            break
        time.sleep(0.01)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for p in _descendants(proc.pid):
            os.kill(p, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode != 0, "the run finished before it could be killed; make it longer"
    assert not os.path.exists(os.path.join(run, "metrics.json"))
    return proc, err


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A trained run to compress (generated data)."""
    out = str(tmp_path_factory.mktemp("ft") / "dense")
    assert cli.main(["train", "--data", DATA, *SMALL, "--epochs", "1", "--sharding", "table_wise", "--out", out]) == 0
    return out


def test_train_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Single process: ``umec train`` SIGKILLed after a periodic checkpoint, then
    ``--resume``: same metrics as an uninterrupted run; only the newest K checkpoints stay."""
    argv = ["train", "--data", DATA, *SMALL, "--epochs", "3", "--checkpoint-every", "4", "--keep", "2"]
    ref = str(tmp_path / "ref")
    assert cli.main([*argv, "--out", ref]) == 0
    total = int(_metrics(ref)["train"]["steps"])
    assert _steps(ref) == [total - total % 4 if total % 4 else total - 4, total]  # every 4 and the end; newest 2
    run = str(tmp_path / "run")
    _kill_mid_run([*argv, "--out", run], run, min_step=8)
    killed_at = _steps(run)[-1]
    assert cli.main([*argv, "--out", run, "--resume"]) == 0
    assert killed_at < total and _metrics(run) == _metrics(ref)
    assert not os.path.exists(run + "/checkpoint.tmp") and verify_checkpoint(os.path.join(run, "checkpoint")) is None


def test_compress_sigterm_checkpoints_exits_then_resumes(dense_run, tmp_path, capsys):
    """Single process: SIGTERM finishes the step, writes a checkpoint, exits 143 with one
    line saying how to resume; ``--resume`` then gives the uninterrupted masks and metrics."""
    argv = ["compress", "--from", dense_run, "--budget", "flops=0.3", "--budget", "embedding_bytes=0.6",
            "--steps", "40", "--checkpoint-every", "6", "--no-progress"]
    ref = str(tmp_path / "ref")
    assert cli.main([*argv, "--out", ref]) == 0
    run = str(tmp_path / "run")
    proc, err = _kill_mid_run([*argv, "--out", run], run, min_step=6, sig=signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    last = _steps(run)[-1]
    lines = [ln for ln in (err or "").splitlines() if ln.startswith("umec:")]
    assert lines and f"stopped by SIGTERM after step {last}" in lines[-1] and "--resume" in lines[-1]
    assert "Traceback" not in (err or "")
    capsys.readouterr()
    assert cli.main([*argv, "--out", run, "--resume"]) == 0
    assert f"continuing from {os.path.join(run, 'checkpoints', f'step-{last:06d}')}" in capsys.readouterr().out
    assert json.load(open(os.path.join(run, "masks.json"))) == json.load(open(os.path.join(ref, "masks.json")))
    assert _metrics(run) == _metrics(ref)


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not next to the Python interpreter")
def test_compress_two_ranks_sigkill_then_resume(dense_run, tmp_path):
    """2 ranks (torchrun): compress killed (SIGKILL to torchrun and both workers) after a
    checkpoint, resumed on 2 ranks: masks and metrics equal an uninterrupted 2-rank run."""
    argv = ["compress", "--from", dense_run, "--budget", "flops=0.3", "--steps", "60", "--checkpoint-every", "6",
            "--no-progress"]
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    _run([*argv, "--out", ref], nproc=2)
    _kill_mid_run([*argv, "--out", run], run, min_step=6, nproc=2)
    assert _steps(run) and _steps(run)[-1] < 60
    _run([*argv, "--out", run, "--resume"], nproc=2)
    assert json.load(open(os.path.join(run, "config.json")))["world_size"] == 2
    assert json.load(open(os.path.join(run, "masks.json"))) == json.load(open(os.path.join(ref, "masks.json")))
    assert _metrics(run) == _metrics(ref)


def _truncate(path: str) -> None:
    f = next(os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".distcp"))
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def test_torn_checkpoints_are_skipped_with_a_warning(tmp_path, capsys):
    """Generated data: the newest checkpoint truncated, the one before without its manifest:
    both are skipped with a warning naming them, the run resumes from the third and ends
    equal to the uninterrupted run (whose metrics.json is the reference)."""
    run = str(tmp_path / "run")
    argv = ["train", "--data", DATA, *SMALL, "--steps", "16", "--checkpoint-every", "4", "--keep", "3"]
    assert cli.main([*argv, "--out", run]) == 0
    ref = _metrics(run)
    assert _steps(run) == [8, 12, 16]
    ck = os.path.join(run, "checkpoints")
    _truncate(os.path.join(ck, "step-000016"))
    os.remove(os.path.join(ck, "step-000012", "manifest.json"))
    assert "truncated" in verify_checkpoint(os.path.join(ck, "step-000016"))
    os.remove(os.path.join(run, "metrics.json"))
    capsys.readouterr()
    assert cli.main([*argv, "--out", run, "--resume"]) == 0
    cap = capsys.readouterr()
    warns = [ln for ln in cap.err.splitlines() if ln.startswith("umec: warning:")]
    assert len(warns) == 2 and "step-000016" in warns[0] and "step-000012" in warns[1]
    assert "continuing from" in cap.out and "step-000008" in cap.out
    assert _metrics(run) == ref
    # a checkpoint whose DCP data is garbled behind an intact-looking manifest is caught by the hash
    p = os.path.join(ck, "step-000016")
    f = next(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".distcp"))
    with open(f, "r+b") as fh:
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert "SHA-256" in verify_checkpoint(p)


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """Generated data, NaN injected into the dense input of step 7: exit 3, one line naming
    step 7 and the last good checkpoint (step 6), which stays intact; no final artifacts."""
    run = str(tmp_path / "run")
    monkeypatch.setenv("UMEC_FAULT_NAN_STEP", "7")
    rc = cli.main(["train", "--data", DATA, *SMALL, "--steps", "20", "--checkpoint-every", "3", "--out", run])
    assert rc == 3
    cap = capsys.readouterr().err
    err = [ln for ln in cap.splitlines() if ln.startswith("umec:")]  # the other lines are the step log
    good = os.path.join(run, "checkpoints", "step-000006")
    assert "Traceback" not in cap
    assert len(err) == 1 and err[0].startswith("umec: error: non-finite loss at step 7")
    assert f"last good checkpoint: {good}" in err[0]
    assert verify_checkpoint(good) is None and _steps(run) == [3, 6]
    assert not os.path.exists(os.path.join(run, "checkpoint")) and not os.path.exists(os.path.join(run, "metrics.json"))


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """Generated data: weights made NaN after a step (loss still finite at that step) are
    caught before the checkpoint is written; the previous one is named and kept."""
    import torch

    from helpers.data import SMALL_MODEL, make_bundle
    from umec_torchrec.distributed import session
    from umec_torchrec.train import TrainConfig, build_training, fit, make_model_config
    from umec_torchrec.train.ckpt_manager import CheckpointManager, CheckpointPolicy
    from umec_torchrec.train.guard import NonFiniteError

    b = make_bundle(1200)
    tc = TrainConfig(batch_size=100, steps=8, log_every=0)
    with session() as ctx:
        dmp, opt = build_training(make_model_config(b.train, SMALL_MODEL), tc, ctx)
        mgr = CheckpointManager(str(tmp_path / "checkpoints"), CheckpointPolicy(every=2))

        def on_step(step, loss):
            if step == 4:  # 0-based: poison the weights after the 5th step's update
                with torch.no_grad():
                    next(p for n, p in dmp.named_parameters() if "dense_arch" in n).fill_(float("nan"))

        with pytest.raises(NonFiniteError) as ei:
            fit(dmp, opt, b.train, tc, ctx, progress=False, on_step=on_step, checkpoints=mgr)
    assert ei.value.step in (5, 6)
    assert ei.value.checkpoint == os.path.join(str(tmp_path), "checkpoints", "step-000004")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-000002", "step-000004"]


def test_sigint_in_process_writes_checkpoint_and_exits_130(tmp_path, capsys):
    """Generated data: a SIGINT delivered during step 5 (in process) stops after that step
    with a checkpoint at step 5 and exit 130; --resume completes to the uninterrupted result."""
    from umec_torchrec.cli import running as tc_cmd

    argv = ["train", "--data", DATA, *SMALL, "--steps", "12", "--checkpoint-every", "100"]
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    assert cli.main([*argv, "--out", ref]) == 0
    import umec_torchrec.train.loop as loop

    orig = loop.StepGuard.check
    calls = {"n": 0}

    def check(self, step, loss):
        calls["n"] += 1
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # handler sets the flag; the loop sees it now
        return orig(self, step, loss)

    loop.StepGuard.check = check
    before = signal.getsignal(signal.SIGINT)  # earlier in-process launches may have replaced the default
    try:
        rc = cli.main([*argv, "--out", run])
    finally:
        loop.StepGuard.check = orig
    assert rc == 130 and signal.getsignal(signal.SIGINT) is before  # the previous handler is restored
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("umec: stopped by SIGINT after step 5") and _steps(run) == [5]
    assert tc_cmd.EXIT_DIVERGED == 3
    assert cli.main([*argv, "--out", run, "--resume"]) == 0
    assert _metrics(run) == _metrics(ref)
    shutil.rmtree(run)
