"""``umec bench quality --suite``: a fixed list of quality runs and one report.

Items (3 seeds each; joint mode at FLOPs budgets 0.5, 0.3, 0.1, 0.05; features-only at the
budgets that keep 60 %, 30 % and 15 % of the fields, plus, on generated data, the budget
that fits exactly the signal fields):

* the Criteo Kaggle sample, seeded random split and time-ordered split, both modes, the
  small bench arch; and the project's default arch (``ModelConfig`` defaults), joint mode,
  random split;
* the Frappe validation file, both modes;
* the clicklog family (:mod:`umec_torchrec.data.clicklog`), generator seeds 0, 1, 2, both
  modes (vocabulary min count 1, so the near-unique noise ids get rows a model can memorise).

Cut to fit 2 cores in about 90 minutes: one default-arch item (joint, random split), 20,000
generated rows, 1 epoch per phase. Real-data items are skipped, with a note in the report,
when their file is not under ``data_root``. ``quick``: two CI-sized items on generated data.

Writes ``OUT/<item>/quality.{csv,md,png,json}``, ``OUT/suite.md`` and ``OUT/suite.json``
(after every item, so a stopped run keeps what finished).

``select_scores``: the same items (without the default-arch one) with ``umec_auto`` over every
score kind only, which records each kind's *validation* AUC; ``OUT/selection.md`` ranks the
kinds across all items and budgets. This is how UMEC's default score is chosen.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from umec_torchrec.bench.quality.config import QualityConfig
from umec_torchrec.bench.quality.report import format_selection_markdown, format_suite_markdown
from umec_torchrec.bench.quality.runner import run_quality_bench
from umec_torchrec.distributed import DistContext
from umec_torchrec.io import atomic_write, write_json

__all__ = ["SuiteItem", "suite_items", "selection_items", "run_suite", "SUITE_METHODS"]

SUITE_METHODS = ["umec", "umec_rewind", "uniform", "magnitude", "group_lasso", "random", "taylor", "permutation",
                 "shark"]
JOINT_BUDGETS = [0.5, 0.3, 0.1, 0.05]
FIELD_SHARES = [0.6, 0.3, 0.15]
CRITEO = "criteo_kaggle_train_sample.tsv.gz"
FRAPPE = "frappe/frappe.valid.libsvm.gz"
DEFAULT_ARCH: Dict[str, Any] = {"kind": "cat"}  # ModelConfig's own defaults


@dataclass
class SuiteItem:
    """One run of the suite.

    Args:
        name: short name (the output sub-folder).
        config: the run's settings.
        needs: a file under ``data_root`` the item reads (``None``: generated data).
    """

    name: str
    config: QualityConfig
    needs: Optional[str] = None

    @property
    def mode(self) -> str:
        return "features" if self.config.features_only else "joint"


def _both_modes(name: str, needs: Optional[str], **kw: Any) -> List[SuiteItem]:
    joint = QualityConfig(**{"budgets": list(JOINT_BUDGETS), "methods": list(SUITE_METHODS), **kw})
    feats = dataclasses.replace(joint, features_only=True, budgets=[], field_shares=list(FIELD_SHARES),
                                signal_budget=kw["data"].startswith("clicklog"))
    return [SuiteItem(f"{name}-joint", joint, needs), SuiteItem(f"{name}-features", feats, needs)]


def suite_items(quick: bool = False, data_root: str = "../shared/data") -> List[SuiteItem]:
    """The fixed list (module docstring); ``quick``: the CI subset on generated data."""
    if quick:
        small = {"kind": "cat", "embedding_dim": 8, "bottom": [16, 8], "top": [16, 8, 1]}
        base = dict(data="clicklog:seed=0,rows=2000", seeds=2, methods=["umec", "umec_auto", "magnitude"],
                    auto_scores=["holdout", "weight"],
                    model=small, min_count=1, batch_size=128)
        return [SuiteItem("clicklog0-joint", QualityConfig(budgets=[0.3], **base)),
                SuiteItem("clicklog0-features", QualityConfig(budgets=[], field_shares=[0.25], signal_budget=True,
                                                              features_only=True, **base))]
    criteo = f"criteo:{os.path.join(data_root, CRITEO)}"
    items = _both_modes("criteo-random", CRITEO, data=criteo)
    items += _both_modes("criteo-time", CRITEO, data=criteo + ",time_ordered=1")
    items.append(SuiteItem("criteo-random-default-arch",
                           QualityConfig(data=criteo, budgets=list(JOINT_BUDGETS), methods=list(SUITE_METHODS),
                                         model=dict(DEFAULT_ARCH)), CRITEO))
    items += _both_modes("frappe", FRAPPE, data=f"libsvm:{os.path.join(data_root, FRAPPE)}")
    for g in (0, 1, 2):
        items += _both_modes(f"clicklog{g}", None, data=f"clicklog:seed={g},rows=20000", min_count=1)
    return items


def selection_items(data_root: str = "../shared/data") -> List[SuiteItem]:
    """The suite's items (without the default-arch one) running ``umec_auto`` over every score kind."""
    from umec_torchrec.umec.importance import ScoreKind

    kinds = [k.value for k in ScoreKind]
    return [dataclasses.replace(it, config=dataclasses.replace(it.config, methods=["umec_auto"], auto_scores=kinds))
            for it in suite_items(False, data_root) if it.name != "criteo-random-default-arch"]


