"""Bad input, end to end through the ``umec`` command line: every case must exit non-zero
with exactly one stderr line ``umec: error: ...`` naming the problem, no traceback, and
leave every existing file untouched (the files under the test's root are hashed before and
after). Data: generated files (``umec_torchrec.data.testing``) and the built-in synthetic
generator; no real data. Reader-level details (field names, skip counts) are covered by
``tests/test_data_bad_input.py``; this suite checks what the user sees.

Unwritable output directories: the tests run as root, which ignores permission bits, so
an output whose parent is a regular file stands in for an unwritable directory (a
permission-bits case runs too when not root).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers.files import snapshot
from umec_torchrec import cli
from umec_torchrec.data import testing as T

SMALL = ["--embedding-dim", "8", "--bottom", "16,8", "--top", "16,1", "--batch-size", "128", "--no-progress",
         "--log-every", "0"]
DATA = "synthetic:rows=1500,seed=2,min_count=2"
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Existing runs (generated data): ``dense`` (trained, periodic checkpoints),
    ``other`` (another model), ``comp`` (compressed), plus bad data files."""
    r = tmp_path_factory.mktemp("bad")
    assert cli.main(["train", "--data", DATA, *SMALL, "--steps", "6", "--checkpoint-every", "3",
                     "--out", str(r / "dense")]) == 0
    assert cli.main(["train", "--data", DATA, *SMALL[:2], "--bottom", "32,8", *SMALL[4:], "--steps", "2",
                     "--out", str(r / "other")]) == 0
    assert cli.main(["compress", "--from", str(r / "dense"), "--budget", "flops=0.5", "--steps", "2",
                     "--no-progress", "--out", str(r / "comp")]) == 0
    return r


@pytest.fixture()
def check(root, capsys):
    """``check(argv, *needles, code=2)``: runs the CLI, asserts the failure contract."""

    def run(argv, *needles, code=2, new=None):
        capsys.readouterr()
        before = snapshot(root)
        rc = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == code, (argv, err)
        assert len(err) == 1 and err[0].startswith("umec: error: "), (argv, err)
        for n in needles:
            assert str(n) in err[0], (n, err[0])
        assert snapshot(root) == before, "existing files changed"
        if new is not None:
            assert not os.path.exists(new), f"{new} was created"
        return err[0]

    return run


def _criteo_line_with(i: int, value: str) -> str:
    parts = T.criteo_lines(1)[0].split("\t")
    parts[i] = value
    return "\t".join(parts)


BAD_LINES = [
    # (kind, bad line, text in the message)
    ("criteo", "\t".join(T.criteo_lines(1)[0].split("\t")[:39]), "line 7, field C26"),
    ("criteo", T.criteo_lines(1)[0] + "\tabc", "line 7, field #41"),
    ("criteo", _criteo_line_with(3, "x1"), "line 7, field I3: 'x1' is not an integer"),
    ("criteo", _criteo_line_with(20, "zz12abcd"), "line 7, field C7: 'zz12abcd' is not a hex"),
    ("criteo", _criteo_line_with(0, "2"), "line 7, field label: '2' is not a 0/1 label"),
    ("criteo", _criteo_line_with(0, ""), "line 7, field label"),
    ("libsvm", "2 0:1 5:1 12:1 15:1", "line 7, field label"),
    ("libsvm", "1 0:1 5:1 12:1", "line 7, field f4"),
    ("libsvm", "1 0:1 x:1 12:1 15:1", "line 7, field f2"),
    ("libsvm", "1 0:1 5:0.5 12:1 15:1", "line 7, field f2: "),
    ("csv", "3,1,2.5,40", "line 7, field user"),
    ("csv", "3,yes,2.5,40,u1,item 1", "line 7, field y"),
    ("csv", "3,1,cheap,40,u1,item 1", "line 7, field price: 'cheap' is not a number"),
]
CSV_SCHEMA = "label=y,dense=price;age,categorical=user;item"


