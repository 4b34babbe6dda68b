"""``umec bench finetune`` on shrunk Kaggle tables (generated random ids): both arms run side by
side, the masks meet the FLOPs fraction with a third of the fields, and the compact arm holds
only the kept tables' bytes."""

from __future__ import annotations

from umec_torchrec.bench.finetune import bench_masks, run_finetune_bench
from umec_torchrec.bench.kaggle import KAGGLE_TABLE_SIZES, kaggle_model_config
from umec_torchrec.cli import main


def test_bench_masks_meet_the_flops_fraction_with_a_third_of_the_fields():
    """No data: every third feature kept; FLOPs at most 0.3 of dense and near it."""
    cfg = kaggle_model_config("cat", table_sizes=[min(s, 50) for s in KAGGLE_TABLE_SIZES])
    masks = bench_masks(cfg, 0.3)
    assert masks.kept_features == cfg.feature_names[::3] and len(masks.kept_features) == 9
    r = run_finetune_bench(rounds=2, batch_size=64, kind="cat", table_sizes=[min(s, 50) for s in KAGGLE_TABLE_SIZES])
    assert 0.25 < r["flops_fraction"] <= 0.3 + 1e-9
    assert r["kept_units"] == masks.kept_units()
    assert r["masked_step_ms"] > 0 and r["compact_step_ms"] > 0 and r["ratio_paired"] > 0
    rows = sum(min(s, 50) for s in KAGGLE_TABLE_SIZES[::3])
    assert r["compact_table_rows"] == rows
    assert rows * 16 * 4 <= r["compact_table_bytes"] < r["masked_table_bytes"]


def test_bench_finetune_command_registered(capsys):
    """The subcommand exists and documents its flags (no run)."""
    try:
        main(["bench", "finetune", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "--flops" in out and "--rounds" in out
