"""The layering of ``umec_torchrec`` (docs/CONTRIBUTING.md, "Layout"): no module imports from a
higher layer. Reads the package's own source; no data."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "umec_torchrec"
LOW = ("io", "log", "distributed", "classification", "runs", "errors", "history", "history_plot")
LAYER = {**{m: 0 for m in LOW}, **{m: 1 for m in ("umec", "data", "models", "export", "baselines")},
         "train": 2, "stages": 3, "cli": 4, "bench": 4}
# runs.Run's accessors turn recorded sections back into their dataclasses, importing them inside the method
ALLOWED = {("umec_torchrec.runs", "umec_torchrec.models"), ("umec_torchrec.runs", "umec_torchrec.train.config"),
           ("umec_torchrec.runs", "umec_torchrec.data")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER.get(parts[1], 9) if len(parts) > 1 else 9  # the package root / __main__ may import anything


def upward_imports():
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        mod = ".".join(("umec_torchrec",) + f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("umec_torchrec."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("umec_torchrec.")]
            else:
                continue
            out += [(mod, n, node.lineno) for n in names if _layer(n) > _layer(mod) and (mod, n) not in ALLOWED]
    return out


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import():
    assert _layer("umec_torchrec.train.fit") > _layer("umec_torchrec.export.compact") > _layer("umec_torchrec.io")
    assert _layer("umec_torchrec.cli.flags") > _layer("umec_torchrec.stages.demo")