def run_suite(out_dir: str, quick: bool = False, data_root: str = "../shared/data", ctx: Optional[DistContext] = None,
              log: Callable[[str], None] = print, items: Optional[List[SuiteItem]] = None,
              select_scores: bool = False) -> List[Dict[str, Any]]:
    """Run every item of :func:`suite_items` and write ``suite.md`` / ``suite.json``.

    Returns:
        one entry per item: ``{"name", "mode", "data", "config", "rows", "seconds"}`` and
        ``"skipped"`` (the reason) for an item whose data file is missing.
    """
    if items is None:
        items = selection_items(data_root) if select_scores else suite_items(quick, data_root)
    os.makedirs(out_dir, exist_ok=True)
    flags = (" --quick" if quick else "") + (" --select-scores" if select_scores else "")
    command = f"umec bench quality --suite{flags} --out {out_dir}"
    results: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        entry: Dict[str, Any] = {"name": it.name, "mode": it.mode, "data": it.config.data,
                                 "config": it.config.to_dict(), "rows": []}
        if it.needs is not None and not os.path.isfile(os.path.join(data_root, it.needs)):
            entry["skipped"] = f"{os.path.join(data_root, it.needs)} not found"
            log(f"[{i + 1}/{len(items)}] {it.name}: skipped ({entry['skipped']})")
        else:
            log(f"[{i + 1}/{len(items)}] {it.name}: {it.config.data}, {it.mode}")
            t = time.perf_counter()
            entry["rows"] = run_quality_bench(it.config, os.path.join(out_dir, it.name), ctx, log=log)
            entry["seconds"] = time.perf_counter() - t
        results.append(entry)
        _write(out_dir, results, time.perf_counter() - t0, command, select_scores)
    total = time.perf_counter() - t0
    _write(out_dir, results, total, command, select_scores)
    log(f"suite done in {total / 60:.1f} min ({total:.0f} s); wrote {out_dir}/suite.md, suite.json")
    return results


def _write(out_dir: str, results: List[Dict[str, Any]], seconds: float, command: str, selection: bool = False) -> None:
    atomic_write(os.path.join(out_dir, "suite.md"), lambda f: f.write(format_suite_markdown(results, seconds, command)))
    if selection:
        atomic_write(os.path.join(out_dir, "selection.md"),
                     lambda f: f.write(format_selection_markdown(results, seconds, command)))
    write_json(os.path.join(out_dir, "suite.json"), {"seconds": seconds, "command": command, "items": results})
