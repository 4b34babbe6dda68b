"""The README's in-place example runs as a user runs it and finds the known answer.

``examples/compress_in_place.py`` trains on the generated click log whose signal features
are known (``data.info["signal_features"]``), compresses with UMEC's defaults under a 30 %
FLOPs / 50 % embedding budget, and prints the kept and the signal features: every signal
feature must survive (a default score that fails on this overfit model kept 3 of 8).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _printed(out: str, label: str):
    line = next(ln for ln in out.splitlines() if ln.startswith(label))
    return ast.literal_eval(line[len(label):].strip())


def test_compress_in_place_keeps_every_signal_feature():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "compress_in_place.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    kept = set(_printed(run.stdout, "kept features:"))
    signal = set(_printed(run.stdout, "signal features (ground truth):"))
    assert len(signal) == 8 and signal <= kept, (sorted(signal - kept), sorted(kept))
    assert len(kept) < 26  # it did prune
    assert _printed(run.stdout, "test:")["auc"] > 0.7
