"""``umec bench inference`` with a latency model: latency= budgets give masks whose predicted
latency ratio meets the budget, every row at the calibrated batch carries predicted beside
measured times and per-call p50 / p99; mismatched batch sizes, missing tables and other
resources are refused. Generated Kaggle-shaped config with 50-row tables and random ids, and a
generated latency table (so the masks do not depend on this machine's timings); no timing is
asserted."""

from __future__ import annotations

import pytest

from umec_torchrec.bench.inference import (
    format_table,
    latency_masks,
    latency_target_lines,
    parse_bench_budgets,
    run_inference_bench,
    served_latency,
)
from umec_torchrec.bench.kaggle import kaggle_model_config
from umec_torchrec.export.compact import compact_config
from umec_torchrec.umec.latency import LatencyTable

SIZES = [50] * 26


@pytest.fixture(scope="module")
def table():
    """A generated table for the Kaggle shape at batch 512: Linear time 1e-9 * in * out + 5 us,
    1 us per lookup, 0.1 us per interaction input, 50 us per call."""
    ins = [13, 16, 32, 64, 128, 256, 432, 512]
    outs = [1, 16, 32, 64, 128, 256, 512]
    return LatencyTable(batch=512, align=16, embedding_dim=16, kind="cat", linear_in=ins, linear_out=outs,
                        linear_s=[[1e-9 * i * o + 5e-6 for o in outs] for i in ins],
                        lookup={"float32": {"rows": [10, 10**7], "seconds": [1e-6, 1e-6]}},
                        interaction_inputs=[2, 27], interaction_s=[2e-7, 2.7e-6], overhead_s=5e-5)


def test_latency_masks_meet_the_predicted_budget(table):
    cfg = kaggle_model_config(table_sizes=SIZES)
    full = served_latency(table, cfg)
    for b in (0.5, 0.3):
        masks, ratio = latency_masks(cfg, table, b)
        assert ratio <= b and ratio == pytest.approx(served_latency(table, compact_config(cfg, masks)) / full)
    with pytest.raises(ValueError, match="below the predicted latency of the smallest model"):
        latency_masks(cfg, table, 1e-6)


def test_bench_rows_carry_predicted_and_measured_times(table):
    res = run_inference_bench((512,), ["latency=0.4"], rounds=2, warmup=0, table_sizes=SIZES, latency_table=table)
    (row,) = res
    assert row["resource"] == "latency" and row["label"] == "latency=0.4" and row["budget"] == 0.4
    p = row["predicted"]
    assert p["compact_s"] / p["dense_s"] <= 0.4 + 1e-9 and p["speedup"] >= 1 / 0.4 - 1e-9
    assert p["compact_measured_over_predicted"] == pytest.approx(p["measured_compact_s"] / p["compact_s"])
    lat = row["call_latency_s"]["compact"]
    assert 0 < lat["p50"] <= lat["p99"]
    assert "meas/pred" in format_table(res).splitlines()[0]
    (line,) = latency_target_lines(res)
    assert line.startswith("target batch 512 latency=0.4: measured/predicted")


def test_bench_refuses_what_the_latency_model_cannot_predict(table):
    with pytest.raises(ValueError, match="calibrated at batch 512; latency budgets cannot be benched at batch 32"):
        run_inference_bench((32,), ["latency=0.5"], rounds=1, warmup=0, table_sizes=SIZES, latency_table=table)
    with pytest.raises(ValueError, match="latency budgets need a latency model"):
        run_inference_bench((512,), ["latency=0.5"], rounds=1, warmup=0, table_sizes=SIZES)
    lines = []  # a budget no model reaches (below the smallest model's prediction) is skipped, said so
    assert run_inference_bench((512,), ["latency=1e-6"], rounds=1, warmup=0, table_sizes=SIZES, latency_table=table,
                               log=lines.append) == []
    assert any("budget latency=1e-06: skipped, latency=1e-06: below the predicted latency" in s for s in lines)
    with pytest.raises(ValueError, match="only flops= and latency= budgets"):
        parse_bench_budgets(["lookup_bytes=0.5"])
    assert [str(b) for _, b in parse_bench_budgets([0.5, "0.3", "flops=0.2", "latency=abs:2ms"])] == [
        "flops=0.5", "flops=0.3", "flops=0.2", "latency=abs:0.002"]


def test_int8_rows_sit_beside_the_fp32_rows_with_predictions(table):
    """--dtypes fp32,int8: every budget gets an fp32 and an int8 row; the int8 row's masks meet
    the budget with int8 lookups priced (a generated int8 section 3x the fp32 one), its
    predictions use that section, and it carries the fp32 dense program's time beside its own
    dense and compact programs; a dtype the latency model lacks is refused naming it."""
    t8 = LatencyTable.from_dict(dict(table.to_dict(), lookup={
        "fp32": {"rows": [10, 10**7], "seconds": [1e-6, 1e-6]},
        "int8": {"rows": [10, 10**7], "seconds": [3e-6, 3e-6]}}), source="LAT8.json")
    res = run_inference_bench((512,), ["latency=0.4", "flops=0.5"], rounds=1, warmup=0, table_sizes=SIZES,
                              latency_table=t8, dtypes=("fp32", "int8"))
    assert [(r["label"], r["dtype"]) for r in res] == [("latency=0.4", "fp32"), ("latency=0.4", "int8"),
                                                       ("flops=0.5", "fp32"), ("flops=0.5", "int8")]
    cfg = kaggle_model_config(table_sizes=SIZES)
    for r in res:
        p = r["predicted"]
        assert p["dense_s"] == pytest.approx(served_latency(t8, cfg, dtype=r["dtype"]))
        assert p["compact_measured_over_predicted"] == pytest.approx(p["measured_compact_s"] / p["compact_s"])
        assert 0 < r["call_latency_s"]["compact"]["p50"] <= r["call_latency_s"]["compact"]["p99"]
        if r["resource"] == "latency":
            assert p["compact_s"] / p["dense_s"] <= 0.4 + 1e-9
        if r["dtype"] == "int8":
            assert r["masked_speedup"] is None and p["dense_fp32_s"] == pytest.approx(served_latency(t8, cfg))
            assert r["speedup_vs_fp32_dense"] == pytest.approx(p["measured_dense_fp32_s"] / p["measured_compact_s"])
    assert res[2]["kept_features"] == res[3]["kept_features"]  # a FLOPs budget's masks do not depend on the dtype
    assert res[3]["memory_ratio"] < res[2]["memory_ratio"]  # the same model with int8 rows
    assert " int8 " in format_table(res).splitlines()[2]
    assert any("(int8 tables): measured/predicted" in line for line in latency_target_lines(res))
    with pytest.raises(ValueError, match="LAT8.json: has no int4 lookups"):
        run_inference_bench((512,), ["flops=0.5"], rounds=1, warmup=0, table_sizes=SIZES, latency_table=t8,
                            dtypes=("fp32", "int4"))
