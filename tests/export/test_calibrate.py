"""``umec calibrate`` (export/calibrate.py): a small calibration (few widths, few repetitions,
tiny generated model config) runs in CI-sized time, its file round-trips and drives the
predictor; a file from another torch version, thread count or batch size is refused or warned
about, naming the difference; the command refuses to overwrite. Generated model configs and
random inputs only; no timing is asserted (only that times are positive and finite)."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch

from umec_torchrec.cli import main
from umec_torchrec.export.calibrate import (
    CalibrationOptions,
    calibrate,
    check_conditions,
    config_prediction,
    linear_grid,
    load_latency_table,
    save_latency_table,
)
from umec_torchrec.export.compact import compact_config
from umec_torchrec.io import write_json
from umec_torchrec.models import ModelConfig
from umec_torchrec.umec.latency import DTYPES, LatencyPredictor, using_latency_table
from umec_torchrec.umec.masks import PruningMasks

CFG = ModelConfig(kind="cat", feature_names=[f"f{i}" for i in range(4)], table_sizes=[5, 50, 500, 2000],
                  dense_in_features=3, embedding_dim=8, bottom=[32, 8], top=[24, 1])


@pytest.fixture(scope="module")
def table():
    return calibrate(CFG, CalibrationOptions(batch=32, quick=True, threads=1))


def test_small_calibration_covers_the_model_and_round_trips(table, tmp_path):
    assert table.batch == 32 and table.conditions["threads"] == 1 and table.conditions["torch"] == torch.__version__
    assert table.conditions["cpu"] and table.conditions["torchrec"]
    ins, outs = linear_grid(CFG, 16, quick=True)
    assert table.linear_in == ins and table.linear_out == outs
    assert 3 in ins and 5 * 8 in ins  # dense input; full interaction width (4 fields + dense) x D
    assert {1, 8} <= set(outs) and 32 in outs  # logit, D, the aligned hidden width 24 -> 32
    assert table.lookup["fp32"]["rows"][-1] == 2000 and table.interaction_inputs[-1] == 5
    flat = [v for row in table.linear_s for v in row] + table.interaction_s + table.lookup["fp32"]["seconds"]
    assert all(math.isfinite(v) and v > 0 for v in flat) and table.overhead_s >= 0
    assert table.raw["programs"] and table.raw["programs"][0]["measured_s"] > 0
    path = str(tmp_path / "LAT.json")
    save_latency_table(path, table)
    again = load_latency_table(path)
    assert again == table
    pred = config_prediction(again, CFG)
    assert pred["total"] == pytest.approx(sum(pred[k] for k in ("overhead", "linear", "lookup", "interaction")))
    # each dtype's classes are scaled to add up to the model's whole lookup step timed at once
    from umec_torchrec.umec.latency import monotone

    for d in DTYPES:
        scale = table.raw["lookup_scale"][d]
        raw = monotone(torch.tensor(table.raw["lookup"][d], dtype=torch.float64))
        assert torch.allclose(torch.tensor(table.lookup[d]["seconds"], dtype=torch.float64), scale * raw)
        whole = table.lookup_seconds(CFG.table_sizes, dtypes=[d] * 4).sum()
        assert float(whole) == pytest.approx(table.raw["model_lookup_s"][d], rel=1e-9)
    # least squares over the reference programs (dense fp32 and the dense program per other
    # dtype, tables capped at 1000 rows): with a positive intercept and slope (not the noisy
    # cases refitted through the origin or with factor 1) the residuals sum to zero
    progs = table.raw["programs"]
    assert [p["dtype"] for p in progs] == list(DTYPES)
    ref = dataclasses.replace(CFG, table_sizes=[5, 50, 500, 1000])
    resid = [p["measured_s"] - config_prediction(again, ref, p["dtype"])["total"] for p in progs]
    assert (sum(resid) == pytest.approx(0.0, abs=1e-6 * sum(p["measured_s"] for p in progs))
            or table.overhead_s == 0 or table.program_factor == 1.0)


def test_fp32_only_calibration_fits_its_one_program():
    """With --dtypes fp32 (quick), the overhead is the dense program's residual, factor 1."""
    t = calibrate(CFG, CalibrationOptions(batch=16, quick=True, threads=1, reps=1, dtypes=("fp32",)))
    assert set(t.lookup) == {"fp32"} and t.program_factor == 1.0 and len(t.raw["programs"]) == 1
    ref = config_prediction(t, dataclasses.replace(CFG, table_sizes=[5, 50, 500, 1000]))
    assert ref["total"] == pytest.approx(t.raw["programs"][0]["measured_s"], rel=1e-6) or t.overhead_s == 0


