"""Export zeroes subnormal float weights (the CPU's slow arithmetic path) without touching the
source model. Generated weights: a row of the first top layer planted at 1e-40."""

import torch

from umec_torchrec.export.exporter import export_model
from umec_torchrec.export.loaders import load_compact, load_program
from umec_torchrec.export.samples import module_logits, sample_inputs
from umec_torchrec.models import ModelConfig, build_dlrm
from umec_torchrec.umec import layout


def _subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


def test_export_flushes_subnormal_weights_and_keeps_the_logits(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig("cat", ["a", "b", "c"], [20, 30, 10], 4, embedding_dim=8, bottom=[16, 8], top=[16, 8, 1])
    dlrm = build_dlrm(cfg).eval()
    w = layout.perceptron_linear(layout.top_perceptrons(dlrm)[0]).weight
    with torch.no_grad():
        w[3].fill_(1e-40)
    assert _subnormal(w) == w.shape[1]
    out = str(tmp_path / "e")
    export_model(dlrm, None, out)
    assert _subnormal(w) == w.shape[1]  # the source model is not modified
    compact = load_compact(out)
    assert sum(_subnormal(p) for p in compact.state_dict().values() if p.is_floating_point()) == 0
    dense_in, ids = sample_inputs(cfg, n=32, seed=1)
    with torch.no_grad():
        want = module_logits(dlrm, dense_in, ids, cfg.feature_names)
        got = load_program(out)(dense_in, ids)
    assert torch.allclose(got.flatten(), want.flatten(), atol=1e-6, rtol=0)
