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


# --- issue 16, items 12, 14-17 ----------------------------------------------------------
def _utf8_reason(e: DataError) -> tuple:
    """``(byte in the line, file offset)`` from a not-UTF-8 DataError's message."""
    import re

    m = re.search(r"at byte (\d+) of the line \(byte offset (\d+) of the", str(e))
    assert m, str(e)
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("gz", [False, True])
def test_invalid_utf8_names_the_right_line_and_byte(tmp_path, gz, newline):
    """Generated csv (2000 rows, far more than one 8 KiB decoding chunk) with one invalid
    byte on line 1500 after a valid two-byte character: the error names line 1500, the
    byte inside the line and the offset in the (uncompressed) file, counted on the bytes."""
    import gzip

    lines = T.write_csv(tmp_path / "src.csv", rows=2000).read_text().splitlines()
    lines[1499] = "1499,1,2.5,40,u1,caf\u00e9 x"
    data = "".join(ln + newline for ln in lines).encode("utf-8")
    at = data.index("caf\u00e9 x".encode()) + len("caf\u00e9 ".encode())
    data = data[:at] + b"\xff" + data[at + 1:]  # 'x' -> 0xff: an invalid start byte
    line_start = data.rindex(b"\n", 0, at) + 1
    p = tmp_path / ("logs.csv.gz" if gz else "logs.csv")
    p.write_bytes(gzip.compress(data) if gz else data)
    # every reader (the criteo and libsvm readers skip the csv lines they cannot parse)
    for spec in (f"csv:{p},{CSV_SCHEMA}", f"criteo:{p},skip_bad_lines=1", f"libsvm:{p},skip_bad_lines=1"):
        e = _raises(spec)
        assert (e.path, e.line, e.field) == (str(p), 1500, None), (spec, str(e))
        assert "not UTF-8" in str(e) and "0xff" in str(e) and "invalid start byte" in str(e)
        assert _utf8_reason(e) == (at - line_start + 1, at), str(e)
        assert ("uncompressed" in str(e)) == gz
    # not a bad line: skipping cannot make the file text
    assert _raises(f"csv:{p},{CSV_SCHEMA},skip_bad_lines=1").line == 1500


def test_invalid_utf8_on_the_first_line(tmp_path):
    """Generated: a truncated 3-byte character at the very start (offset 0, byte 1)."""
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"\xe2\x82\n" + "".join(ln + "\n" for ln in T.criteo_lines(3)).encode())
    e = _raises(f"criteo:{p}")
    assert e.line == 1 and _utf8_reason(e) == (1, 0) and "0xe2" in str(e)


def test_csv_duplicate_column_names(tmp_path):
    """Generated csv whose header names 'user' twice (columns 5 and 6): a schema that uses
    'user' is refused naming the file, the column and both positions; a schema that does
    not use it reads the file."""
    lines = T.write_csv(tmp_path / "src.csv", rows=10).read_text().splitlines()
    lines[0] = "id,y,price,age,user,user"
    p = tmp_path / "dup.csv"
    p.write_text("\n".join(lines) + "\n")
    e = _raises(f"csv:{p},label=y,dense=price,categorical=user")
    assert (e.path, e.line, e.field) == (str(p), 1, "user")
    assert str(e).startswith("dup.csv line 1, field user: ")
    assert "columns 5 and 6" in str(e) and "twice" in str(e)
    lines[0] = "id,y,y,age,user,item"
    p.write_text("\n".join(lines) + "\n")
    assert _raises(f"csv:{p},label=y,categorical=user").field == "y"
    lines[0] = "id,y,price,age,user,age"  # a duplicate the schema does not use
    p.write_text("\n".join(lines) + "\n")
    b = load_data(f"csv:{p},label=y,dense=price,categorical=user")
    assert b.info["rows"]["total"] == 10


def test_csv_unterminated_quote_names_the_line_it_opened(tmp_path):
    """Generated csv (20 rows) with a quote opened on line 6 and never closed: the error
    names line 6 and the field, also with skip_bad_lines (the quote swallowed the rest)."""
    p = T.write_csv(tmp_path / "q.csv", rows=20, replace={6: '5,1,2.5,40,u1,"item 1'})
    e = _raises(f"csv:{p},{CSV_SCHEMA}")
    assert (e.path, e.line, e.field) == (str(p), 6, "item"), str(e)
    assert "unterminated quote" in str(e) and "line 21" in str(e)
    e = _raises(f"csv:{p},{CSV_SCHEMA},skip_bad_lines=1")
    assert e.line == 6 and "unterminated quote" in str(e)


def test_csv_quoted_field_spanning_lines(tmp_path):
    """Generated csv: a quote on line 6 closed on line 9 makes one record of lines 6-9;
    its wrong field count is reported at line 6 naming the span; a well-formed quoted
    value over two lines is read as one row."""
    p = T.write_csv(tmp_path / "q.csv", rows=20, replace={6: '5,1,2.5,40,u1,"item 1', 9: 'x",y'})
    e = _raises(f"csv:{p},{CSV_SCHEMA}")
    assert e.line == 6 and "from line 6 to line 9" in str(e), str(e)
    p = T.write_csv(tmp_path / "ok.csv", rows=20, replace={6: '5,1,2.5,40,u1,"item', 7: '1"'})
    b = load_data(f"csv:{p},{CSV_SCHEMA},skip_bad_lines=1")
    assert b.info["bad_lines"] == 0 and b.info["rows"]["total"] == 19
    p = T.write_csv(tmp_path / "bad.csv", rows=20, replace={6: '5,1,2.5,40,u1,"item', 7: '1"', 12: "1,7,2,4,u,i"})
    e = _raises(f"csv:{p},{CSV_SCHEMA}")
    assert (e.line, e.field) == (12, "y")  # lines after a multi-line record keep their numbers


