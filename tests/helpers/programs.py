"""Running an exported program where a server would: a fresh interpreter with only torch."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Dict, List, Tuple

import torch


def run_in_fresh_process(program: str, cases: Dict[Any, Tuple[tuple, torch.Tensor]], tmp_dir: str) -> Tuple[
        float, bool, List[str]]:
    """Load ``program`` (a ``program.pt2``) with ``torch.export.load`` in a new interpreter and
    run every case there.

    Args:
        program: path of the exported program.
        cases: ``{name: (inputs, expected logits)}``.
        tmp_dir: where the cases are saved for the child.

    Returns:
        ``(worst, initialised, loaded)``: the largest absolute difference from the expected
        logits over the cases, whether ``torch.distributed`` was initialised in the child, and
        the ``torchrec`` / ``fbgemm_gpu`` / ``umec_torchrec`` modules it imported (a served
        program needs none).
    """
    blob = f"{tmp_dir}/fresh_process_cases.pt"
    torch.save(cases, blob)
    code = (
        "import sys, torch\n"
        f"prog = torch.export.load({program!r}).module()\n"
        f"cases = torch.load({blob!r})\n"
        "worst = max(float((prog(*args) - ref).abs().max()) for args, ref in cases.values())\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torchrec', 'fbgemm_gpu', 'umec_torchrec')]\n"
        "print(repr((worst, torch.distributed.is_initialized(), bad)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    worst, initialised, bad = eval(r.stdout.strip().splitlines()[-1])  # a tuple of float, bool, list of str
    return float(worst), bool(initialised), list(bad)
