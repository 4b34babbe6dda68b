"""The clicklog family (:mod:`umec_torchrec.data.clicklog`) on GENERATED data: deterministic per
seed, a different signal set per seed, a known answer that a count statistic recovers, and a
pair of fields with joint but no marginal signal. No real data."""

from __future__ import annotations

import numpy as np
import pytest

from umec_torchrec.classification import roc_auc
from umec_torchrec.data.clicklog import generate_clicklog, load_clicklog, parse_clicklog_spec
from umec_torchrec.data.errors import DataError

ROWS = 20000


def _target_encoding_auc(col: np.ndarray, y: np.ndarray) -> float:
    """Per-id smoothed click rate fitted on the first half, AUC on the second half."""
    n = len(y) // 2
    _, inv = np.unique(col, return_inverse=True)
    k = int(inv.max()) + 1
    s = np.bincount(inv[:n], weights=y[:n], minlength=k)
    c = np.bincount(inv[:n], minlength=k)
    enc = (s + 10 * y[:n].mean()) / (c + 10)
    return roc_auc(enc[inv[n:]], y[n:])


@pytest.fixture(scope="module")
def logs():
    return {s: generate_clicklog(rows=ROWS, seed=s) for s in (0, 1, 2)}


def test_deterministic_per_seed(logs):
    again = generate_clicklog(rows=ROWS, seed=1)
    assert np.array_equal(again.sparse, logs[1].sparse) and np.array_equal(again.labels, logs[1].labels)
    assert np.array_equal(again.dense, logs[1].dense)
    assert again.info == logs[1].info


def test_seeds_draw_different_signal_sets_with_every_role(logs):
    sets = {s: tuple(d.info["signal_fields"]) for s, d in logs.items()}
    assert len(set(sets.values())) == 3
    for d in logs.values():
        roles = d.info["roles"]
        assert sorted(d.info["signal_fields"] + d.info["noise_fields"]) == sorted(d.feature_names)
        assert {"high_signal", "low_signal", "pair", "constant", "memorise"} <= set(roles.values())
        card = d.info["cardinalities"]
        for f, r in roles.items():
            j = d.feature_names.index(f)
            if r == "memorise":  # near-unique per row
                assert card[f] > 0.9 * ROWS
            if r == "constant":  # one value in ~95 % of rows
                top = np.unique(d.sparse[:, j], return_counts=True)[1].max() / ROWS
                assert 0.93 < top < 0.97
            if r == "low_signal":
                assert card[f] <= 12
            if r == "high_signal":
                assert card[f] >= 500
        assert 0 < len(d.info["signal_dense"]) < len(d.dense_names)


def test_a_count_statistic_finds_exactly_the_marginal_signal_fields(logs):
    for d in logs.values():
        y = d.labels.astype(np.float64)
        auc = {f: _target_encoding_auc(d.sparse[:, j], y) for j, f in enumerate(d.feature_names)}
        marginal = [f for f in d.info["signal_fields"] if f not in d.info["pair_fields"]]
        for f in marginal:
            assert auc[f] > 0.56, (f, d.info["roles"][f], auc[f])
        for f in d.info["noise_fields"] + d.info["pair_fields"]:
            assert abs(auc[f] - 0.5) < 0.025, (f, d.info["roles"][f], auc[f])
        # dense: the signal ones correlate with the label, the others not
        for i, name in enumerate(d.dense_names):
            r = abs(np.corrcoef(np.log1p(d.dense[:, i]), y)[0, 1])
            assert (r > 0.03) if name in d.info["signal_dense"] else (r < 0.03), (name, r)


def test_the_pair_carries_joint_signal_only(logs):
    for d in logs.values():
        a, b = (d.feature_names.index(f) for f in d.info["pair_fields"])
        y = d.labels.astype(np.float64)
        ia = np.unique(d.sparse[:, a], return_inverse=True)[1]
        ib = np.unique(d.sparse[:, b], return_inverse=True)[1]
        joint = ia * (int(ib.max()) + 1) + ib  # one id per (a, b) combination
        assert _target_encoding_auc(joint, y) > 0.62
        assert abs(_target_encoding_auc(d.sparse[:, a], y) - 0.5) < 0.025
        assert abs(_target_encoding_auc(d.sparse[:, b], y) - 0.5) < 0.025


def test_goes_through_the_common_split_and_keeps_the_answer():
    b = load_clicklog({"seed": 3, "rows": 2000})
    assert len(b.train) + len(b.valid) + len(b.test) == 2000
    assert len(b.valid) > 0 and b.info["split"]["kind"] == "random"
    assert b.info["signal_fields"] == generate_clicklog(rows=2000, seed=3).info["signal_fields"]
    p = parse_clicklog_spec("clicklog:seed=2,rows=500,valid_fraction=0.2")
    assert p == {"params": {"seed": 2, "rows": 500}, "options": {"valid_fraction": 0.2}}
    with pytest.raises(DataError, match="bogus"):
        parse_clicklog_spec("clicklog:seed=2,bogus=1")
    with pytest.raises(DataError, match="rows must be >= 100"):
        load_clicklog({"rows": 10})
