"""``umec bench latency-quality``: the equal-speed reading of the FLOPs curve (constructed
numbers with a known answer) and one tiny end-to-end run on generated click logs."""

import dataclasses
import json
import math
import os

import pytest

from umec_torchrec.bench.latency_quality import LatencyQualityConfig, auc_at_speedup, compare, run_latency_quality
from umec_torchrec.bench.quality.config import QualityConfig
from umec_torchrec.export.calibrate import CalibrationOptions


def test_auc_at_speedup_is_linear_in_log_speedup_and_never_extrapolates():
    """Constructed curve: halfway in log between 2x and 8x is 4x."""
    pts = [(8.0, 0.60), (2.0, 0.70)]
    assert auc_at_speedup(pts, 4.0) == pytest.approx(0.65)
    assert auc_at_speedup(pts, 2.0) == pytest.approx(0.70)
    assert auc_at_speedup(pts, 8.0) == pytest.approx(0.60)
    assert auc_at_speedup(pts, 1.5) is None and auc_at_speedup(pts, 9.0) is None
    assert auc_at_speedup([(2.0, 0.7), (2.0, 0.5), (4.0, 0.4)], 2.0) == pytest.approx(0.6)  # ties averaged
    assert auc_at_speedup([], 1.0) is None


def test_compare_pairs_each_latency_model_with_its_own_seeds_curve():
    """Constructed rows: seed 0's latency model beats its curve by 0.01, seed 1's loses by
    0.02 against its own (different) curve; a model faster than every FLOPs model is outside."""
    rows = [
        {"seed": 0, "resource": "flops", "budget": 0.5, "speedup": 2.0, "auc": 0.70},
        {"seed": 0, "resource": "flops", "budget": 0.1, "speedup": 8.0, "auc": 0.60},
        {"seed": 0, "resource": "latency", "budget": 0.3, "speedup": 4.0, "auc": 0.66},
        {"seed": 1, "resource": "flops", "budget": 0.5, "speedup": 2.0, "auc": 0.80},
        {"seed": 1, "resource": "flops", "budget": 0.1, "speedup": 8.0, "auc": 0.80},
        {"seed": 1, "resource": "latency", "budget": 0.3, "speedup": 4.0, "auc": 0.78},
        {"seed": 1, "resource": "latency", "budget": 0.1, "speedup": 9.0, "auc": 0.78},
    ]
    c = {x["budget"]: x for x in compare(rows)}
    assert [p["delta"] for p in c[0.3]["pairs"]] == pytest.approx([0.01, -0.02])
    assert c[0.3]["mean_delta"] == pytest.approx(-0.005) and c[0.3]["wins"] == 1 and not c[0.3]["met"]
    assert c[0.1]["outside"] == 1 and c[0.1]["n"] == 0 and math.isnan(c[0.1]["mean_delta"]) and not c[0.1]["met"]
    fast = c[0.1]["pairs"][0]
    assert fast["faster_than_flops"] and fast["delta_vs_fastest_flops"] == pytest.approx(-0.02)
    assert not c[0.3]["pairs"][0]["faster_than_flops"]


def test_tiny_run_meets_each_budget_and_writes_the_report(tmp_path):
    """Generated click log (3,000 rows), one seed, a quick calibration: every model meets its
    own budget (latency fraction for latency=, FLOPs fraction for flops=), every program was
    timed, and the report files are written."""
    q = dataclasses.replace(QualityConfig(), data="clicklog:seed=1,rows=3000", seeds=1)
    cfg = LatencyQualityConfig(quality=q, latency_budgets=[0.8], flops_budgets=[0.9, 0.3], batch=2048, rounds=2,
                               calibration=CalibrationOptions(quick=True))
    res = run_latency_quality(cfg, str(tmp_path), log=lambda m: None)
    rows = res["rows"]
    assert sorted(r["label"] for r in rows) == ["flops=0.3", "flops=0.9", "latency=0.8"]
    for r in rows:
        frac = r["latency_fraction"] if r["resource"] == "latency" else r["flops_fraction"]
        assert frac <= r["budget"] + 1e-9, r
        assert r["speedup"] > 0 and r["measured_s"] > 0 and 0.5 <= r["auc"] <= 1.0
    assert len(res["comparison"]) == 1 and res["comparison"][0]["budget"] == 0.8
    for name in ("latency_quality.md", "latency_quality.json", "LATENCY.json"):
        assert os.path.getsize(tmp_path / name) > 0
    assert json.loads((tmp_path / "latency_quality.json").read_text())["config"]["batch"] == 2048
