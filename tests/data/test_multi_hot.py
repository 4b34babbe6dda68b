"""Multi-hot fields (issue 13, section 2): csv list columns and DLRM-v2-style multi-hot from
Criteo ids are read as jagged ids, prepared into memory-mapped values + offsets that give
exactly what ``load_data`` gives, batched into KJTs with their lengths, pooled by the
table's pooling, dropped by the feature mask, and compressed and fine-tuned end to end.

Every test uses generated data (small files written to ``tmp_path`` by
:mod:`umec_torchrec.data.testing`).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from umec_torchrec.data import load_data
from umec_torchrec.data import testing as T
from umec_torchrec.data.delimited import read_delimited
from umec_torchrec.data.prepared import prepare_data
from umec_torchrec.data.vocab import hash_strings

SPLITS = ("train", "valid", "test")


def _csv_spec(tmp_path, rows=60, seed=0, signal=False, extra=""):
    p = T.write_multi_hot_csv(tmp_path / f"mh{seed}.csv", rows=rows, seed=seed, signal=signal)
    return f"csv:{p},{T.MULTI_HOT_SCHEMA}" + (f",{extra}" if extra else "")


def _same(a, b) -> None:
    """Bundle ``b`` holds exactly ``a``'s rows, ids (one-hot and multi-hot), vocabulary and split."""
    assert a.feature_names == b.feature_names and a.table_sizes == b.table_sizes
    for s in SPLITS:
        x, y = getattr(a, s), getattr(b, s)
        assert len(x) == len(y) and torch.equal(x.dense, y.dense) and torch.equal(x.labels, y.labels), s
        assert sorted(x.multi_hot) == sorted(y.multi_hot) and x.multi_hot, s
        one = [j for j, f in enumerate(x.feature_names) if f not in x.multi_hot]
        assert torch.equal(x.sparse[:, one], y.sparse[torch.arange(len(y))][:, one]), s
        for f in x.multi_hot:
            p, q = x.multi_hot[f], y.multi_hot[f]
            assert np.array_equal(p.offsets, q.offsets), (s, f)
            assert np.array_equal(p.flat(), q.flat().astype(np.int64)), (s, f)
    assert all(np.array_equal(p, q) for p, q in zip(a.vocabulary.kept, b.vocabulary.kept))
    assert sorted(a.info["multi_hot"]) == sorted(b.info["multi_hot"])
    for f, v in a.info["multi_hot"].items():
        assert v["ids_per_sample"] == pytest.approx(b.info["multi_hot"][f]["ids_per_sample"])
    for key in ("vocab", "table_sizes", "rows", "split"):
        assert a.info[key] == b.info[key], key


def test_csv_list_columns_are_read_as_multi_hot(tmp_path):
    """Generated csv: a list column ``a|b|c`` gives each row its items' hashes in order; an empty
    item is dropped, an empty field has no id; the one-hot columns are unchanged."""
    spec = _csv_spec(tmp_path, rows=40)
    path = spec.split(",")[0][4:]
    raw = read_delimited(path, label="y", dense=["price"], categorical=["user", "tags", "item", "genres"],
                         multi_hot=["tags", "genres"])
    rows = list(csv.DictReader(open(path)))
    for col in ("tags", "genres"):
        want = [[v for v in r[col].split("|") if v] for r in rows]
        jag = raw.multi_hot[col]
        assert jag.lengths.tolist() == [len(w) for w in want]
        assert np.array_equal(jag.flat(), hash_strings([v for w in want for v in w]))
    assert (raw.multi_hot["tags"].lengths == 0).any() and any("||" in r["tags"] for r in rows)
    assert np.array_equal(raw.cats[:, 0], hash_strings([r["user"] for r in rows]))
    with pytest.raises(Exception, match="not categorical columns"):
        load_data(spec.replace("multi_hot=tags;genres", "multi_hot=price"))


