"""Readers, vocabulary, splits and the synthetic generator of ``umec_torchrec.data``.

Each test says whether it uses real data (``../shared/data``, skipped when absent) or
generated data (small files written to ``tmp_path`` or the synthetic generator).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from umec_torchrec.classification import roc_auc
from umec_torchrec.data import CTRData, DataBundle, DataError, DataOptions, load_data, parse_spec
from umec_torchrec.data import testing as T
from umec_torchrec.data.synthetic import generate

SCHEMA = "label=y,dense=price;age,categorical=user;item"


def _check_bundle(b: DataBundle) -> None:
    """Shared invariants: ids within table sizes, sizes recorded, batches keyed by features."""
    assert isinstance(b.train, CTRData) and isinstance(b.valid, CTRData) and isinstance(b.test, CTRData)
    assert b.train.table_sizes == b.valid.table_sizes == b.test.table_sizes == list(b.info["table_sizes"].values())
    assert list(b.info["table_sizes"]) == b.train.feature_names
    assert b.info["rows"]["total"] == len(b.train) + len(b.valid) + len(b.test)
    for part in (b.train, b.valid, b.test):
        assert part.sparse.dtype == torch.int64 and part.dense.dtype == torch.float32
        assert (part.sparse >= 0).all()
        assert (part.sparse < torch.tensor(part.table_sizes)).all()
        assert set(part.labels.unique().tolist()) <= {0.0, 1.0}
        assert torch.isfinite(part.dense).all() and (part.dense >= 0).all()
    batch = next(b.train.batches(8))
    assert batch.sparse_features.keys() == b.train.feature_names
    assert batch.dense_features.shape == (8, len(b.train.dense_names))
    json.loads(b.to_json())  # JSON-safe


# ---------------------------------------------------------------- spec grammar

def test_parse_spec_grammar():
    """Generated (spec strings only): kinds, paths, inline options and params."""
    s = parse_spec("synthetic:rows=5000,seed=3")
    assert (s.kind, s.path, s.params) == ("synthetic", None, {"rows": 5000, "seed": 3})
    s = parse_spec("csv:/x/logs.csv,label=y,dense=a;b,categorical=c;d,delimiter=tab,header=0,time_ordered=1")
    assert s.path == "/x/logs.csv"
    assert s.options == {"label": "y", "dense": ["a", "b"], "categorical": ["c", "d"], "delimiter": "\t",
                         "header": False, "time_ordered": True}
    s = parse_spec("criteo-npy:/d,days=0;2,vocab=hash,hash_size=100")
    assert s.params == {"days": [0, 2]} and s.options == {"vocab": "hash", "hash_size": 100}
    assert parse_spec("synthetic").params == {}


def test_inline_options_override_dataoptions():
    """Generated (synthetic): inline spec options win over the DataOptions argument."""
    b = load_data("synthetic:rows=400,test_fraction=0.5", DataOptions(test_fraction=0.1))
    assert b.info["rows"] == {"total": 400, "train": 160, "valid": 40, "test": 200}
    assert b.info["options"]["test_fraction"] == 0.5


# ---------------------------------------------------------------- Criteo TSV

@pytest.mark.parametrize("name", ["small.tsv", "small.tsv.gz"])
def test_criteo_tsv_plain_and_gzip(tmp_path, name):
    """Generated Criteo TSV (plain and gzip): 13 dense + 26 categorical, transform, missing."""
    p = T.write_criteo_tsv(tmp_path / name, rows=60, seed=1)
    b = load_data(f"criteo:{p}")
    _check_bundle(b)
    assert b.train.dense_names == [f"I{i}" for i in range(1, 14)]
    assert b.train.feature_names == [f"C{i}" for i in range(1, 27)]
    assert len(b.train) + len(b.valid) + len(b.test) == 60 and b.info["bad_lines"] == 0
    # dense transform log(1 + max(x, 0)), missing -> 0, against a direct parse of the file
    lines = T.criteo_lines(60, 1)
    raw = np.array([[float(v) if v else 0.0 for v in line.split("\t")[1:14]] for line in lines])
    expect = np.log1p(np.maximum(raw, 0)).astype(np.float32)
    rows = torch.cat([b.train.dense, b.valid.dense, b.test.dense]).numpy()
    order = np.lexsort(rows.T[::-1])
    order_e = np.lexsort(expect.T[::-1])
    np.testing.assert_allclose(rows[order], expect[order_e], rtol=1e-6)


def test_criteo_real_sample(criteo_sample):
    """Real data: the 19,532-row Criteo sample parses with zero bad lines and 26 tables."""
    b = load_data(f"criteo:{criteo_sample}", DataOptions(time_ordered=True))
    _check_bundle(b)
    assert b.info["rows"]["total"] == 19532 and b.info["bad_lines"] == 0
    assert len(b.train.table_sizes) == 26 and len(b.train.dense_names) == 13
    # README: C9 and C20 have 3 distinct values; the table adds an OOV row (and missing is a value)
    sizes = b.info["table_sizes"]
    assert sizes["C9"] <= 5 and sizes["C3"] > 5000
    assert abs(float(torch.cat([b.train.labels, b.valid.labels, b.test.labels]).mean()) - 0.238) < 0.005
    # time-ordered: the test split is the last 23% of the file
    assert len(b.test) == round(19532 * 0.23)


# ---------------------------------------------------------------- libsvm / Frappe

def test_libsvm_fields_from_position(tmp_path):
    """Generated libsvm file: fields recovered from column position, one 'none' dense column."""
    p = T.write_libsvm(tmp_path / "s.libsvm", rows=80, field_sizes=(5, 7, 3, 4))
    b = load_data(f"libsvm:{p},names=a;b;c;d")
    _check_bundle(b)
    assert b.train.feature_names == ["a", "b", "c", "d"]
    assert b.train.dense_names == ["none"] and (b.train.dense == 0).all()
    assert b.info["field_index_ranges"]["b"][0] >= 5 and b.info["field_index_ranges"]["b"][1] <= 11
    assert all(s <= n + 1 for s, n in zip(b.train.table_sizes, (5, 7, 3, 4)))


def test_frappe_real(frappe_sample):
    """Real data: Frappe parses into its 10 named fields with disjoint index ranges."""
    b = load_data(f"libsvm:{frappe_sample}")
    _check_bundle(b)
    assert b.train.feature_names == ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
                                     "weather", "country", "city"]
    assert b.info["rows"]["total"] == 57722 and b.info["bad_lines"] == 0
    ranges = list(b.info["field_index_ranges"].values())
    assert all(a[1] < b_[0] for a, b_ in zip(ranges, ranges[1:]))  # fields in order, disjoint
    assert ranges[-1][1] < 5382


# ---------------------------------------------------------------- csv with schema

def test_csv_schema_header(tmp_path):
    """Generated csv with a header: label/dense/categorical picked by name, missing age -> 0."""
    p = T.write_csv(tmp_path / "logs.csv", rows=50)
    b = load_data(f"csv:{p},{SCHEMA}")
    _check_bundle(b)
    assert b.train.dense_names == ["price", "age"] and b.train.feature_names == ["user", "item"]
    assert b.info["rows"]["total"] == 50
    lines = p.read_text().splitlines()[1:]
    n_missing_age = sum(1 for line in lines if line.split(",")[3] == "")
    assert n_missing_age > 0
    assert int((torch.cat([b.train.dense, b.valid.dense, b.test.dense])[:, 1] == 0).sum()) >= n_missing_age


def test_csv_no_header_gzip_tab(tmp_path):
    """Generated gzip TSV without header: columns by 0-based index, DataOptions schema."""
    p = T.write_csv(tmp_path / "logs.tsv.gz", rows=40, delimiter="\t", header=False)
    opts = DataOptions(label="1", dense=["2"], categorical=["4", "5"], delimiter="\t", header=False)
    b = load_data(f"csv:{p}", opts)
    _check_bundle(b)
    assert b.train.feature_names == ["col4", "col5"] and b.train.dense_names == ["col2"]


# ---------------------------------------------------------------- TorchRec criteo .npy

def test_criteo_npy_days(tmp_path):
    """Generated TorchRec-layout day_X_*.npy files: mmap read, max_rows over days, hashing."""
    d = T.write_criteo_npy(tmp_path / "npy", days=(0, 1), rows_per_day=40)
    b = load_data(f"criteo-npy:{d},max_rows=60,vocab=hash,hash_size=16,time_ordered=1")
    _check_bundle(b)
    assert b.info["rows"]["total"] == 60 and b.info["days"] == [0, 1]
    assert b.train.table_sizes == [16] * 26
    # dense already log-transformed by TorchRec: passed through unchanged
    dense0 = np.load(d / "day_0_dense.npy")
    np.testing.assert_array_equal(b.train.dense[:40].numpy(), dense0)
    b2 = load_data(f"criteo-npy:{d},days=1")
    assert b2.info["rows"]["total"] == 40


# ---------------------------------------------------------------- vocabulary

def test_vocab_min_count_and_oov(tmp_path):
    """Generated synthetic data: min_count shrinks tables; test ids unseen in train -> row 0."""
    b1 = load_data("synthetic:rows=3000,seed=1")
    b5 = load_data("synthetic:rows=3000,seed=1,min_count=5")
    _check_bundle(b1)
    _check_bundle(b5)
    assert all(a >= c for a, c in zip(b1.train.table_sizes, b5.train.table_sizes))
    assert sum(b1.train.table_sizes) > sum(b5.train.table_sizes)
    assert b5.info["vocab"] == {"mode": "min_count", "min_count": 5, "oov_row": 0}
    # with min_count=1 every train value has its own row (>0) except OOV none: row 0 unused in train
    voc = b1.vocabulary
    assert (b1.train.sparse > 0).all()
    # a test value unseen in train maps to OOV 0
    unseen = np.full((1, len(b1.feature_names)), 123456789123, dtype=np.int64)
    assert (voc.encode(unseen) == 0).all()
    assert (b1.test.sparse == 0).any()  # high-cardinality Zipf tails: some test ids unseen


def test_vocab_hash_mode():
    """Generated synthetic data: hash mode gives ids < hash_size and records it in info."""
    b = load_data("synthetic:rows=2000,vocab=hash,hash_size=64")
    _check_bundle(b)
    assert b.train.table_sizes == [64] * 26
    assert b.info["vocab"] == {"mode": "hash", "hash_size": 64}
    assert int(b.train.sparse.max()) < 64 and int(b.train.sparse.max()) > 32
    with pytest.raises(DataError, match="hash_size"):
        load_data("synthetic:rows=100,vocab=hash")


def test_vocab_built_on_train_only(tmp_path):
    """Generated Criteo TSV: a categorical value only in the (time-ordered) test rows -> OOV."""
    lines = T.criteo_lines(20, 0)
    parts = lines[-1].split("\t")
    parts[14] = "deadbeef"  # C1 of the last line: unique in the file
    p = T.write_criteo_tsv(tmp_path / "x.tsv", rows=20, replace={20: "\t".join(parts)})
    b = load_data(f"criteo:{p}", DataOptions(time_ordered=True, test_fraction=0.25))
    assert int(b.test.sparse[-1, 0]) == 0


# ---------------------------------------------------------------- splits

def test_splits_seeded_and_time_ordered():
    """Generated synthetic data: same split seed -> same split; time order keeps file order."""
    a = load_data("synthetic:rows=1000,split_seed=1")
    b = load_data("synthetic:rows=1000,split_seed=1")
    c = load_data("synthetic:rows=1000,split_seed=2")
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.sparse, b.test.sparse)
    assert not torch.equal(a.test.dense, c.test.dense)
    t = load_data("synthetic:rows=1000,time_ordered=1")
    raw = generate(rows=1000)
    assert torch.equal(t.train.labels, torch.from_numpy(raw.labels[:670]).float())
    assert torch.equal(t.valid.labels, torch.from_numpy(raw.labels[670:770]).float())
    assert torch.equal(t.test.labels, torch.from_numpy(raw.labels[770:]).float())
    assert t.info["split"]["time_ordered"] is True


# ---------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_ground_truth():
    """Generated synthetic data: same seed -> identical tensors, other seed differs, truth present."""
    a = load_data("synthetic:rows=2000,seed=7")
    b = load_data("synthetic:rows=2000,seed=7")
    c = load_data("synthetic:rows=2000,seed=8")
    for x, y in ((a.train, b.train), (a.valid, b.valid), (a.test, b.test)):
        assert torch.equal(x.dense, y.dense) and torch.equal(x.sparse, y.sparse) and torch.equal(x.labels, y.labels)
    assert not torch.equal(a.train.labels, c.train.labels)
    info = a.info
    assert len(info["signal_features"]) == 8 and len(info["signal_dense"]) == 4
    assert sorted(info["signal_features"] + info["noise_features"]) == sorted(a.feature_names)
    assert set(info["signal_dense"]).isdisjoint(info["noise_dense"])
    assert a.feature_names == [f"C{i}" for i in range(1, 27)] and a.dense_names == [f"I{i}" for i in range(1, 14)]
    cards = np.array(list(info["cardinalities"].values()))
    assert cards.max() / cards.min() >= 1000  # table sizes span orders of magnitude
    assert 0.15 < info["label_rate"] < 0.35 and info["bayes_auc"] > 0.85


def test_synthetic_default_rows_and_zipf():
    """Generated synthetic data: 20,000 rows by default; id frequencies are heavily skewed."""
    g = generate()
    assert g.sparse.shape == (20000, 26) and g.dense.shape == (20000, 13)
    big = max(g.info["cardinalities"], key=g.info["cardinalities"].get)
    j = g.feature_names.index(big)
    _, counts = np.unique(g.sparse[:, j], return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[0] > 50 * np.median(counts)  # Zipf head vs tail


def test_synthetic_signal_learnable():
    """Generated synthetic data: logistic regression on one-hot signal features -> AUC > 0.7,
    on noise features alone -> near 0.5."""
    b = load_data("synthetic:rows=20000,seed=0")

    def fit_auc(features):
        cols = [b.feature_names.index(f) for f in features]
        sizes = [b.train.table_sizes[c] for c in cols]
        offs = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        w = torch.zeros(int(sum(sizes)), requires_grad=True)  # one weight per one-hot id
        bias = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w, bias], lr=0.1)
        x_tr = b.train.sparse[:, cols] + offs
        for _ in range(80):
            logit = w[x_tr].sum(1) + bias
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, b.train.labels) + 1e-4 * w.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            s = w[b.test.sparse[:, cols] + offs].sum(1)
        return roc_auc(s.numpy(), b.test.labels.numpy())

    assert fit_auc(b.info["signal_features"]) > 0.7
    noise_small = [f for f in b.info["noise_features"] if b.info["cardinalities"][f] < 500]
    assert abs(fit_auc(noise_small) - 0.5) < 0.05


def test_roc_auc():
    """Generated numbers: rank AUC matches the pair-counting definition, with ties."""
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)
    y = rng.random(200) < 0.4
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert abs(roc_auc(s, y) - pairs) < 1e-12


def test_max_rows_and_skip_counts_in_info(tmp_path):
    """Generated Criteo TSV: max_rows caps the rows read."""
    p = T.write_criteo_tsv(tmp_path / "m.tsv", rows=100)
    b = load_data(f"criteo:{p},max_rows=30")
    assert b.info["rows"]["total"] == 30
