"""Bad input to ``umec_torchrec.data``: every error names the file, the line and the field;
``skip_bad_lines`` skips, counts and reports. All tests use generated files in ``tmp_path``
(one uses the real Criteo sample, truncated, and skips when ``../shared/data`` is absent).
"""

from __future__ import annotations

import pickle

import pytest

from umec_torchrec.data import DataError, DataOptions, load_data
from umec_torchrec.data import testing as T


def _criteo_line_with(field_index: int, value: str, seed: int = 0) -> str:
    parts = T.criteo_lines(1, seed)[0].split("\t")
    parts[field_index] = value
    return "\t".join(parts)


def _raises(spec, opts=None) -> DataError:
    with pytest.raises(DataError) as ei:
        load_data(spec, opts)
    return ei.value


CRITEO_CASES = [
    # (name, bad line, field, text in message)
    ("wrong_field_count_short", "\t".join(T.criteo_lines(1)[0].split("\t")[:39]), "C26", "expected 40"),
    ("wrong_field_count_long", T.criteo_lines(1)[0] + "\tabc", "#41", "got 41"),
    ("non_integer_count", _criteo_line_with(3, "x1"), "I3", "'x1' is not an integer"),
    ("float_count", _criteo_line_with(1, "1.5"), "I1", "'1.5' is not an integer"),
    ("non_hex_categorical", _criteo_line_with(20, "zz12abcd"), "C7", "'zz12abcd' is not a hex"),
    ("bad_label", _criteo_line_with(0, "2"), "label", "'2' is not a 0/1 label"),
    ("empty_label", _criteo_line_with(0, ""), "label", "not a 0/1 label"),
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,line,field,text", CRITEO_CASES, ids=[c[0] for c in CRITEO_CASES])
def test_criteo_bad_line_names_file_line_field(tmp_path, gz, name, line, field, text):
    """Generated Criteo TSV with one bad line 17: the error names file, line 17 and the field."""
    fname = "criteo_sample.tsv" + (".gz" if gz else "")
    p = T.write_criteo_tsv(tmp_path / fname, rows=30, replace={17: line})
    e = _raises(f"criteo:{p}")
    assert (e.path, e.line, e.field) == (str(p), 17, field)
    assert str(e).startswith(f"{fname} line 17, field {field}: ")
    assert text in str(e)


def test_error_message_format_and_pickle():
    """Generated (no file): DataError's documented str() form, ValueError subclass, picklable."""
    e = DataError("/d/criteo_sample.tsv.gz", 17, "I3", "'x1' is not an integer")
    assert str(e) == "criteo_sample.tsv.gz line 17, field I3: 'x1' is not an integer"
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.line, e2.field, str(e2)) == (e.path, e.line, e.field, str(e))


@pytest.mark.parametrize("name", ["empty.tsv", "empty.tsv.gz"])
def test_empty_file(tmp_path, name):
    """Generated empty file (plain and gzip): names the file and line 1."""
    p = tmp_path / name
    if name.endswith(".gz"):
        import gzip
        with gzip.open(p, "wt"):
            pass
    else:
        p.write_text("")
    for kind in ("criteo", "libsvm"):
        e = _raises(f"{kind}:{p}")
        assert e.path == str(p) and e.line == 1 and e.field is None
        assert str(e) == f"{name} line 1: empty file: no rows"
    e = _raises(f"csv:{p},label=y,categorical=u")
    assert e.path == str(p) and e.line == 1 and "empty" in str(e)


def test_truncated_gzip_generated(tmp_path):
    """Generated Criteo gzip cut in half: names the file and the line where reading stopped."""
    src = T.write_criteo_tsv(tmp_path / "full.tsv.gz", rows=2000, seed=3)
    p = T.truncate_file(src, tmp_path / "cut.tsv.gz", 0.5)
    e = _raises(f"criteo:{p}")
    assert e.path == str(p) and e.line is not None and 1 < e.line <= 2000 and e.field is None
    assert str(e).startswith(f"cut.tsv.gz line {e.line}: truncated gzip")
    # still an error with skip_bad_lines: a truncated file is not a bad line
    e2 = _raises(f"criteo:{p},skip_bad_lines=1")
    assert e2.line == e.line


def test_truncated_gzip_real(tmp_path, criteo_sample):
    """Real data (Criteo sample) truncated to 60%: error names file and a line inside it."""
    p = T.truncate_file(criteo_sample, tmp_path / "sample_cut.tsv.gz", 0.6)
    e = _raises(f"criteo:{p}")
    assert 1 < e.line < 19532 and "truncated gzip" in str(e)


def test_unknown_spec_and_missing_file(tmp_path):
    """Generated (no data): unknown prefix and missing files/dirs give DataErrors naming them."""
    e = _raises("parquet:/x/y.parquet")
    assert "parquet" in str(e) and e.path == "parquet:/x/y.parquet" and "unknown data source" in str(e)
    missing = tmp_path / "nope.tsv.gz"
    for kind in ("criteo", "libsvm"):
        e = _raises(f"{kind}:{missing}")
        assert e.path == str(missing) and "no such file" in str(e) and str(missing) in str(e)
    e = _raises(f"csv:{missing},label=y,categorical=u")
    assert e.path == str(missing)
    e = _raises(f"criteo-npy:{tmp_path / 'nodir'}")
    assert str(tmp_path / "nodir") in str(e)
    e = _raises("synthetic:rows=ten")
    assert e.field == "rows" and "'ten'" in str(e)
    e = _raises("synthetic:colour=red")
    assert e.field == "colour" and "unknown option" in str(e)
    e = _raises("criteo")
    assert "needs a path" in str(e)