@pytest.mark.parametrize("extra", ["min_count=2", "vocab=hash,hash_size=50,time_ordered=1"])
def test_prepared_multi_hot_equals_load_data_csv(tmp_path, extra):
    """Generated multi-hot csv: prepare (chunks of 7 rows, buckets of 16) gives load_data's rows,
    jagged ids, vocabulary and split; the manifest records each multi-hot feature's ids per split
    and the measured mean ids per training row."""
    spec = _csv_spec(tmp_path, rows=90, seed=1, extra=extra)
    a = load_data(spec)
    m = prepare_data(spec, str(tmp_path / "p"), chunk_rows=7, bucket_rows=16)
    b = load_data(f"prepared:{tmp_path / 'p'}")
    _same(a, b)
    for f in ("tags", "genres"):
        jag = a.train.multi_hot[f]
        assert m["multi_hot"][f]["ids_per_sample"] == pytest.approx(jag.nnz / len(a.train))
        assert m["multi_hot"][f]["nnz"] == {s: getattr(a, s).multi_hot[f].nnz for s in SPLITS}
        assert isinstance(b.train.multi_hot[f].values, np.memmap)
    assert a.train.ids_per_sample() == pytest.approx(b.train.ids_per_sample())


def test_dlrm_v2_multi_hot_from_criteo_ids(tmp_path):
    """Generated TorchRec day files with caps: ``multi_hot_sizes`` gives feature j ``k_j`` ids a
    row, the first the one-hot id, the others below the cap and a function of the id alone
    (equal ids bring equal lists, as DLRM-v2's per-id cache); a size of 1 stays one-hot; the
    prepared directory equals load_data, and so does a Criteo TSV's."""
    d = T.write_criteo_npy(tmp_path / "npy", days=(0,), rows_per_day=80, seed=2)
    sizes = [3, 1, 2] + [1] * 23
    base = f"criteo-npy:{d},num_embeddings_per_feature=40,vocab=identity,time_ordered=1"
    one = load_data(base)
    spec = base + ",multi_hot_sizes=" + ";".join(map(str, sizes))
    b = load_data(spec)
    assert sorted(b.train.multi_hot) == ["C1", "C3"]
    for f, k in (("C1", 3), ("C3", 2)):
        j = b.feature_names.index(f)
        jag = b.train.multi_hot[f]
        ids = jag.flat().reshape(-1, k)
        assert (jag.lengths == k).all() and ids.max() < 40 and ids.min() >= 0
        first = one.train.sparse[:, j].numpy()
        assert np.array_equal(ids[:, 0], first)
        for v in np.unique(first):  # a function of the id: equal ids, equal lists
            assert len({tuple(r) for r in ids[first == v]}) == 1
        assert len({tuple(r) for r in ids}) > 1
    assert torch.equal(b.train.sparse[:, 1], one.train.sparse[:, 1])
    prepare_data(spec, str(tmp_path / "p"), chunk_rows=9, bucket_rows=16)
    _same(b, load_data(f"prepared:{tmp_path / 'p'}"))
    tsv = f"criteo:{T.write_criteo_tsv(tmp_path / 'c.tsv.gz', rows=70, seed=3)},multi_hot_sizes=2,min_count=1"
    prepare_data(tsv, str(tmp_path / "q"), chunk_rows=8, bucket_rows=16)
    _same(load_data(tsv), load_data(f"prepared:{tmp_path / 'q'}"))