def test_calibration_drives_the_resource_and_compact_programs_are_cheaper(table):
    """The calibrated table as the latency resource of a model of this config: the compact
    config (half the features, narrower layers) is predicted cheaper than the dense one."""
    masks = PruningMasks(list(CFG.feature_names), ["f0", "f1"], {"dense_arch.model._mlp.0": list(range(8)),
                                                                 "over_arch.model.0._mlp.0": list(range(6))},
                         {"dense_arch.model._mlp.0": 32, "over_arch.model.0._mlp.0": 24})
    small = compact_config(CFG, masks)
    assert config_prediction(table, small)["total"] < config_prediction(table, CFG)["total"]
    from umec_torchrec.models import build_dlrm
    from umec_torchrec.umec.groups import discover_groups

    spec = discover_groups(build_dlrm(CFG))
    with using_latency_table(table):
        pred = LatencyPredictor(spec, table)
        full = torch.tensor([[float(s.size) for s in spec.sets]])
        dense = float(pred(full, torch.ones(1, spec.feature_set.size))[0])
    unserved = config_prediction(table, CFG)
    assert dense <= unserved["total"] + 1e-12  # exact widths (24) never cost more than served ones (32)


def test_other_conditions_are_refused_or_warned_about(table):
    t = dataclasses.replace(table, conditions=dict(table.conditions, torch="1.0.0"))
    with pytest.raises(ValueError, match="LAT.json: calibrated with torch 1.0.0, this run has torch " +
                       torch.__version__.replace("+", r"\+")):
        check_conditions(t, "LAT.json", threads=1, batch=32)
    with pytest.raises(ValueError, match="calibrated with threads 1, this run has threads 2.*--threads 2"):
        check_conditions(table, "LAT.json", threads=2, batch=32)
    with pytest.raises(ValueError, match="calibrated with batch 32, this run has batch 4096.*--batch 4096"):
        check_conditions(table, "LAT.json", threads=1, batch=4096)
    warn = check_conditions(dataclasses.replace(table, conditions=dict(table.conditions, torchrec="0.1", cpu="Z80")),
                            "LAT.json", threads=1, batch=32)
    assert any("torchrec 0.1" in w for w in warn) and any("cpu Z80" in w for w in warn)
    assert check_conditions(table, "LAT.json", threads=1, batch=32) == []
    soft = check_conditions(t, "LAT.json", threads=2, batch=4096, strict=False)
    assert {w.split(" ")[3] for w in soft} == {"torch", "threads", "batch"}


def test_calibrate_command_writes_and_refuses_to_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_json(str(run / "config.json"), {"model": CFG.to_dict(), "data": {}})
    out = str(tmp_path / "LAT.json")
    rc = main(["calibrate", "--out", out, "--quick", "--batch", "16", "--threads", "1", "--reps", "1",
               "--model-like", str(run)])
    assert rc == 0 and "predicted at" in capsys.readouterr().out
    t = load_latency_table(out)
    assert t.batch == 16 and t.conditions["model_like"] == os.path.abspath(run) and t.conditions["reps"] == 1
    before = open(out).read()
    assert main(["calibrate", "--out", out, "--quick", "--model-like", str(run)]) == 2
    assert "LAT.json: exists; pass --force" in capsys.readouterr().err
    assert open(out).read() == before
    with open(out, "w") as f:
        json.dump(dict(json.loads(before), overhead_s=-1.0), f)
    with pytest.raises(ValueError, match="LAT.json: field 'overhead_s' must be a finite number >= 0"):
        load_latency_table(out)


