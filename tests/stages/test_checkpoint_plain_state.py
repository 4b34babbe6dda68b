"""The compress stage's checkpoints hold plain state only: the UMEC state as tensors inside
``"optim"`` (``UMECOptimizer.state_dict()``), the loop progress as ``progress.json``, and a
resume unpickles nothing (``torch.load`` is only ever called with ``weights_only=True``).
Generated data (the built-in synthetic generator), tiny MLPs, one process."""

from __future__ import annotations

import json
import os
import shutil

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from umec_torchrec import cli
from umec_torchrec.train.ckpt_manager import PROGRESS_FILE

DATA = "synthetic:rows=2000,seed=1,min_count=2"
SMALL = ["--embedding-dim", "8", "--bottom", "16,8", "--top", "16,1", "--batch-size", "128", "--no-progress",
         "--log-every", "0"]


def test_compress_checkpoint_is_plain_tensors_and_resumes_without_unpickling(tmp_path, monkeypatch):
    """Compress 12 steps with a checkpoint every 6; every ``optim.umec.*`` entry of the DCP
    metadata is a tensor and there is no pickled progress entry; after dropping the last
    checkpoint and the finished outputs, ``--resume`` from step 6 with ``torch.load`` refusing
    ``weights_only=False`` gives the uninterrupted run's masks and test metrics."""
    dense = str(tmp_path / "dense")
    assert cli.main(["train", "--data", DATA, *SMALL, "--epochs", "1", "--out", dense]) == 0
    run = str(tmp_path / "c")
    argv = ["compress", "--from", dense, "--budget", "flops=0.4", "--steps", "12", "--checkpoint-every", "6",
            "--keep", "2", "--no-progress", "--out", run]
    assert cli.main(argv) == 0
    ref_masks = json.load(open(os.path.join(run, "masks.json")))
    ref_test = json.load(open(os.path.join(run, "metrics.json")))["test"]

    for ckpt in (os.path.join(run, "checkpoints", "step-000006"), os.path.join(run, "checkpoint")):
        md = FileSystemReader(ckpt).read_metadata().state_dict_metadata
        umec = {k: v for k, v in md.items() if k.startswith("optim.umec.")}
        assert {"optim.umec.s", "optim.umec.scale", "optim.umec.finalized"} <= set(umec)
        assert all(isinstance(v, TensorStorageMetadata) for v in umec.values()), \
            [k for k, v in umec.items() if not isinstance(v, TensorStorageMetadata)]
        assert not any(k.startswith("progress") or k.startswith("umec.") for k in md)
    progress = json.load(open(os.path.join(run, "checkpoints", "step-000006", PROGRESS_FILE)))
    assert progress["step"] == 6 and len(progress["ranks"]) == 1 and progress["stage"] == "compress"

    # back to the state after step 6, as if killed there
    shutil.rmtree(os.path.join(run, "checkpoints", "step-000012"))
    shutil.rmtree(os.path.join(run, "checkpoint"))
    for f in ("metrics.json", "masks.json"):
        os.remove(os.path.join(run, f))
    real_load = torch.load
    calls = []

    def weights_only_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only") is not True:
            raise AssertionError("a checkpoint load unpickled arbitrary objects (weights_only is not True)")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    assert cli.main([*argv, "--resume"]) == 0
    assert json.load(open(os.path.join(run, "masks.json"))) == ref_masks
    assert json.load(open(os.path.join(run, "metrics.json")))["test"] == ref_test
    assert calls and all(c is True for c in calls)  # the optimizers' hyper-parameters went through it