def test_batches_carry_lengths_and_tables_pool_sum_or_mean(tmp_path):
    """Generated multi-hot csv: a batch's KJT has each row's ids and lengths (memory-mapped or
    not), and the table's pooling from ModelConfig sums or averages the rows' embeddings (an
    empty row pools to zero)."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from umec_torchrec.models import ModelConfig, table_configs

    spec = _csv_spec(tmp_path, rows=80, seed=4)
    prepare_data(spec, str(tmp_path / "p"))
    for data in (load_data(spec).train, load_data(f"prepared:{tmp_path / 'p'}").train):
        idx = torch.tensor([5, 0, 3, 9, 2])
        kjt = data.make_batch(idx).sparse_features
        jt = kjt.to_dict()
        for f in ("tags", "genres"):
            part = data.multi_hot[f].take(idx)
            assert jt[f].lengths().tolist() == part.lengths.tolist()
            assert jt[f].values().tolist() == part.values.astype(np.int64).tolist()
        assert jt["user"].lengths().tolist() == [1] * 5
        assert jt["user"].values().tolist() == data.sparse[idx][:, 0].tolist()
    cfg = ModelConfig(kind="cat", feature_names=data.feature_names, table_sizes=data.table_sizes,
                      dense_in_features=1, embedding_dim=4, bottom=[4], top=[4, 1], pooling={"t_genres": "mean"})
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=table_configs(cfg))
    out = ebc(kjt).to_dict()
    w = {c.name: ebc.embedding_bags[c.name].weight for c in table_configs(cfg)}
    for f, how in (("tags", "sum"), ("genres", "mean")):
        rows = jt[f].to_dense()
        want = torch.stack([w[f"t_{f}"][r].sum(0) if how == "sum" or len(r) == 0 else w[f"t_{f}"][r].mean(0)
                            for r in rows])
        assert torch.allclose(out[f], want, atol=1e-6), f
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(kind="cat", feature_names=["a"], table_sizes=[3], dense_in_features=1, embedding_dim=4,
                    bottom=[4], top=[4, 1], pooling={"t_a": "max"})
    small = ModelConfig(kind="cat", feature_names=["a"], table_sizes=[3], dense_in_features=1, embedding_dim=4,
                        bottom=[4], top=[4, 1], pooling={"t_a": "mean", "t_b": "mean"}, ids_per_sample={"b": 2.0})
    assert small.pooling == {"t_a": "mean"} and small.ids_per_sample == {}  # a compact model's pruned ones go


def test_feature_mask_drops_a_multi_hot_feature(tmp_path):
    """Generated multi-hot csv: FeatureMask removes every id of a pruned multi-hot feature (its
    lengths become 0) and leaves the other features' ids and lengths as they were."""
    from umec_torchrec.umec.feature_mask import FeatureMask

    data = load_data(_csv_spec(tmp_path, rows=50, seed=5)).train
    batch = data.make_batch(torch.arange(12))
    masked = FeatureMask(["tags"])(batch).sparse_features.to_dict()
    before = batch.sparse_features.to_dict()
    assert int(before["tags"].lengths().sum()) > 0
    assert masked["tags"].lengths().tolist() == [0] * 12 and masked["tags"].values().numel() == 0
    for f in ("user", "item", "genres"):
        assert torch.equal(masked[f].values(), before[f].values()) and torch.equal(masked[f].lengths(),
                                                                                   before[f].lengths())


def test_compress_and_finetune_a_multi_hot_model(tmp_path):
    """Generated multi-hot csv with a planted signal in ``tags``: train, compress under a
    lookup_bytes budget (which counts the measured mean ids per sample of each multi-hot
    feature) and fine-tune, end to end on the multi-hot model with mean pooling."""
    from umec_torchrec.cli import main

    spec = _csv_spec(tmp_path, rows=1500, seed=6, signal=True, extra="min_count=1")
    d, c, f = (str(tmp_path / x) for x in ("d", "c", "fine"))
    assert main(["train", "--data", spec, "--bottom", "16,8", "--top", "16,1", "--embedding-dim", "8",
                 "--batch-size", "128", "--epochs", "1", "--out", d, "--no-progress"]) == 0
    cfg = json.load(open(os.path.join(d, "config.json")))
    ids = cfg["model"]["ids_per_sample"]
    train = load_data(spec).train
    assert ids == pytest.approx(train.ids_per_sample()) and sorted(ids) == ["genres", "tags"]
    assert main(["compress", "--from", d, "--budget", "lookup_bytes=0.5", "--out", c, "--no-progress"]) == 0
    m = json.load(open(os.path.join(c, "metrics.json")))
    lb = m["resources"]["lookup_bytes"]
    assert lb["dense"] == pytest.approx(8 * 4 * (1 + 1 + ids["tags"] + ids["genres"]))
    assert lb["value"] <= 0.5 * lb["dense"] + 1e-6
    assert main(["finetune", "--from", c, "--out", f, "--epochs", "1", "--no-progress"]) == 0
    mf = json.load(open(os.path.join(f, "metrics.json")))
    assert mf["resources"]["lookup_bytes"] == pytest.approx(lb) and 0.0 <= mf["test"]["auc"] <= 1.0