def test_quick_calibration_with_dtypes_writes_those_sections(tmp_path, capsys):
    """``umec calibrate --quick --dtypes fp32,int8`` (CI-sized): exactly those lookup sections,
    each timed per size class, the dense int8 program among the fitted ones, and the dense
    program's prediction with int8 tables printed; bad --dtypes are refused naming the flag."""
    run = tmp_path / "run"
    run.mkdir()
    write_json(str(run / "config.json"), {"model": CFG.to_dict(), "data": {}})
    out = str(tmp_path / "LAT.json")
    assert main(["calibrate", "--out", out, "--quick", "--batch", "16", "--threads", "1", "--reps", "1",
                 "--dtypes", "fp32,int8", "--model-like", str(run)]) == 0
    assert "with int8 tables:" in capsys.readouterr().out
    t = load_latency_table(out)
    assert set(t.lookup) == {"fp32", "int8"} and t.conditions["dtypes"] == ["fp32", "int8"]
    assert t.lookup["int8"]["rows"] == t.lookup["fp32"]["rows"] and all(v > 0 for v in t.lookup["int8"]["seconds"])
    assert [p["program"] for p in t.raw["programs"]] == ["dense", "dense int8"]
    for bad in ("int8", "fp32,fp8", "fp32,fp32"):
        assert main(["calibrate", "--out", str(tmp_path / "B.json"), "--quick", "--dtypes", bad]) == 2
        err = capsys.readouterr().err
        assert "--dtypes must be distinct names among fp32, fp16, int8, int4, fp32 among them" in err


def test_manifest_prices_the_exported_dtypes(table, tmp_path):
    """Generated weights: an export with int8 tables (one int4) is predicted with those
    sections; with a calibration that lacks int4 the latency entry says so, naming int4 and
    the file, and the export itself succeeds."""
    from umec_torchrec.export import export_model
    from umec_torchrec.export.manifest import summary_lines
    from umec_torchrec.models import build_dlrm

    dense = build_dlrm(CFG).eval()
    masks = PruningMasks(list(CFG.feature_names), ["f0", "f2", "f3"], {"dense_arch.model._mlp.0": list(range(16)),
                                                                       "over_arch.model.0._mlp.0": list(range(16))},
                         {"dense_arch.model._mlp.0": 32, "over_arch.model.0._mlp.0": 24})
    with using_latency_table(table):
        man = export_model(dense, CFG, masks, str(tmp_path / "q"), dtype="int8", table_dtypes="largest:1=int4")
    lat = man["latency"]
    assert lat["compact_dtypes"] == {"f0": "int8", "f2": "int8", "f3": "int4"} and lat["dense_dtype"] == "fp32"
    served = dataclasses.replace(compact_config(CFG, masks), bottom=[16, 8], top=[16, 1])
    want = predict_program_of(table, served, ["int8", "int8", "int4"])
    assert lat["compact_s"] == pytest.approx(want)
    assert lat["dense_s"] == pytest.approx(config_prediction(table, CFG)["total"])
    path = str(tmp_path / "LAT8.json")
    save_latency_table(path, dataclasses.replace(table, lookup={d: table.lookup[d] for d in ("fp32", "int8")}))
    with using_latency_table(load_latency_table(path)):
        man = export_model(dense, CFG, masks, str(tmp_path / "q4"), dtype="int8", table_dtypes="largest:1=int4")
    assert man["latency"]["unavailable"].startswith(f"{path}: has no int4 lookups")
    assert any("predicted latency unavailable" in line for line in summary_lines(man, "q4"))


def predict_program_of(table, cfg: ModelConfig, dtypes) -> float:
    from umec_torchrec.umec.latency import predict_program

    return predict_program(table, cfg.kind, cfg.embedding_dim, cfg.dense_in_features, cfg.bottom, cfg.top,
                           cfg.table_sizes, served=False, dtypes=dtypes)["total"]


