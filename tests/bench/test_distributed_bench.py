"""``umec bench scaling`` on tiny tables (generated random ids): both world sizes run, plain
and UMEC figures are reported side by side; the throughput arithmetic gives the known ratios
on made-up timings; it refuses to run under torchrun."""

from __future__ import annotations

import pytest

from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES
from umec_torchrec.bench.scaling import format_table, run_scaling_bench, scaling_rows


def test_scaling_bench_reports_one_and_two_ranks_plain_and_umec():
    res = run_scaling_bench([1, 2], steps=2, warmup=1, batch_size=64, max_table_rows=200)
    assert [r["world_size"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["plain_samples_per_s"] > 0 and r["umec_samples_per_s"] > 0 and r["threads_per_rank"] >= 1
    assert res["table_rows"] == sum(min(s, 200) for s in KAGGLE_TABLE_SIZES)
    table = format_table(res).splitlines()
    assert "plain samples/s" in table[0] and "UMEC samples/s" in table[0] and len(table) == 3


def test_scaling_rows_on_known_timings():
    """Made-up timings (no run): 10 steps of a global batch of 100 in 2 s is 500 samples/s."""
    t = {"threads_per_rank": 1, "device": "cpu", "build_s": 0.1}
    rows = scaling_rows([{"world_size": 1, "plain_s": 2.0, "umec_s": 4.0, **t},
                         {"world_size": 2, "plain_s": 1.0, "umec_s": 2.5, **t}], steps=10, batch_size=100)
    assert [r["plain_samples_per_s"] for r in rows] == pytest.approx([500.0, 1000.0])
    assert [r["umec_samples_per_s"] for r in rows] == pytest.approx([250.0, 400.0])
    assert [r["umec_over_plain"] for r in rows] == pytest.approx([0.5, 0.4])
    assert [r["plain_speedup"] for r in rows] == pytest.approx([1.0, 2.0])
    assert [r["umec_speedup"] for r in rows] == pytest.approx([1.0, 1.6])
    assert [r["build_seconds"] for r in rows] == [0.1, 0.1]
    table = format_table({"rows": rows}).splitlines()
    assert table[2].split() == ["2", "1", "1000", "400", "0.400", "2.00x", "1.60x"]


def test_scaling_bench_refuses_to_run_inside_a_launched_job(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="launches its own ranks"):
        run_scaling_bench([1, 2], steps=1)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="does not divide"):
        run_scaling_bench([1, 3], steps=1, batch_size=64)
