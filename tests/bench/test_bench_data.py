"""``umec bench data`` (issue 13, section 3) on tiny generated Criteo files: the generator writes
valid lines, every figure is measured (prepare in a child, training on 1 rank and on 2 gloo
ranks under torchrun), and the ratios are those of the figures. Generated data only; no
timing is asserted."""

from __future__ import annotations

import pytest

from umec_torchrec.bench.data import ratios, run_data_bench, write_criteo_tsv_fast
from umec_torchrec.data import load_data


def test_generated_criteo_file_is_valid(tmp_path):
    """Generated data: the fast writer's lines parse with the Criteo reader, ids repeat (a vocabulary)."""
    f = write_criteo_tsv_fast(str(tmp_path / "g.tsv.gz"), 500, chunk_rows=120)
    b = load_data(f"criteo:{f},min_count=2")
    assert b.info["rows"]["total"] == 500 and b.info["bad_lines"] == 0
    assert 1 < min(b.table_sizes) and max(b.table_sizes) < 350
    f2 = write_criteo_tsv_fast(str(tmp_path / "g2.tsv.gz"), 301, workers=2)  # two gzip members, concatenated
    assert load_data(f"criteo:{f2}").info["rows"]["total"] == 301


def test_bench_data_measures_prepare_and_training(tmp_path):
    """Generated data (300 rows): prepare's peak RSS, per-rank samples/s, ceilings and data memory on
    1 and 2 ranks are measured, and the ratios are computed from them."""
    r = run_data_bench([300], ranks=[1, 2], steps=2, batch_size=32, warmup=1, workdir=str(tmp_path / "w"))
    rec = r["rows"][0]
    assert rec["rows"] == 300 and rec["prepare_peak_rss"] > 50 * 2**20 and rec["prepare_rows_per_s"] > 0
    assert [len(rec["train"][k]) for k in ("1", "2")] == [1, 2]
    for per in rec["train"].values():
        for x in per:
            assert x["samples_per_s"] > 0 and x["ceiling_samples_per_s"] > 0 and x["peak_rss"] > 50 * 2**20
            assert x["train_rows"] == 201 and x["data_peak"] >= 0
    q = r["ratios"]
    assert q["prepare_peak_rss_growth"] == 1.0
    one = rec["train"]["1"][0]
    assert q["train_vs_ceiling_1"] == pytest.approx(one["samples_per_s"] / one["ceiling_samples_per_s"])
    assert q == ratios(r["rows"])
    assert q["train_data_peak_growth_1"] == (1.0 if one["data_peak"] else None)  # one row count: no growth
    two = rec["train"]["2"]
    assert q["data_pss_2_vs_1"] == (pytest.approx(max(x["data_pss"] for x in two) / one["data_pss"])
                                    if one["data_pss"] else None)
    with pytest.raises(ValueError, match="divid"):
        run_data_bench([300], ranks=[3], batch_size=32)