BIG = "9" * 2_000_000


@pytest.mark.parametrize("spec,line,field", [
    ("criteo", _criteo_line_with(3, "x" + BIG), "I3"),
    ("criteo", _criteo_line_with(20, "z" + BIG), "C7"),
    ("criteo", _criteo_line_with(0, BIG), "label"),
    ("libsvm", f"1 0:1 x{BIG}:1 12:1 15:1", "f2"),
    ("libsvm", f"1 0:1 5:{BIG} 12:1 15:1", "f2"),
    ("libsvm", f"{BIG} 0:1 5:1 12:1 15:1", "label"),
    ("csv", f"3,1,x{BIG[:100_000]},40,u1,item 1", "price"),  # 100 kB: under the csv reader's field limit
    ("csv", f"3,{BIG[:100_000]},2.5,40,u1,item 1", "y"),
], ids=["criteo-int", "criteo-hex", "criteo-label", "libsvm-index", "libsvm-value", "libsvm-label", "csv-dense",
        "csv-label"])
def test_a_huge_bad_value_is_shown_truncated(tmp_path, spec, line, field):
    """Generated files with one 2 MB bad value on line 8: the message names the field,
    shows the value's start and its length, and stays short (one shared helper)."""
    if spec == "criteo":
        p = T.write_criteo_tsv(tmp_path / "c.tsv", rows=20, replace={8: line})
    elif spec == "libsvm":
        p = T.write_libsvm(tmp_path / "s.libsvm", rows=20, replace={8: line})
    else:
        p = T.write_csv(tmp_path / "logs.csv", rows=20, replace={8: line})
        spec = f"csv:{p},{CSV_SCHEMA}"
    e = _raises(spec if spec.startswith("csv:") else f"{spec}:{p}")
    assert (e.line, e.field) == (8, field), str(e)[:300]
    assert len(str(e)) < 300, str(e)[:300]
    assert "characters" in str(e) and ("99999" in str(e))


def test_csv_field_over_the_reader_limit(tmp_path):
    """Generated csv with a 2 MB field on line 8: one DataError naming line 8 (not the csv
    module's exception); skip_bad_lines skips that line only."""
    p = T.write_csv(tmp_path / "logs.csv", rows=20, replace={8: f"3,1,{BIG},40,u1,item 1"})
    e = _raises(f"csv:{p},{CSV_SCHEMA}")
    assert (e.path, e.line) == (str(p), 8) and "field limit" in str(e) and len(str(e)) < 300, str(e)[:300]
    b = load_data(f"csv:{p},{CSV_SCHEMA},skip_bad_lines=1")
    assert b.info["bad_lines"] == 1 and b.info["rows"]["total"] == 19


def test_shown_value_helper():
    """Generated strings: short values are repr'd whole, long ones cut with their length."""
    from umec_torchrec.data.errors import shown

    assert shown("x1") == "'x1'"
    s = shown("a" * 1000)
    assert s.startswith("'aaaa") and "1000 characters" in s and len(s) < 100


@pytest.mark.parametrize("token,text", [
    ("12345678901234567890:1", "out of range"),
    ("99999999999999999999999999:1.0", "out of range"),
])
def test_libsvm_huge_index_gets_the_right_reason(tmp_path, token, text):
    """Generated libsvm with a 20+-digit index on line 8: 'index out of range' naming the
    file, line, field and token, not 'one-hot value 1 expected'."""
    p = T.write_libsvm(tmp_path / "s.libsvm", rows=20, replace={8: f"1 0:1 {token} 12:1 15:1"})
    e = _raises(f"libsvm:{p}")
    assert (e.path, e.line, e.field) == (str(p), 8, "f2")
    assert text in str(e) and token.split(":")[0][:20] in str(e) and "one-hot" not in str(e), str(e)


def test_criteo_out_of_range_values_get_the_right_reason(tmp_path):
    """Generated Criteo TSV: a 20-digit count and a 17-digit hex id are out of range, not
    'not an integer' / 'not a hex categorical'."""
    p = T.write_criteo_tsv(tmp_path / "c.tsv", rows=20, replace={8: _criteo_line_with(3, "12345678901234567890")})
    e = _raises(f"criteo:{p}")
    assert (e.line, e.field) == (8, "I3") and "out of range" in str(e) and "not an integer" not in str(e), str(e)
    p = T.write_criteo_tsv(tmp_path / "c.tsv", rows=20, replace={8: _criteo_line_with(20, "1" * 17)})
    e = _raises(f"criteo:{p}")
    assert (e.line, e.field) == (8, "C7") and "out of range" in str(e) and "not a hex" not in str(e), str(e)
