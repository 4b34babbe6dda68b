"""``umec bench quality`` end to end on a tiny GENERATED dataset (synthetic spec), and the
paired differences (taken over the same seeds). No real data."""

from __future__ import annotations

import csv
import math

import pytest

from umec_torchrec.bench.quality import (
    CSV_FIELDS,
    METHODS,
    QualityConfig,
    format_markdown,
    paired_differences,
    summarize,
)
from umec_torchrec.cli import main

TINY = "synthetic:rows=1200,seed=1,n_sparse=5,signal_sparse=3"


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_quality_end_to_end_writes_csv_markdown_png(tmp_path):
    out = tmp_path / "q"
    rc = main(["bench", "quality", "--data", TINY, "--budgets", "0.5,0.2", "--seeds", "2",
               "--methods", ",".join(METHODS), "--bottom", "16,8", "--embedding-dim", "8", "--top", "16,8,1",
               "--batch-size", "64", "--min-count", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = _read_csv(out / "quality.csv")
    assert list(rows[0].keys()) == CSV_FIELDS
    # per seed: dense + dense_ft + every method at every budget
    assert len(rows) == 2 * (2 + len(METHODS) * 2)
    for r in rows:
        for k in ("auc", "log_loss", "accuracy", "flops_fraction"):
            assert math.isfinite(float(r[k])), (k, r)
        assert 0.0 <= float(r["auc"]) <= 1.0
        if r["method"] in METHODS:
            assert float(r["flops_fraction"]) <= float(r["budget"]) + 1e-6  # every method meets the budget
            assert int(r["n_kept_features"]) == len(r["kept_features"].split(";"))
        if r["method"] == "uniform":
            assert int(r["n_kept_features"]) == 5
    assert {(r["method"], r["seed"]) for r in rows if r["budget"] == "0.2"} == {(m, s) for m in METHODS for s in "01"}
    md = (out / "quality.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | budget | AUC")
    assert len(table) == 1 + 2 + len(METHODS) * 2  # header + refs + method x budget
    assert all(line.count("|") == table[0].count("|") for line in table)
    mag = next(line for line in table if line.startswith("| magnitude | 0.2 |"))
    assert "±" in mag and "(2, " in mag  # paired over both seeds
    png = (out / "quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(str(out / "quality.png"))
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert (out / "quality.json").is_file()


def test_features_only_mode_skips_uniform_and_keeps_every_unit(tmp_path):
    out = tmp_path / "f"
    rc = main(["bench", "quality", "--data", TINY, "--budgets", "0.8", "--seeds", "1", "--features-only",
               "--methods", "umec,uniform,magnitude", "--bottom", "16,8", "--embedding-dim", "8", "--top", "16,8,1",
               "--batch-size", "64", "--min-count", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = _read_csv(out / "quality.csv")
    assert {r["method"] for r in rows} == {"dense", "dense_ft", "umec", "magnitude"}
    for r in rows:
        assert r["kept_units"] == ""  # no unit groups
        assert r["mode"] == "features"
        if r["method"] in ("umec", "magnitude"):
            assert float(r["flops_fraction"]) <= 0.8 + 1e-6
            assert int(r["n_kept_features"]) < 5


SMALL = ["--bottom", "16,8", "--embedding-dim", "8", "--top", "16,8,1", "--batch-size", "64", "--min-count", "1",
         "--no-progress", "--seeds", "1"]


@pytest.mark.parametrize("features_only", [False, True])
def test_loss_based_baselines_run_end_to_end_and_meet_the_budget(tmp_path, features_only):
    """Generated data: taylor, permutation and shark run in both modes and meet the budget."""
    out = tmp_path / "l"
    budget = 0.8 if features_only else 0.3
    rc = main(["bench", "quality", "--data", TINY, "--budgets", str(budget), "--methods", "taylor,permutation,shark",
               "--out", str(out)] + SMALL + (["--features-only"] if features_only else []))
    assert rc == 0
    rows = [r for r in _read_csv(out / "quality.csv") if r["method"] not in ("dense", "dense_ft")]
    assert sorted(r["method"] for r in rows) == ["permutation", "shark", "taylor"]
    for r in rows:
        assert float(r["flops_fraction"]) <= budget + 1e-6
        assert math.isfinite(float(r["auc"]))
        if features_only:
            assert int(r["n_kept_features"]) < 5 and r["kept_units"] == ""


def test_retrain_from_scratch_trains_the_kept_architecture_from_the_dense_init(tmp_path):
    """Generated data: with --retrain-from-scratch the same masks (magnitude's, chosen on the
    dense model) are trained from the dense model's init for the dense epochs: other
    weights, other AUC, as many steps as the dense model."""
    rows = {}
    for flag in ([], ["--retrain-from-scratch"]):
        out = tmp_path / ("s" if flag else "f")
        assert main(["bench", "quality", "--data", TINY, "--budgets", "0.3", "--methods", "magnitude,umec",
                     "--out", str(out)] + SMALL + flag) == 0
        rows[bool(flag)] = {r["method"]: r for r in _read_csv(out / "quality.csv")}
    ft, sc = rows[False], rows[True]
    assert ft["magnitude"]["kept_units"] == sc["magnitude"]["kept_units"]  # same selection
    assert ft["magnitude"]["kept_features"] == sc["magnitude"]["kept_features"]
    assert ft["magnitude"]["log_loss"] != sc["magnitude"]["log_loss"]
    assert int(sc["magnitude"]["train_steps"]) == int(sc["dense"]["train_steps"])
    assert int(ft["magnitude"]["train_steps"]) == 2 * int(ft["dense"]["train_steps"])  # C + F = 2 epochs
    assert float(sc["umec"]["flops_fraction"]) <= 0.3 + 1e-6
    assert ft["dense"]["auc"] == sc["dense"]["auc"]  # the dense model is not affected
    from umec_torchrec.bench.quality.command import config_from_args
    from umec_torchrec.cli import build_parser

    args = build_parser().parse_args(["bench", "quality", "--retrain-from-scratch"])
    assert config_from_args(args).retrain_from_scratch is True
    assert QualityConfig().retrain_from_scratch is False


def test_bench_quality_rejects_unknown_methods_and_bad_budgets(capsys):
    assert main(["bench", "quality", "--budgets", "0.5,1.5", "--data", TINY, "--out", "/nonexistent/x"]) == 2
    assert "budget 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "quality", "--methods", "umec,nope"])
    with pytest.raises(ValueError, match="unknown method"):
        QualityConfig(methods=["nope"]).validate()


def _r(method, seed, auc, budget=0.3):
    return {"method": method, "budget": budget, "seed": seed, "auc": auc, "log_loss": 0.5, "accuracy": 0.7,
            "flops_fraction": budget, "n_kept_features": 3, "embedding_bytes_fraction": 0.5}


def test_paired_differences_use_only_the_seeds_both_methods_have():
    rows = [_r("umec", 0, 0.70), _r("umec", 1, 0.72), _r("umec", 2, 0.74),
            _r("magnitude", 1, 0.73), _r("magnitude", 2, 0.73), _r("magnitude", 3, 0.99),
            _r("magnitude", 1, 0.10, budget=0.1)]
    d = paired_differences(rows, "magnitude", 0.3)
    assert d == pytest.approx([0.01, -0.01])  # seeds 1 and 2 only, in seed order
    summ = {(e["method"], e["budget"]): e for e in summarize(rows)}
    e = summ[("magnitude", 0.3)]
    assert e["d_auc_n"] == 2 and e["d_auc_wins"] == 1
    assert e["d_auc"][0] == pytest.approx(0.0) and e["d_auc"][1] == pytest.approx(0.01 * math.sqrt(2))
    assert summ[("magnitude", 0.1)]["d_auc_n"] == 0  # no UMEC row at that budget: no pairing
    md = format_markdown(QualityConfig(seeds=4), rows, 1.0)
    assert "| magnitude | 0.3 |" in md


def test_suite_quick_runs_end_to_end_on_generated_data(tmp_path):
    """``--suite --quick`` on GENERATED data (the clicklog family): one report with a row per
    item, budget and UMEC variant, and the field recovery at the signal budget."""
    import json

    out = tmp_path / "s"
    assert main(["bench", "quality", "--suite", "--quick", "--out", str(out), "--no-progress"]) == 0
    md = (out / "suite.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| clicklog0-")]
    rows = [line for line in table if line.count("|") == 10]
    # joint at 0.3; features at fields=0.25 and at the signal budget; umec and umec_auto each
    assert len(rows) == 2 * 3, md
    assert sum("(signal)" in line for line in rows) == 2 and sum("(fields=0.25)" in line for line in rows) == 2
    assert all("| magnitude |" in line and "/2 |" in line for line in rows)
    recovery = [line for line in table if line.count("|") == 6]
    assert {line.split("|")[3].strip() for line in recovery} == {"umec", "umec_auto", "magnitude"}
    assert "Total time" in md
    suite = json.loads((out / "suite.json").read_text())
    assert [it["name"] for it in suite["items"]] == ["clicklog0-joint", "clicklog0-features"]
    for it in suite["items"]:
        for r in it["rows"]:
            assert r["valid_auc"] is not None  # every row was also measured on the validation split
            if r["method"] == "umec_auto":  # chosen on validation, among the score kinds tried
                assert r["extra"]["score"] in r["extra"]["valid_auc_by_score"]
                by_score = r["extra"]["valid_auc_by_score"]
                assert by_score[r["extra"]["score"]] == max(by_score.values())
        sig = [r for r in it["rows"] if r.get("budget_label") == "signal"]
        assert all(r["n_kept_features"] <= 7 for r in sig)  # the budget fits exactly the 7 signal fields
    assert (out / "clicklog0-joint" / "quality.csv").is_file()


def test_suite_skips_real_data_items_when_the_files_are_absent(tmp_path):
    from umec_torchrec.bench.quality.suite import run_suite, suite_items

    items = suite_items(quick=False, data_root=str(tmp_path / "none"))
    names = [it.name for it in items]
    assert {"criteo-random-joint", "criteo-time-features", "frappe-joint", "clicklog2-features"} <= set(names)
    real = [it for it in items if it.needs is not None]
    res = run_suite(str(tmp_path / "o"), data_root=str(tmp_path / "none"), items=real, log=lambda m: None)
    assert all(r["skipped"] and not r["rows"] for r in res)
    md = (tmp_path / "o" / "suite.md").read_text()
    assert md.count("skipped (") == len(real)


def test_score_selection_ranks_kinds_on_validation_auc():
    """Constructed rows: the kind best on validation in most cells is chosen; test AUC (which
    favours another kind) plays no part; the Markdown names the choice."""
    from umec_torchrec.bench.quality.report import format_selection_markdown
    from umec_torchrec.bench.quality.statistics import score_selection

    def row(budget, seed, a, b, test_auc):
        return {"method": "umec_auto", "budget": budget, "seed": seed, "auc": test_auc,
                "extra": {"valid_auc_by_score": {"a": a, "b": b}}}

    results = [{"name": "x", "rows": [row(0.3, 0, 0.71, 0.70, 0.9), row(0.3, 1, 0.72, 0.69, 0.9),
                                      row(0.1, 0, 0.60, 0.65, 0.9)]},
               {"name": "y", "rows": [row(0.3, 0, 0.80, 0.79, 0.1), {"method": "magnitude", "budget": 0.3, "seed": 0}]}]
    sel = score_selection(results)
    assert sel["choice"] == "a" and sel["wins"] == {"a": 2, "b": 1}
    assert sel["mean_rank"]["a"] == pytest.approx(4 / 3) and len(sel["cells"]) == 3
    assert sel["cells"][0]["n"] in (1, 2) and sel["cells"][1]["auc"]["a"] == pytest.approx(0.715)
    assert "Choice: `a`" in format_selection_markdown(results, 60.0, "cmd")