def test_skip_bad_lines_counts(tmp_path):
    """Generated Criteo TSV with 3 bad lines: skip_bad_lines drops and counts them."""
    bad = {5: _criteo_line_with(3, "x"), 9: "1\t2", 12: _criteo_line_with(0, "-1")}
    p = T.write_criteo_tsv(tmp_path / "c.tsv.gz", rows=40, replace=bad)
    b = load_data(f"criteo:{p}", DataOptions(skip_bad_lines=True))
    assert b.info["bad_lines"] == 3
    assert b.info["rows"]["total"] == 37
    assert b.info["bad_line_examples"][0].startswith("c.tsv.gz line 5, field I3")
    with pytest.raises(DataError, match="line 5, field I3"):
        load_data(f"criteo:{p}")  # default: the first bad line raises


def test_skip_all_bad_lines_is_an_error(tmp_path):
    """Generated Criteo TSV whose lines are all bad: skipping leaves no rows -> DataError."""
    p = tmp_path / "allbad.tsv"
    p.write_text("a\tb\nc\td\n")
    e = _raises(f"criteo:{p},skip_bad_lines=1")
    assert "no valid rows (2 bad lines skipped)" in str(e)


LIBSVM_CASES = [
    ("bad_label", "2 0:1 5:1 12:1 15:1", "label", "'2' is not a 0/1 label"),
    ("wrong_count", "1 0:1 5:1 12:1", "f4", "got 3"),
    ("non_int_index", "1 0:1 x:1 12:1 15:1", "f2", "'x:1' is not an idx:value"),
    ("not_one_hot", "1 0:1 5:0.5 12:1 15:1", "f2", "one-hot value 1"),
]


@pytest.mark.parametrize("name,line,field,text", LIBSVM_CASES, ids=[c[0] for c in LIBSVM_CASES])
def test_libsvm_bad_lines(tmp_path, name, line, field, text):
    """Generated libsvm file with bad line 8: names file, line and field; skip counts it."""
    p = T.write_libsvm(tmp_path / "s.libsvm", rows=20, replace={8: line})
    e = _raises(f"libsvm:{p}")
    assert (e.path, e.line, e.field) == (str(p), 8, field) and text in str(e)
    b = load_data(f"libsvm:{p},skip_bad_lines=1")
    assert b.info["bad_lines"] == 1 and b.info["rows"]["total"] == 19


CSV_SCHEMA = "label=y,dense=price;age,categorical=user;item"
CSV_CASES = [
    ("wrong_field_count", "3,1,2.5,40", "user", "expected 6 fields"),
    ("bad_label", "3,yes,2.5,40,u1,item 1", "y", "'yes' is not a 0/1 label"),
    ("non_numeric_dense", "3,1,cheap,40,u1,item 1", "price", "'cheap' is not a number"),
]


@pytest.mark.parametrize("name,line,field,text", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_bad_lines(tmp_path, name, line, field, text):
    """Generated csv with bad line 6 (header is line 1): names file, line, field; skip counts."""
    p = T.write_csv(tmp_path / "logs.csv", rows=20, replace={6: line})
    e = _raises(f"csv:{p},{CSV_SCHEMA}")
    assert (e.path, e.line, e.field) == (str(p), 6, field) and text in str(e)
    b = load_data(f"csv:{p},{CSV_SCHEMA},skip_bad_lines=1")
    assert b.info["bad_lines"] == 1 and b.info["rows"]["total"] == 19


def test_csv_schema_errors(tmp_path):
    """Generated csv: a schema column absent from the header, and an empty schema."""
    p = T.write_csv(tmp_path / "logs.csv", rows=5)
    e = _raises(f"csv:{p},label=y,categorical=shop")
    assert (e.line, e.field) == (1, "shop") and "not in the header" in str(e)
    e = _raises(f"csv:{p},label=y")
    assert e.field == "categorical"


def test_csv_reports_first_bad_line_first(tmp_path):
    """Generated csv with a bad dense value on line 3 and a bad label on line 9: line 3 raises."""
    p = T.write_csv(tmp_path / "logs.csv", rows=20, replace={3: "1,1,abc,4,u,i", 9: "1,7,2,4,u,i"})
    e = _raises(f"csv:{p},{CSV_SCHEMA}")
    assert (e.line, e.field) == (3, "price")
    b = load_data(f"csv:{p},{CSV_SCHEMA},skip_bad_lines=1")
    assert b.info["bad_lines"] == 2


def test_npy_bad_label_and_shape(tmp_path):
    """Generated TorchRec .npy day files with a label 3 and a wrong sparse shape."""
    import numpy as np

    d = T.write_criteo_npy(tmp_path / "npy", days=(0,), rows_per_day=10)
    labels = np.load(d / "day_0_labels.npy")
    labels[4, 0] = 3
    np.save(d / "day_0_labels.npy", labels)
    e = _raises(f"criteo-npy:{d}")
    assert (e.path, e.line, e.field) == (str(d / "day_0_labels.npy"), 5, "label")
    np.save(d / "day_0_sparse.npy", np.zeros((10, 25), dtype=np.int64))
    e = _raises(f"criteo-npy:{d}")
    assert e.path == str(d / "day_0_sparse.npy") and "expected shape" in str(e)


def test_bad_options():
    """Generated (no data): invalid DataOptions values name the option."""
    for opts, field in [(DataOptions(test_fraction=1.5), "test_fraction"), (DataOptions(vocab="bpe"), "vocab"),
                        (DataOptions(min_count=0), "min_count"), (DataOptions(max_rows=0), "max_rows")]:
        e = _raises("synthetic:rows=100", opts)
        assert e.field == field
