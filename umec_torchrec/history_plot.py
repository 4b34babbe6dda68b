"""The picture of a run's ``history.jsonl``: the training loss, and each budgeted resource
(fraction of dense) against its budget, over the steps (``umec plot RUN``). Needs
matplotlib (``pip install 'umec-torchrec[plots]'``)."""

from __future__ import annotations

import io
import os
from typing import Any, Dict, List, Optional

from umec_torchrec.history import HISTORY_FILE, read_history
from umec_torchrec.io import atomic_write

__all__ = ["PLOT_FILE", "history_path", "plot_history"]

#: the picture's default name inside the run directory
PLOT_FILE = "history.png"


def history_path(run: str) -> str:
    """``run/history.jsonl`` for a run directory; ``run`` itself for a ``.jsonl`` file."""
    if os.path.isdir(run):
        return os.path.join(run, HISTORY_FILE)
    if os.path.isfile(run):
        return run
    raise FileNotFoundError(f"{run}: no such run directory or history file")


def _series(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    steps = [r["step"] for r in records]
    loss = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    names: List[str] = []
    for r in records:
        for k in (r.get("resources") or {}):
            if k not in names:
                names.append(k)
    res = {}
    for k in names:
        pts = [(r["step"], r["resources"][k]) for r in records if k in (r.get("resources") or {})]
        res[k] = ([s for s, _ in pts], [v.get("fraction") for _, v in pts], [v.get("budget") for _, v in pts])
    return {"steps": steps, "loss": loss, "resources": res}


def plot_history(run: str, out: Optional[str] = None) -> str:
    """Draw ``run``'s history (a run directory or its ``history.jsonl``) into a PNG;
    returns its path.

    Args:
        run: the run directory (or the history file itself).
        out: the PNG to write (default ``RUN/history.png``); written atomically.

    Raises:
        FileNotFoundError: no run or no ``history.jsonl`` (written by ``umec compress``).
        ValueError: a history without records, or with a bad line (named).
        ImportError: matplotlib is not installed.
    """
    path = history_path(run)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such history file (umec compress writes it at each log step)")
    records = read_history(path)
    if not records:
        raise ValueError(f"{path}: no records yet (the first is written at the first log step)")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("umec plot needs matplotlib: pip install 'umec-torchrec[plots]'") from None
    if out is None:
        out = os.path.join(os.path.dirname(os.path.abspath(path)), PLOT_FILE)
    ser = _series(records)
    panels = 1 + len(ser["resources"])
    fig = Figure(figsize=(6.4, 2.2 * panels + 0.6), dpi=110)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    if ser["loss"]:
        ax.plot([s for s, _ in ser["loss"]], [v for _, v in ser["loss"]], marker=".", color="C0")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(path))) or path, fontsize=9)
    for i, (name, (steps, frac, budget)) in enumerate(ser["resources"].items(), start=1):
        ax = axes[i]
        ax.plot(steps, [float("nan") if v is None else v for v in frac], marker=".", color=f"C{i}", label=name)
        ax.plot(steps, [float("nan") if v is None else v for v in budget], linestyle="--", color="k",
                linewidth=1, label="budget")
        ax.set_ylabel(f"{name}\n(fraction of dense)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(out, lambda f: f.write(buf.getvalue()), mode="wb")
    return out
