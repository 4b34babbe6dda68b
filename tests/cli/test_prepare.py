"""``umec prepare`` and the stages on ``--data prepared:DIR`` (issue 13, section 1): a stage on the
prepared directory gives exactly the run of the source spec (1 rank in-process, 2 gloo ranks
under torchrun); the run and the export carry the vocabulary, which maps the same raw ids to
the same rows after a restart; bad input is one line.

All data is generated (small Criteo TSV files of :mod:`umec_torchrec.data.testing`); no real data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from umec_torchrec import cli
from umec_torchrec.data import Vocabulary, load_data
from umec_torchrec.data import testing as T
from umec_torchrec.data.criteo import read_criteo_tsv
from umec_torchrec.runs import Run

SMALL = ["--embedding-dim", "8", "--bottom", "16,8", "--top", "16,1", "--batch-size", "64", "--no-progress",
         "--log-every", "0", "--steps", "4"]
TIMING = {"seconds", "steps_per_s", "samples_per_s", "wall_seconds"}
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _metrics(run) -> dict:
    m = json.load(open(os.path.join(run, "metrics.json")))
    m.pop("wall_seconds", None)
    m["train"] = {k: v for k, v in m["train"].items() if k not in TIMING}
    return m


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A generated 400-row Criteo file and its prepared directory (min_count=2)."""
    d = tmp_path_factory.mktemp("prep")
    f = T.write_criteo_tsv(d / "c.tsv.gz", rows=400, seed=7)
    assert cli.main(["prepare", "--data", f"criteo:{f}", "--min-count", "2", "--out", str(d / "p"),
                     "--chunk-rows", "50"]) == 0
    return d, f


def test_stages_on_prepared_data_equal_the_source_spec(src, tmp_path):
    """train / evaluate / compress on prepared:DIR give the metrics of the source spec; the runs and
    the export hold the vocabulary, and after a restart it maps raw hex ids to the data's rows."""
    d, f = src
    assert cli.main(["train", "--data", f"criteo:{f}", "--min-count", "2", *SMALL, "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["train", "--data", f"prepared:{d / 'p'}", *SMALL, "--out", str(tmp_path / "b")]) == 0
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert cli.main(["evaluate", str(tmp_path / "b")]) == 0
    assert cli.main(["compress", "--from", str(tmp_path / "b"), "--budget", "flops=0.5", "--steps", "2",
                     "--no-progress", "--out", str(tmp_path / "c")]) == 0
    assert cli.main(["export", "--from", str(tmp_path / "c"), "--out", str(tmp_path / "x")]) == 0

    bundle = load_data(f"criteo:{f},min_count=2")
    raw = read_criteo_tsv(str(f))
    want = bundle.vocabulary.encode(raw.cats)
    for where in (tmp_path / "a" / "vocabulary.npz", tmp_path / "b" / "vocabulary.npz",
                  tmp_path / "c" / "vocabulary.npz", tmp_path / "x" / "vocabulary.npz"):
        assert np.array_equal(Vocabulary.load(str(where)).encode(raw.cats), want), where
    voc = Run.open(str(tmp_path / "c")).vocabulary()  # a fresh process's view: read back from the run
    hexes = [line.split("\t")[14] for line in T.criteo_lines(400, seed=7)]  # C1
    vals = np.array([int(h, 16) if h else np.iinfo(np.int64).min for h in hexes], dtype=np.int64)
    assert np.array_equal(voc.encode_column("C1", vals), want[:, 0])
    man = json.load(open(tmp_path / "x" / "manifest.json"))
    assert man["vocabulary"]["file"] == "vocabulary.npz" and "vocabulary.npz" in man["files"]
    assert man["vocabulary"]["program_ids"] == man["features"]["kept"]
    assert man["vocabulary"]["mode"] == "min_count" and "criteo" in man["vocabulary"]["raw_values"]


def test_prepare_bad_input_is_one_line(tmp_path, capsys):
    """A bad line without --skip-bad-lines, no --data, an existing output: one line, exit 2."""
    f = T.write_criteo_tsv(tmp_path / "c.tsv", rows=30, replace={9: "0\tabc"})
    cases = [(["prepare", "--data", f"criteo:{f}", "--out", str(tmp_path / "p")], "line 9"),
             (["prepare", "--out", str(tmp_path / "p")], "--data"),
             (["prepare", "--data", f"criteo:{f}", "--out", str(tmp_path)], "already exists")]
    for argv, needle in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("umec: error: ") and needle in err[0], err
    assert not (tmp_path / "p").exists()
    assert cli.main(["prepare", "--data", f"criteo:{f}", "--skip-bad-lines", "--out", str(tmp_path / "p")]) == 0
    assert json.load(open(tmp_path / "p" / "manifest.json"))["bad_lines"] == 1


def test_two_gloo_ranks_on_prepared_data_equal_the_source_spec(src, tmp_path):
    """2 gloo ranks (torchrun): each rank maps the prepared directory and reads its half of every
    batch; the run equals the 2-rank run on the source spec."""
    d, f = src
    env = dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"])
    for name, data in (("a", ["--data", f"criteo:{f}", "--min-count", "2"]), ("b", ["--data", f"prepared:{d / 'p'}"])):
        cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
               "--rdzv_endpoint", "localhost:0", "-m", "umec_torchrec.cli", "train", *data, *SMALL,
               "--out", str(tmp_path / name)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert json.load(open(tmp_path / "b" / "config.json"))["world_size"] == 2


def test_prepare_flag_defaults_are_the_library_defaults():
    """No data: every data flag of ``umec prepare`` defaults to DataOptions' field, --chunk-rows to
    prepare_data's chunk_rows."""
    import argparse
    import dataclasses
    import inspect

    from umec_torchrec.data import DataOptions
    from umec_torchrec.data.prepared import prepare_data

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices["prepare"]
    fields = {f.name: f.default for f in dataclasses.fields(DataOptions) if f.default is not dataclasses.MISSING}
    flags = {a.dest: a.default for a in p._actions if a.option_strings and a.dest != "help"}
    checked = [k for k in flags if k in fields]
    assert len(checked) >= 8 and all(flags[k] == fields[k] for k in checked), {k: (flags[k], fields[k])
                                                                                for k in checked}
    params = inspect.signature(prepare_data).parameters
    assert flags["chunk_rows"] == params["chunk_rows"].default and flags["workers"] == params["workers"].default