def test_libffm_fields_with_several_indices(tmp_path):
    """Generated libFFM file (``label field:idx:1 ...``, 0 to 3 tokens per field, fields out of
    order on the line): each field holds its indices in line order (none: an empty bag); the
    prepared directory equals load_data; a token outside the named fields names its line."""
    rng = np.random.default_rng(8)
    lines, want = [], {f: [] for f in ("a", "b", "c")}
    for _ in range(70):
        toks = [(int(rng.integers(3)), int(rng.integers(100 * (1 + k), 100 * (1 + k) + 20)))
                for k in range(int(rng.integers(0, 7)))]
        for k, f in enumerate(("a", "b", "c")):
            want[f].append([i for g, i in toks if g == k])
        lines.append(" ".join([str(int(rng.random() < 0.4))] + [f"{f}:{i}:1" for f, i in toks]))
    p = tmp_path / "d.ffm"
    p.write_text("\n".join(lines) + "\n")
    from umec_torchrec.data.libsvm import read_libsvm

    raw = read_libsvm(str(p), names=["a", "b", "c"], ffm=True)
    for f in ("a", "b", "c"):
        assert raw.multi_hot[f].lengths.tolist() == [len(w) for w in want[f]]
        assert raw.multi_hot[f].flat().tolist() == [i for w in want[f] for i in w]
    spec = f"libsvm:{p},ffm=1,names=a;b;c"
    prepare_data(spec, str(tmp_path / "p"), chunk_rows=9, bucket_rows=16)
    _same(load_data(spec), load_data(f"prepared:{tmp_path / 'p'}"))
    p.write_text("\n".join(lines[:3] + ["1 0:5:1 7:3:1"] + lines[3:]) + "\n")
    with pytest.raises(Exception, match=r"d\.ffm.*4.*field 7"):
        load_data(spec)


@pytest.mark.parametrize("kind", ["cat", "dot", "dcn"])
def test_compact_multi_hot_model_equals_the_masked_one(tmp_path, kind):
    """Generated multi-hot csv batches, a model with a mean-pooled and a sum-pooled multi-hot
    table: with a multi-hot feature and a quarter of every hidden layer pruned, the compact model
    (export's surgery, also what the compact finetune trains) gives the masked model's logits
    (pruned weights zeroed, pruned ids dropped by the feature mask) within 1e-5; the groups and
    the lookup bytes count the measured ids per sample."""
    from umec_torchrec.export import build_compact
    from umec_torchrec.models import build_dlrm
    from umec_torchrec.train.build import make_model_config
    from umec_torchrec.umec import FeatureMask, PruningMasks, apply_masks_, layout
    from umec_torchrec.umec.groups import discover_groups
    from umec_torchrec.umec.resources import make_resource, with_ids_per_sample

    data = load_data(_csv_spec(tmp_path, rows=200, seed=9)).train
    cfg = make_model_config(data, {"kind": kind, "embedding_dim": 8, "bottom": [16, 8], "top": [16, 8, 1],
                                   "pooling": {"t_genres": "mean"}})
    torch.manual_seed(0)
    dlrm = build_dlrm(cfg).eval()
    spec = with_ids_per_sample(discover_groups(dlrm), cfg.ids_per_sample)
    ids = data.ids_per_sample()
    assert spec.feature_names == ["user", "tags", "item", "genres"]
    assert make_resource("lookup_bytes", spec).dense_value() == pytest.approx(8 * 4 * (2 + ids["tags"] + ids["genres"]))
    g = torch.Generator().manual_seed(1)
    layers = {h.name: torch.randperm(h.width, generator=g)[: h.width - h.width // 4].tolist()
              for h in layout.hidden_layers(dlrm)}
    masks = PruningMasks(layout.feature_names(dlrm), ["user", "item", "genres"], layers,
                         {h.name: h.width for h in layout.hidden_layers(dlrm)})
    batch = data.make_batch(torch.arange(64))
    compact = build_compact(dlrm, cfg, masks)
    with torch.no_grad():
        apply_masks_(dlrm, masks)
        ref = dlrm(batch.dense_features, FeatureMask(masks.pruned_features)(batch.sparse_features)).squeeze(-1)
        got = compact(batch.dense_features, batch.sparse_features).squeeze(-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert float(ref.std()) > 1e-4