def test_overhead_fit():
    """Known answers: two programs on a line give its intercept and slope; a negative intercept
    is refitted through the origin; one program gives its residual with factor 1."""
    from umec_torchrec.export.calibrate import fit_overhead

    assert fit_overhead([1.0, 2.0, 4.0], [1.5, 2.7, 5.1]) == pytest.approx((0.3, 1.2))
    assert fit_overhead([1.0, 2.0], [0.5, 2.5]) == pytest.approx((0.0, 1.1))
    assert fit_overhead([1.0], [1.4]) == pytest.approx((0.4, 1.0))
    # programs of nearly the same pieces (quick: dense programs in several dtypes): no slope
    assert fit_overhead([1.0, 1.05], [1.3, 1.9]) == pytest.approx((0.575, 1.0))


def test_per_field_term_fit():
    """Known answers: programs on an exact plane give its intercept, slope and per-field term;
    too few programs, one number of fields, or a term that would make a kept field cost less
    than nothing fall back to the two-term fit with no per-field term."""
    from umec_torchrec.export.calibrate import fit_overhead, fit_program_terms

    pieces, fields = [1.0, 2.0, 4.0, 3.0, 2.5], [2, 4, 4, 2, 3]
    measured = [0.3 + 1.2 * p - 0.05 * n for p, n in zip(pieces, fields)]
    assert fit_program_terms(pieces, fields, measured, 0.5) == pytest.approx((0.3, 1.2, -0.05))
    assert fit_program_terms(pieces[:3], fields[:3], measured[:3], 0.5) == pytest.approx(
        (*fit_overhead(pieces[:3], measured[:3]), 0.0))
    assert fit_program_terms(pieces, [4] * 5, measured, 0.5)[2] == 0.0
    assert fit_program_terms(pieces, fields, measured, 0.01)[2] == 0.0  # -0.05 < -1.2 x 0.01


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="batch must be a positive integer, got 0"):
        CalibrationOptions(batch=0).validate()
    with pytest.raises(ValueError, match="clock 'cpu' times one thread: it needs threads 1, got 2"):
        CalibrationOptions(clock="cpu", threads=2).validate()
    with pytest.raises(ValueError, match="clock must be one of"):
        CalibrationOptions(clock="sundial").validate()


def test_cpu_clock_calibration_is_recorded_and_compared():
    """A quick calibration on the thread's CPU clock records it; comparing it with a wall-clock
    measurement is refused, naming both clocks."""
    t = calibrate(CFG, CalibrationOptions(batch=16, quick=True, reps=1, threads=1, clock="cpu"))
    assert t.conditions["clock"] == "cpu" and t.overhead_s >= 0
    with pytest.raises(ValueError, match="calibrated with clock cpu, this run has clock wall.*--clock wall"):
        check_conditions(t, "LAT.json", threads=1, batch=16, clock="wall")
    assert check_conditions(t, "LAT.json", threads=1, batch=16, clock="cpu") == []


def test_manifest_reports_predicted_latency_with_a_table(table, tmp_path):
    """Generated weights: an export made while a latency table is active records the predicted
    time of the dense and of the exported program at their served widths; without a table the
    section is null."""
    from umec_torchrec.export import export_model
    from umec_torchrec.export.manifest import summary_lines
    from umec_torchrec.models import build_dlrm

    dense = build_dlrm(CFG).eval()
    masks = PruningMasks(list(CFG.feature_names), ["f0", "f2"], {"dense_arch.model._mlp.0": list(range(10)),
                                                                 "over_arch.model.0._mlp.0": list(range(7))},
                         {"dense_arch.model._mlp.0": 32, "over_arch.model.0._mlp.0": 24})
    assert export_model(dense, CFG, masks, str(tmp_path / "plain"))["latency"] is None
    with using_latency_table(table):
        man = export_model(dense, CFG, masks, str(tmp_path / "exp"))
    lat = man["latency"]
    assert lat["batch"] == 32 and 0 < lat["compact_s"] < lat["dense_s"]
    assert lat["dense_s"] == pytest.approx(config_prediction(table, CFG)["total"])
    served = dataclasses.replace(compact_config(CFG, masks), bottom=[16, 8], top=[16, 1])  # 10 -> 16, 7 -> 16
    assert lat["compact_s"] == pytest.approx(config_prediction(table, served)["total"])
    assert any("predicted latency per batch of 32" in line for line in summary_lines(man, "exp"))


