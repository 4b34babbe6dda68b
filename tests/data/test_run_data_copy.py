"""A spec that is not prepared (issue 13, section 1): the pipeline's first stage writes the
data it loaded as a prepared copy ``RUN/data`` once, and every later stage maps that copy
instead of parsing the source again. Generated data (small files in ``tmp_path``)."""

import json
import os

import numpy as np
import torch

from umec_torchrec.cli import main
from umec_torchrec.data import load_data
from umec_torchrec.data import testing as T
from umec_torchrec.data.prepared import is_prepared

SMALL = ["--bottom", "16,8", "--top", "16,1", "--embedding-dim", "8", "--batch-size", "64", "--no-progress"]


def test_first_stage_prepares_into_the_run_and_later_stages_reuse_it(tmp_path, monkeypatch):
    """Generated multi-hot csv: train writes RUN/data (equal to load_data of the spec) and records
    it; compress, finetune and evaluate run from it with the source gone (they never parse it),
    and write no copy of their own; a synthetic spec writes none."""
    src = T.write_multi_hot_csv(tmp_path / "mh.csv", rows=400, seed=7)
    spec = f"csv:{src},{T.MULTI_HOT_SCHEMA}"
    d, c, f = (str(tmp_path / x) for x in ("d", "c", "f"))
    assert main(["train", "--data", spec, "--steps", "3", "--out", d, *SMALL]) == 0
    rec = json.load(open(os.path.join(d, "config.json")))["data"]
    assert rec["prepared"] == os.path.join(d, "data") and is_prepared(rec["prepared"])
    a, b = load_data(spec), load_data(f"prepared:{rec['prepared']}")
    for s in ("train", "valid", "test"):
        x, y = getattr(a, s), getattr(b, s)
        assert torch.equal(x.dense, y.dense) and torch.equal(x.labels, y.labels)
        assert np.array_equal(x.multi_hot["tags"].offsets, y.multi_hot["tags"].offsets)
        assert np.array_equal(x.multi_hot["tags"].flat(), y.multi_hot["tags"].flat().astype(np.int64))
        assert np.array_equal(np.load(os.path.join(rec["prepared"], f"split_{s}.npy")), a.split_rows[s])
    os.remove(src)  # later stages must not need the source
    assert main(["compress", "--from", d, "--budget", "flops=0.5", "--steps", "3", "--out", c, "--no-progress"]) == 0
    assert main(["finetune", "--from", c, "--steps", "2", "--out", f, "--no-progress"]) == 0
    assert main(["evaluate", f, "--no-progress"]) == 0
    for run in (c, f):
        assert json.load(open(os.path.join(run, "config.json")))["data"]["prepared"] == rec["prepared"]
        assert not os.path.exists(os.path.join(run, "data"))
    s = str(tmp_path / "s")
    assert main(["train", "--data", "synthetic:rows=300", "--steps", "2", "--out", s, *SMALL]) == 0
    assert "prepared" not in json.load(open(os.path.join(s, "config.json")))["data"]
    assert not os.path.exists(os.path.join(s, "data"))
