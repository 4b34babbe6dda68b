"""``umec bench scaling`` on tiny tables (generated random ids): both world sizes run, plain
and UMEC figures are reported side by side; it refuses to run under torchrun."""

from __future__ import annotations

import pytest

from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES
from umec_torchrec.bench.scaling import format_table, run_scaling_bench


def test_scaling_bench_reports_one_and_two_ranks_plain_and_umec():
    res = run_scaling_bench([1, 2], steps=2, warmup=1, batch_size=64, max_table_rows=200)
    assert [r["world_size"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["plain_samples_per_s"] > 0 and r["umec_samples_per_s"] > 0
        assert r["umec_over_plain"] == pytest.approx(r["umec_samples_per_s"] / r["plain_samples_per_s"])
    assert res["rows"][0]["plain_speedup"] == 1.0
    assert res["table_rows"] == sum(min(s, 200) for s in KAGGLE_TABLE_SIZES)
    table = format_table(res).splitlines()
    assert "plain samples/s" in table[0] and "UMEC samples/s" in table[0] and len(table) == 3


def test_scaling_bench_refuses_to_run_inside_a_launched_job(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="launches its own ranks"):
        run_scaling_bench([1, 2], steps=1)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="does not divide"):
        run_scaling_bench([1, 3], steps=1, batch_size=64)