@pytest.mark.parametrize("kind,line,text", BAD_LINES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_LINES)])
def test_malformed_data_lines(root, tmp_path, check, kind, line, text):
    """Generated files with one bad line 7, every kind of malformed line per format."""
    if kind == "criteo":
        p = T.write_criteo_tsv(tmp_path / "d.tsv", rows=30, replace={7: line})
        spec = f"criteo:{p}"
    elif kind == "libsvm":
        p = T.write_libsvm(tmp_path / "d.libsvm", rows=30, replace={7: line})
        spec = f"libsvm:{p}"
    else:
        p = T.write_csv(tmp_path / "d.csv", rows=30, replace={7: line})
        spec = f"csv:{p},{CSV_SCHEMA}"
    check(["train", "--data", spec, *SMALL, "--out", tmp_path / "r"], os.path.basename(p), text, new=tmp_path / "r")


def test_empty_and_truncated_files(root, tmp_path, check):
    """Generated empty files (plain, gzip) and a gzip cut in half."""
    (tmp_path / "e.tsv").write_text("")
    with gzip.open(tmp_path / "e.tsv.gz", "wt"):
        pass
    for spec in (f"criteo:{tmp_path / 'e.tsv'}", f"criteo:{tmp_path / 'e.tsv.gz'}", f"libsvm:{tmp_path / 'e.tsv'}",
                 f"csv:{tmp_path / 'e.tsv'},label=y,categorical=u"):
        check(["train", "--data", spec, *SMALL, "--out", tmp_path / "r"], "e.tsv", "empty", new=tmp_path / "r")
    src = T.write_criteo_tsv(tmp_path / "full.tsv.gz", rows=2000, seed=3)
    cut = T.truncate_file(src, tmp_path / "cut.tsv.gz", 0.5)
    check(["train", "--data", f"criteo:{cut}", *SMALL, "--out", tmp_path / "r"], "cut.tsv.gz", "truncated gzip",
          new=tmp_path / "r")


@pytest.mark.parametrize("spec,text", [
    ("parquet:/x/y.parquet", "unknown data source"),
    ("criteo", "needs a path"),
    ("criteo:/nonexistent/file.tsv", "/nonexistent/file.tsv"),
    ("synthetic:rows=ten", "'ten'"),
    ("synthetic:colour=red", "unknown option"),
    ("csv:/nonexistent.csv,label=y", "categorical"),
])
def test_unknown_or_bad_data_specs(root, tmp_path, check, spec, text):
    check(["train", "--data", spec, *SMALL, "--out", tmp_path / "r"], text, new=tmp_path / "r")


@pytest.mark.parametrize("budget,text", [
    ("flops=1.5", "(0, 1]"),
    ("flops=0", "(0, 1]"),
    ("flops=-0.2", "flops"),
    ("speed=0.5", "unknown resource"),
    ("flops", "flops"),
    ("flops=abc", "abc"),
    ("flops=0.00001", "below the smallest model"),
    ("embedding_bytes=abs:1B", "below the smallest model"),
])
def test_budgets_out_of_range_or_infeasible(root, tmp_path, check, budget, text):
    check(["compress", "--from", root / "dense", "--budget", budget, "--no-progress", "--out", tmp_path / "c"],
          text, new=tmp_path / "c")


def test_checkpoint_of_another_model(root, tmp_path, check):
    """A run whose checkpoint was replaced by another model's: compress and evaluate refuse
    it; resuming a run with another model's settings is refused before anything loads."""
    fake = tmp_path / "fake"
    shutil.copytree(root / "dense", fake)
    shutil.rmtree(fake / "checkpoint")
    shutil.copytree(root / "other" / "checkpoint", fake / "checkpoint")
    check(["compress", "--from", fake, "--budget", "flops=0.5", "--no-progress", "--out", tmp_path / "c"],
          str(fake), "another model", new=tmp_path / "c")
    before = snapshot(fake)
    check(["evaluate", fake, "--no-progress"], "checkpoint")
    assert snapshot(fake) == before
    # --resume of an existing run with a different model: names the differing setting
    check(["train", "--data", DATA, *SMALL[:2], "--bottom", "32,8", *SMALL[4:], "--steps", "6", "--resume",
           "--out", root / "dense"], "cannot resume with different settings", "model.bottom")
    check(["train", "--data", DATA, *SMALL, "--steps", "6", "--seed", "5", "--resume", "--out", root / "dense"],
          "train.seed")