@pytest.fixture
def no_latency_table():
    """The CLI's --latency-model and --serve-dtype set a process-wide table and dtypes: cleared
    after the test."""
    from umec_torchrec.umec.latency import set_latency_table, set_serving_dtypes

    yield
    set_latency_table(None)
    set_serving_dtypes(None)


def test_latency_budget_end_to_end_on_the_command_line(tmp_path, capsys, no_latency_table):
    """Generated synthetic data: train, calibrate (quick, --model-like the run), compress under
    latency=0.6 with --latency-model, finetune and export with it: both metrics.json report the
    predicted latency within the budget, the manifest the predicted dense and exported program times; without
    --latency-model a latency budget is a one-line error."""
    dense, lat, c, e = (str(tmp_path / n) for n in ("dense", "LAT.json", "c", "e"))
    c8, e8 = str(tmp_path / "c8"), str(tmp_path / "e8")
    # wide enough layers and a large enough batch that the GEMMs, not the per-call overhead, dominate
    assert main(["train", "--data", "synthetic:rows=2000,seed=1,min_count=2", "--bottom", "256,16",
                 "--top", "256,64,1", "--batch-size", "256", "--epochs", "1", "--out", dense, "--no-progress"]) == 0
    assert main(["calibrate", "--out", lat, "--quick", "--batch", "2048", "--threads", "1", "--reps", "2",
                 "--dtypes", "fp32,int8", "--model-like", dense]) == 0
    capsys.readouterr()
    assert main(["compress", "--from", dense, "--budget", "latency=0.6", "--out", c, "--no-progress",
                 "--score", "weight"]) == 2
    assert "latency budget needs a latency model: pass --latency-model" in capsys.readouterr().err
    assert main(["compress", "--from", dense, "--budget", "latency=0.6", "--latency-model", lat, "--out", c,
                 "--no-progress", "--score", "weight"]) == 0
    m = json.load(open(os.path.join(c, "metrics.json")))
    assert m["budgets"]["latency"] == 0.6 and m["resources"]["latency"]["fraction"] <= 0.6 + 1e-6
    assert 0 < m["resources"]["latency"]["value"] < m["resources"]["latency"]["dense"]
    f = str(tmp_path / "f")
    assert main(["finetune", "--from", c, "--out", f, "--steps", "2", "--no-progress", "--latency-model", lat]) == 0
    mf = json.load(open(os.path.join(f, "metrics.json")))  # the fine-tuned run reports it too
    assert mf["resources"]["latency"]["value"] == pytest.approx(m["resources"]["latency"]["value"])
    assert main(["export", "--from", c, "--out", e, "--latency-model", lat]) == 0
    assert "predicted latency per batch of 2048" in capsys.readouterr().out
    man = json.load(open(os.path.join(e, "manifest.json")))
    assert man["latency"]["batch"] == 2048 and 0 < man["latency"]["compact_s"] < man["latency"]["dense_s"]
    # served in int8: the budget is priced with int8 lookups, metrics.json says so, export too
    assert main(["compress", "--from", dense, "--budget", "latency=0.6", "--latency-model", lat, "--out", c8,
                 "--no-progress", "--score", "weight", "--serve-dtype", "int8"]) == 0
    m8 = json.load(open(os.path.join(c8, "metrics.json")))
    assert m8["resources"]["latency"]["fraction"] <= 0.6 + 1e-6
    serving = m8["latency_model"]["serving"]
    assert serving["dtype"] == "int8" and set(serving["tables"].values()) == {"int8"}
    assert m8["latency_model"]["calibration"]["file"] == lat
    assert m["latency_model"]["serving"]["dtype"] == "fp32"
    assert main(["export", "--from", c8, "--out", e8, "--latency-model", lat, "--dtype", "int8"]) == 0
    man8 = json.load(open(os.path.join(e8, "manifest.json")))
    assert set(man8["latency"]["compact_dtypes"].values()) == {"int8"}
    capsys.readouterr()
    assert main(["compress", "--from", dense, "--budget", "latency=0.6", "--latency-model", lat, "--out",
                 str(tmp_path / "c4"), "--no-progress", "--score", "weight", "--serve-dtype", "int4"]) == 2
    assert f"{lat}: has no int4 lookups" in capsys.readouterr().err
