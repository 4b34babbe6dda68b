"""Nothing is chosen from the test split: flipping every test label leaves the dense
training, the UMEC masks (with ``shrunk``, which measures the features on the validation
split, and with the default, ``fisher``, training batches only) and the fine-tuned weights
unchanged; only the reported test metrics move.
Generated Criteo-format data (``umec_torchrec.data.testing``), no real data."""

from __future__ import annotations

import json
import os

import pytest

from umec_torchrec.cli import main
from umec_torchrec.data.options import DataOptions
from umec_torchrec.data.split import split_rows
from umec_torchrec.data.testing import criteo_lines

ROWS = 1200
SMALL = ["--embedding-dim", "4", "--bottom", "16,4", "--top", "16,8,1", "--batch-size", "128", "--no-progress"]


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def _pipeline(tmp, data: str, score: str) -> dict:
    tmp.mkdir()
    d, c, f = (str(tmp / n) for n in ("dense", "comp", "ft"))
    assert main(["train", "--data", data, "--epochs", "1", "--out", d, *SMALL]) == 0
    assert main(["compress", "--from", d, "--budget", "flops=0.4", "--score", score, "--steps", "20",
                 "--out", c, "--no-progress"]) == 0
    assert main(["finetune", "--from", c, "--steps", "10", "--out", f, "--no-progress"]) == 0
    read = lambda run, name: json.load(open(os.path.join(run, name)))  # noqa: E731
    return {"dense_loss": read(d, "metrics.json")["train"]["loss"], "masks": read(c, "masks.json"),
            "ft_loss": read(f, "metrics.json")["train"]["loss"], "test_auc": read(f, "metrics.json")["test"]["auc"]}


@pytest.mark.parametrize("score", ["shrunk", "fisher"])  # validation-measured, and the default
def test_flipping_test_labels_changes_no_choice(tmp_path, score):
    lines = criteo_lines(ROWS, seed=3)
    opts = DataOptions()
    _, _, test_rows = split_rows(ROWS, opts.test_fraction, opts.valid_fraction, opts.split_seed)
    flipped = list(lines)
    for i in test_rows.tolist():
        label, rest = flipped[i].split("\t", 1)
        flipped[i] = f"{1 - int(label)}\t{rest}"
    a = _pipeline(tmp_path / "a", "criteo:" + _write(tmp_path / "a.tsv", lines), score)
    b = _pipeline(tmp_path / "b", "criteo:" + _write(tmp_path / "b.tsv", flipped), score)
    assert a["dense_loss"] == b["dense_loss"]
    assert a["masks"] == b["masks"]
    assert a["ft_loss"] == b["ft_loss"]
    assert a["test_auc"] != b["test_auc"]  # the flip reached the test split (the check is not vacuous)