def test_missing_run_directories(root, tmp_path, check):
    missing = tmp_path / "nope"
    check(["compress", "--from", missing, "--budget", "flops=0.5", "--no-progress", "--out", tmp_path / "c"],
          str(missing), "no such run directory", new=tmp_path / "c")
    check(["finetune", "--from", missing, "--no-progress", "--out", tmp_path / "c"], str(missing), new=tmp_path / "c")
    check(["evaluate", missing, "--no-progress"], str(missing))
    (tmp_path / "empty").mkdir()
    check(["compress", "--from", tmp_path / "empty", "--budget", "flops=0.5", "--no-progress", "--out",
           tmp_path / "c"], "not a run directory", new=tmp_path / "c")
    check(["finetune", "--from", root / "dense", "--no-progress", "--out", tmp_path / "c"], "not a compressed run",
          new=tmp_path / "c")
    # a run without its checkpoint (e.g. the stage was killed): named as not finished
    half = tmp_path / "half"
    shutil.copytree(root / "dense", half, ignore=shutil.ignore_patterns("checkpoint"))
    check(["compress", "--from", half, "--budget", "flops=0.5", "--no-progress", "--out", tmp_path / "c"],
          "no checkpoint", new=tmp_path / "c")


def test_unwritable_or_existing_output_directories(root, tmp_path, check):
    """An output below a regular file (stands in for an unwritable directory: tests run as
    root), an output that is a file, the source itself, an existing run without --force,
    --resume with --force: refused before any work, nothing written."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for cmd in (["train", "--data", DATA, *SMALL],
                ["compress", "--from", root / "dense", "--budget", "flops=0.5", "--no-progress"],
                ["finetune", "--from", root / "comp", "--no-progress"]):
        check([*cmd, "--out", blocker / "run"], str(blocker), "is not a directory")
        check([*cmd, "--out", blocker], "exists and is not a directory")
    assert blocker.read_text() == "x"
    check(["compress", "--from", root / "dense", "--budget", "flops=0.5", "--no-progress", "--out", root / "dense",
           "--force"], "the output run is the source run")
    check(["train", "--data", DATA, *SMALL, "--out", root / "dense"], "already exists", "--force")
    check(["train", "--data", DATA, *SMALL, "--out", root / "dense", "--resume", "--force"], "--resume and --force")
    check(["train", "--data", DATA, *SMALL, "--out", tmp_path / "r", "--keep", "0"], "--keep", new=tmp_path / "r")
    if os.geteuid() != 0:  # permission bits only bind non-root users
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        try:
            check(["train", "--data", DATA, *SMALL, "--out", ro / "run"], "not writable", new=ro / "run")
        finally:
            os.chmod(ro, 0o700)


def test_console_entry_point_has_no_traceback(root, tmp_path):
    """The real entry point in a subprocess: exit status 2, one line, no traceback."""
    p = subprocess.run([sys.executable, "-m", "umec_torchrec", "compress", "--from", str(root / "dense"),
                        "--budget", "flops=7", "--no-progress", "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("umec: error:") and "flops" in lines[0]
    assert not os.path.exists(tmp_path / "c")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not next to the Python interpreter")
def test_world_size_change_that_cannot_be_handled(root, tmp_path):
    """2 ranks (torchrun), generated data: (a) resuming a 1-rank run whose batch size does
    not divide by 2; (b) compressing a 1-rank run that records no sharding plan (a run from
    before plans were recorded: its planner-chosen table layout, and so its optimizer state,
    differs on 2 ranks; a run with its plan is reused on any world size,
    tests/stages/test_sharding_plan_reuse.py). Each: one line (from the first failing rank)
    naming the problem, exit non-zero, nothing changed."""
    odd = tmp_path / "odd"
    assert cli.main(["train", "--data", DATA, *SMALL[:6], "--batch-size", "63", *SMALL[8:], "--steps", "3",
                     "--out", str(odd)]) == 0
    old = tmp_path / "old-dense"
    shutil.copytree(root / "dense", old)
    cfg = json.load(open(old / "config.json"))
    assert cfg.pop("sharding_plan", None) is not None
    with open(old / "config.json", "w") as f:
        json.dump(cfg, f)
    env = dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP")
    base = [TORCHRUN, "--nproc_per_node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", "localhost:0", "-m", "umec_torchrec.cli"]
    cases = [
        (["train", "--data", DATA, *SMALL[:6], "--batch-size", "63", *SMALL[8:], "--steps", "3", "--resume",
          "--out", str(odd)], "batch size 63 does not divide by 2"),
        (["compress", "--from", str(old), "--budget", "flops=0.5", "--no-progress",
          "--out", str(tmp_path / "c2")], "written on 1 rank(s)"),
    ]
    for argv, text in cases:
        before = snapshot(tmp_path), snapshot(root)
        p = subprocess.run(base + argv, capture_output=True, text=True, timeout=240, env=env)
        mine = [ln for ln in p.stderr.splitlines() if ln.startswith("umec:")]
        assert p.returncode != 0 and len(mine) == 1 and text in mine[0] and mine[0].startswith("umec: error:"), \
            p.stderr[-3000:]
        assert not any("Traceback" in ln for ln in p.stderr.splitlines() if ln.startswith("[rank")), p.stderr[-3000:]
        assert (snapshot(tmp_path), snapshot(root)) == before
    assert json.load(open(odd / "config.json"))["world_size"] == 1


def _root_cause(stderr: str) -> str:
    """The "Root Cause" section of torchrun's ``ChildFailedError`` summary."""
    assert "Root Cause (first observed failure):" in stderr, stderr[-3000:]
    return stderr.split("Root Cause (first observed failure):", 1)[1]


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not next to the Python interpreter")
def test_torchrun_user_error_is_one_line_from_the_first_failing_rank(tmp_path):
    """2 ranks (torchrun, gloo), generated data: a bad flag value rejected by the library
    (``--embedding-dim -4``) and one rejected by argparse (``--batch-size abc``). Each: one
    error line in all (argparse: one usage), the failing worker's exit status is the
    single-process one (2), its TorchElastic error file holds the line (torchrun's root
    cause shows it), no worker traceback, nothing written. torchrun itself exits 1 with its
    ``ChildFailedError`` summary whatever the worker's status (torch/distributed/run.py)."""
    env = dict(os.environ, GLOO_DEVICE_TRANSPORT="TCP", OMP_NUM_THREADS="1")
    base = [TORCHRUN, "--nproc-per-node", "2", "--master_port", "0", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", "localhost:0", "-m", "umec_torchrec.cli", "train", "--data", DATA, *SMALL]
    out = tmp_path / "r"
    cases = [(["--embedding-dim", "-4"], "umec: error: --embedding-dim must be >= 1, got -4", 0),
             (["--batch-size", "abc"], "umec train: error: argument --batch-size: invalid int value: 'abc'", 1)]
    for flag, line, usage in cases:
        single = subprocess.run([sys.executable, "-m", "umec_torchrec.cli", "train", "--data", DATA, *SMALL, *flag,
                                 "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
        assert single.returncode == 2 and single.stderr.strip().splitlines()[-1] == line, single.stderr
        p = subprocess.run(base + flag + ["--out", str(out)], capture_output=True, text=True, timeout=240, env=env)
        err = p.stderr.splitlines()
        assert [ln for ln in err if ln.startswith(("umec:", "umec train:"))] == [line], p.stderr[-3000:]
        assert sum(ln.startswith("usage: umec train") for ln in err) == usage, p.stderr[-3000:]
        root = _root_cause(p.stderr)
        assert "exitcode  : 2 " in root and f"traceback : {line}" in root, root
        error_file = root.split("error_file: ", 1)[1].split()[0]
        assert error_file.endswith("error.json"), root  # not <N/A>
        assert p.stderr.count("Traceback (most recent call last)") == 1, p.stderr[-3000:]  # torchrun's own only
        assert p.returncode == 1, p.returncode  # torchrun's status for any failed worker (not ours to set)
        assert not os.path.exists(out)
