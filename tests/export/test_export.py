"""Export (`umec export`): compact-model equivalence, program round trip, int8, atomic writes,
bad checkpoints. Each test says whether it uses real (shared Criteo sample) or generated data."""

from __future__ import annotations

import json
import os
from typing import List, Optional

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from helpers.programs import run_in_fresh_process
from umec_torchrec.export import build_compact, export_model, export_run, load_compact, load_program
from umec_torchrec.export.aligned import AlignedMLP
from umec_torchrec.export.checkpoint_reader import load_dlrm_state, read_metadata
from umec_torchrec.export.compact import compact_config, kept_feature_indices, table_key
from umec_torchrec.export.measure import dense_path_flops
from umec_torchrec.export.program import CompactPredictor, ids_of
from umec_torchrec.export.samples import one_id_kjt, sample_inputs
from umec_torchrec.models import MODEL_KINDS, ModelConfig, build_dlrm, build_model
from umec_torchrec.umec import FeatureMask, PruningMasks, apply_masks_, layout

KINDS = MODEL_KINDS


def random_masks(dlrm, kept: List[str], seed: int = 0, frac: float = 0.5) -> PruningMasks:
    """Masks keeping ``kept`` features and a seeded random ``frac`` of every hidden layer."""
    g = torch.Generator().manual_seed(seed)
    layers, widths = {}, {}
    for h in layout.hidden_layers(dlrm):
        widths[h.name] = h.width
        layers[h.name] = torch.randperm(h.width, generator=g)[: max(1, int(h.width * frac))].tolist()
    return PruningMasks(layout.feature_names(dlrm), kept, layers, widths)


def small_config(kind: str, n_features: int = 6, sizes: Optional[List[int]] = None) -> ModelConfig:
    sizes = sizes or [20 + 3 * i for i in range(n_features)]
    return ModelConfig(kind, [f"C{i}" for i in range(n_features)], sizes, 5, embedding_dim=8,
                       bottom=[24, 16, 8], top=[32, 12, 1], dcn_num_layers=2, dcn_low_rank_dim=4)


def kjt_of(ids: torch.Tensor, names: List[str]) -> KeyedJaggedTensor:
    return one_id_kjt(ids, names)


@torch.no_grad()
def masked_logits(dlrm, masks: PruningMasks, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """The masked (unexported) model's logits: pruned weights zeroed, pruned ids dropped."""
    apply_masks_(dlrm, masks)
    return dlrm(dense, FeatureMask(masks.pruned_features)(kjt)).squeeze(-1)


@torch.no_grad()
def check_equivalence(dlrm, cfg: ModelConfig, masks: PruningMasks, dense, kjt) -> float:
    compact = build_compact(dlrm, cfg, masks)
    ref = masked_logits(dlrm, masks, dense, kjt)
    full = compact(dense, kjt).squeeze(-1)  # original KJT, extra keys ignored
    kept = compact(dense, kjt.permute(kept_feature_indices(cfg, masks))).squeeze(-1)
    prog = CompactPredictor(compact)(dense, ids_of(kjt, compact_config(cfg, masks).feature_names))
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(kept, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(prog, ref, atol=1e-5, rtol=0)
    return float(ref.std())


# --- equivalence ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_compact_equals_masked_generated(kind):
    """Generated data: the compact model's logits equal the masked model's (1e-5)."""
    torch.manual_seed(0)
    cfg = small_config(kind)
    dlrm = build_dlrm(cfg).eval()
    masks = random_masks(dlrm, ["C1", "C3", "C4"], seed=1)
    ccfg = compact_config(cfg, masks)
    assert ccfg.feature_names == ["C1", "C3", "C4"] and ccfg.bottom == [12, 8, 8] and ccfg.top == [16, 6, 1]
    dense, ids = sample_inputs(cfg, n=64, seed=2)
    spread = check_equivalence(dlrm, cfg, masks, dense, kjt_of(ids, cfg.feature_names))
    assert spread > 1e-4  # the logits are not all equal (the check is not vacuous)


def shared_config(kind: str) -> ModelConfig:
    """item and user_hist read one table, t_hist (40 rows); ctx has its own (30 rows)."""
    return ModelConfig(kind, ["item", "user_hist", "ctx"], [40, 40, 30], 5, embedding_dim=8, bottom=[24, 16, 8],
                       top=[32, 12, 1], dcn_num_layers=2, dcn_low_rank_dim=4,
                       table_features={"t_hist": ["item", "user_hist"]})


@pytest.mark.parametrize("kind", KINDS)
def test_compact_keeps_a_shared_table_once_generated(kind, tmp_path):
    """Generated weights and ids, a table read by two features: pruning one of them keeps the
    table, once, with the masked model's logits; pruning both drops it; the export's manifest
    counts its bytes once and does not list it as pruned while a reader is kept."""
    cfg = shared_config(kind)
    torch.manual_seed(0)
    dlrm = build_dlrm(cfg)
    assert [c.name for c in layout.embedding_configs(dlrm)] == ["t_hist", "t_ctx"]
    dense, ids = sample_inputs(cfg, n=64, seed=3)
    kjt = kjt_of(ids, cfg.feature_names)
    for kept, tables in [(["item", "ctx"], ["t_hist", "t_ctx"]), (["user_hist"], ["t_hist"]), (["ctx"], ["t_ctx"])]:
        torch.manual_seed(0)
        dlrm = build_dlrm(cfg)  # fresh: check_equivalence masks it in place
        masks = random_masks(dlrm, kept, seed=len(kept))
        ccfg = compact_config(cfg, masks)
        assert list(ccfg.table_rows()) == tables
        compact = build_compact(dlrm, cfg, masks)
        assert sorted(layout.table_of_key(k) for k in compact.state_dict() if layout.is_table_key(k)) == sorted(tables)
        assert check_equivalence(dlrm, cfg, masks, dense, kjt) > 1e-6  # the logits vary
    masks = random_masks(dlrm, ["item", "ctx"])
    man = export_model(dlrm, cfg, masks, str(tmp_path / "e"), sample=(dense, ids))
    assert man["tables"] == {"kept": {"t_hist": 40, "t_ctx": 30}, "pruned": {}}
    assert man["embedding_bytes"]["before"] == man["embedding_bytes"]["after"] == (40 + 30) * 8 * 4


def test_shared_table_config_errors():
    base = dict(kind="cat", feature_names=["a", "b", "c"], table_sizes=[5, 5, 7], dense_in_features=3,
                embedding_dim=4, bottom=[8, 4], top=[8, 1])
    with pytest.raises(ValueError, match="adjacent"):
        ModelConfig(**base, table_features={"t": ["a", "c"]})
    with pytest.raises(ValueError, match="different table_sizes"):
        ModelConfig(**base, table_features={"t": ["b", "c"]})
    with pytest.raises(ValueError, match="'z', which is not a sparse feature"):
        ModelConfig(**base, table_features={"t": ["a", "z"]})
    with pytest.raises(ValueError, match="in tables 't' and 'u'"):
        ModelConfig(**base, table_features={"t": ["a", "b"], "u": ["b"]})
    cfg = ModelConfig(**base, table_features={"t": ["a", "b"]})
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg and cfg.table_rows() == {"t": 5, "t_c": 7}


def test_compact_over_arch_width_and_flops_generated():
    """Generated configs: over-arch input widths (F'+1)D and D+C(F'+1,2); the compact model
    has fewer FLOPs (FlopCounterMode)."""
    for kind, want in (("cat", 4 * 8), ("dcn", 4 * 8), ("dot", 8 + 6)):
        cfg = small_config(kind)
        masks = random_masks(build_dlrm(cfg), ["C0", "C2", "C5"])
        compact = build_compact(build_dlrm(cfg), cfg, masks)
        assert layout.over_arch_input_width(compact) == want, kind
        assert dense_path_flops(compact_config(cfg, masks)) < dense_path_flops(cfg)


@pytest.mark.parametrize("kind", KINDS)
def test_compact_equals_masked_real_criteo(kind, criteo_sample):
    """Real data (shared Criteo Kaggle sample, first 3000 rows): compact == masked (1e-5), on
    logits that differ from row to row (so equal outputs are not trivially equal)."""
    data = _criteo(str(criteo_sample))
    torch.manual_seed(0)
    cfg = ModelConfig(kind, data.feature_names, data.table_sizes, len(data.dense_names), embedding_dim=8,
                      bottom=[32, 8], top=[32, 16, 1])
    dlrm = build_dlrm(cfg).eval()
    kept = data.feature_names[::3]
    masks = random_masks(dlrm, kept, seed=3, frac=0.6)
    batch = data.make_batch(torch.arange(512))
    spread = check_equivalence(dlrm, cfg, masks, batch.dense_features, batch.sparse_features)
    assert spread > 1e-4  # the logits are not all equal (the check is not vacuous)


_CRITEO_CACHE: dict = {}


def _criteo(path: str):
    if path not in _CRITEO_CACHE:
        from umec_torchrec.data import load_data
        from umec_torchrec.data.options import DataOptions

        _CRITEO_CACHE[path] = load_data(f"criteo:{path}", DataOptions(max_rows=3000)).train
    return _CRITEO_CACHE[path]


def test_zero_kept_features_and_pruned_dense_are_refused():
    """Generated config: masks keeping no feature / pruning the dense output raise clear errors."""
    cfg = small_config("dot")
    dlrm = build_dlrm(cfg)
    with pytest.raises(ValueError, match="no sparse feature"):
        compact_config(cfg, random_masks(dlrm, []))
    m = random_masks(dlrm, ["C1"])
    m.dense_kept = False
    with pytest.raises(ValueError, match="dense-arch output was pruned"):
        compact_config(cfg, m)


# --- runs, checkpoints ----------------------------------------------------------------------
def make_run(tmp_path, kind: str = "dcn", kept=("C1", "C2", "C4"), seed: int = 0):
    """A compressed run directory (generated weights) saved with the trainer's DCP layout."""
    from umec_torchrec.runs import Run
    from umec_torchrec.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    cfg = small_config(kind)
    model = build_model(cfg)
    masks = random_masks(model.model, list(kept), seed=seed + 1)
    apply_masks_(model.model, masks)
    run = Run.create(str(tmp_path / f"run_{kind}"))
    run.write_config(model=cfg.to_dict(), data={"spec": None}, compress={"budgets": ["flops=0.3"]})
    masks.save(run.file("masks.json"))
    save_checkpoint(run.checkpoint_dir, model)
    return run, cfg, masks, model.model


def test_export_run_reads_checkpoint_and_matches(tmp_path):
    """Generated weights: `export_run` from a DCP checkpoint gives the masked model's logits,
    the manifest records sizes/figures, and the program loads back in-process."""
    run, cfg, masks, dlrm = make_run(tmp_path)
    out = tmp_path / "export"
    man = export_run(run.path, str(out))
    assert sorted(os.listdir(out)) == ["manifest.json", "model.pt", "program.pt2"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["features"]["kept"] == ["C1", "C2", "C4"] == man["features"]["kept"]
    assert set(on_disk["tables"]["pruned"]) == {"t_C0", "t_C3", "t_C5"}
    assert on_disk["flops_per_sample"]["after"] < on_disk["flops_per_sample"]["before"]
    assert on_disk["embedding_bytes"]["after"] == (23 + 26 + 32) * 8 * 4
    assert on_disk["budgets"] == {"compress.budgets": ["flops=0.3"]}
    assert on_disk["source_run"] == run.path and "torchrec" in on_disk["versions"]
    assert on_disk["layers"]["top"]["after"] == [16, 6, 1]
    prog = on_disk["program"]
    assert prog["align"] == 16 and prog["max_abs_diff_vs_module"] <= 1e-5
    assert prog["served_widths"]["top"] == [16, 16, 1]  # 6 -> 16 zero-padded, the logit unpadded
    bottom = on_disk["layers"]["bottom"]["after"]
    assert prog["served_widths"]["bottom"] == [-(-w // 16) * 16 for w in bottom[:-1]] + [8]
    dense, ids = sample_inputs(cfg, n=50, seed=5)
    kjt = kjt_of(ids, cfg.feature_names)
    ref = masked_logits(dlrm, masks, dense, kjt)
    with torch.no_grad():
        torch.testing.assert_close(load_compact(str(out))(dense, kjt).squeeze(-1), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(load_program(str(out))(dense, ids[:, [1, 2, 4]]), ref, atol=1e-5, rtol=0)


def _storage_ranges(ckpt: str, key_suffix: str):
    meta = read_metadata(ckpt)
    return [(os.path.join(ckpt, info.relative_path), info.offset, info.length)
            for idx, info in meta.storage_data.items() if idx.fqn.endswith(key_suffix)]


def _corrupt(ranges) -> None:
    for path, off, length in ranges:
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(b"\xff" * length)


def test_pruned_table_is_never_read(tmp_path):
    """Generated weights: garbage written over every pruned table's bytes in the checkpoint does
    not disturb the export (it is never read), while garbage over a kept table is a clear error."""
    run, cfg, masks, dlrm = make_run(tmp_path, kind="dot")
    ranges = [r for f in masks.pruned_features for r in _storage_ranges(run.checkpoint_dir, table_key(cfg, f))]
    assert len(ranges) == 3
    _corrupt(ranges)
    state = load_dlrm_state(run.checkpoint_dir, cfg, masks)
    assert not any(f"t_{f}." in k for k in state for f in masks.pruned_features)
    dense, ids = sample_inputs(cfg, n=40, seed=1)
    kjt = kjt_of(ids, cfg.feature_names)
    with torch.no_grad():
        torch.testing.assert_close(build_compact(state, cfg, masks)(dense, kjt), build_compact(dlrm, cfg, masks)(dense,
                                                                                                                 kjt))
    _corrupt(_storage_ranges(run.checkpoint_dir, table_key(cfg, "C2")))
    with pytest.raises(ValueError, match="corrupt checkpoint data"):
        load_dlrm_state(run.checkpoint_dir, cfg, masks)
    with pytest.raises(ValueError, match="SHA-256"):  # export_run verifies every file first
        export_run(run.path, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_foreign_and_mismatched_checkpoints(tmp_path):
    """Generated weights: missing checkpoint, a directory that is not DCP, a corrupt .metadata
    and a checkpoint of another architecture each raise a clear error."""
    import shutil

    from umec_torchrec.runs import Run

    run, cfg, masks, _ = make_run(tmp_path, kind="cat")
    ckpt = run.checkpoint_dir
    # another architecture: the config says t_C1 has 40 rows, the checkpoint 23
    other = dict(cfg.to_dict(), table_sizes=[20, 40, 26, 29, 32, 35])
    Run.open(run.path).write_config(model=other)
    with pytest.raises(ValueError, match="another architecture: t_C1 has 23 rows, config says 40"):
        export_run(run.path, str(tmp_path / "o1"))
    Run.open(run.path).write_config(model=dict(cfg.to_dict(), dense_in_features=7))
    with pytest.raises(ValueError, match=r"another architecture: dense_arch.model._mlp.0._linear.weight has shape "
                                         r"\(24, 5\), config says \(24, 7\)"):
        export_run(run.path, str(tmp_path / "o1"))
    Run.open(run.path).write_config(model=cfg.to_dict())
    # .metadata corrupt
    with open(os.path.join(ckpt, ".metadata"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(ValueError, match="corrupt checkpoint metadata"):
        export_run(run.path, str(tmp_path / "o2"))
    os.remove(os.path.join(ckpt, ".metadata"))
    with pytest.raises(ValueError, match=r"not a torch.distributed.checkpoint directory \(no .metadata"):
        export_run(run.path, str(tmp_path / "o3"))
    shutil.rmtree(ckpt)
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        export_run(run.path, str(tmp_path / "o4"))
    with pytest.raises(FileNotFoundError, match="checkpoint directory does not exist"):
        load_dlrm_state(ckpt, cfg, masks)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        export_run(str(tmp_path / "nowhere"), str(tmp_path / "o5"))
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


# --- output directory -----------------------------------------------------------------------
def test_atomic_write_and_refusal_to_overwrite(tmp_path, monkeypatch):
    """Generated weights: an existing export is refused without force and replaced with it; a
    failure mid-write leaves the old export intact and no temporary directory; a non-export
    directory is never overwritten."""
    cfg = small_config("cat")
    dlrm = build_dlrm(cfg)
    out = tmp_path / "exp"
    export_model(dlrm, cfg, random_masks(dlrm, ["C0", "C1"]), str(out))
    with pytest.raises(FileExistsError, match="pass --force"):
        export_model(dlrm, cfg, random_masks(dlrm, ["C2"]), str(out))
    assert json.loads((out / "manifest.json").read_text())["features"]["kept"] == ["C0", "C1"]

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.export, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(dlrm, cfg, random_masks(dlrm, ["C2"]), str(out), force=True)
    monkeypatch.undo()
    assert json.loads((out / "manifest.json").read_text())["features"]["kept"] == ["C0", "C1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no .tmp-/.old- leftovers

    export_model(dlrm, cfg, random_masks(dlrm, ["C2"]), str(out), force=True)
    assert json.loads((out / "manifest.json").read_text())["features"]["kept"] == ["C2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an export"):
        export_model(dlrm, cfg, None, str(other), force=True)
    assert (other / "keep.txt").read_text() == "x"


# --- program and int8 -----------------------------------------------------------------------
def test_aligned_mlp_pads_with_zero_units_and_keeps_the_function():
    """Generated weights (known answer: the unpadded chain): AlignedMLP pads hidden widths to
    the alignment with zero rows/columns and computes the same outputs; align 1 keeps them."""
    torch.manual_seed(0)
    lins = [torch.nn.Linear(13, 156), torch.nn.Linear(156, 78), torch.nn.Linear(78, 19), torch.nn.Linear(19, 16)]
    x = torch.randn(64, 13)
    with torch.no_grad():
        ref = x
        for lin in lins:
            ref = torch.relu(lin(ref))
        mlp = AlignedMLP(lins, [True] * 4, align=16)
        assert mlp.widths == [160, 80, 32, 16]
        assert mlp.weights[1].shape == (80, 160) and mlp.weights[3].shape == (16, 32)
        assert float(mlp.weights[0][156:].abs().sum() + mlp.biases[0][156:].abs().sum()) == 0.0
        assert float(mlp.weights[1][:, 156:].abs().sum()) == 0.0
        torch.testing.assert_close(mlp(x), ref, atol=1e-6, rtol=0)
        assert AlignedMLP(lins, [True] * 4, align=1).widths == [156, 78, 19, 16]
        last_linear = AlignedMLP(lins[:2], [True, False], align=16)
        torch.testing.assert_close(last_linear(x), lins[1](torch.relu(lins[0](x))), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="align must be >= 1"):
        AlignedMLP(lins, [True] * 4, align=0)
    with pytest.raises(ValueError, match="one relu flag per Linear"):
        AlignedMLP(lins, [True], align=16)


@pytest.mark.parametrize("kind", KINDS)
def test_predictor_alignment_does_not_change_logits(kind):
    """Generated weights: the serving predictor gives the same logits at align 1, 8 and 16 and
    equals the TorchRec module (KJT input) for every model kind."""
    torch.manual_seed(3)
    cfg = small_config(kind)
    dlrm = build_dlrm(cfg).eval()
    dense, ids = sample_inputs(cfg, n=40, seed=2)
    with torch.no_grad():
        ref = dlrm(dense, kjt_of(ids, cfg.feature_names)).squeeze(-1)
        for align in (1, 8, 16):
            torch.testing.assert_close(CompactPredictor(dlrm, align=align)(dense, ids), ref, atol=1e-5, rtol=0)


def test_program_round_trip_in_fresh_process(tmp_path):
    """Generated weights: program.pt2 loads and runs in a fresh Python process that imports only
    torch (no TorchRec, no torch.distributed group), at several batch sizes (dynamic batch)."""
    cfg = small_config("dot")
    dlrm = build_dlrm(cfg)
    masks = random_masks(dlrm, ["C0", "C3", "C5"])
    out = tmp_path / "exp"
    export_model(dlrm, cfg, masks, str(out))
    compact = load_compact(str(out))
    cases = {}
    for b in (1, 7, 300):
        dense, ids = sample_inputs(cfg, n=b, seed=b)
        ids = ids[:, [0, 3, 5]]
        with torch.no_grad():
            cases[b] = ((dense, ids), CompactPredictor(compact)(dense, ids))
    worst, initialised, bad = run_in_fresh_process(str(out / "program.pt2"), cases, str(tmp_path))
    assert worst <= 1e-5 and not initialised and bad == []


def test_int8_export(tmp_path):
    """Generated weights: --int8 writes row-wise int8 tables via TorchRec's inference
    quantization, reports the largest logit difference (small, non-zero), and reloads."""
    cfg = small_config("dcn")
    dlrm = build_dlrm(cfg)
    masks = random_masks(dlrm, ["C1", "C2", "C5"])
    out = tmp_path / "exp"
    man = export_model(dlrm, cfg, masks, str(out), int8=True)
    q = man["int8"]
    assert "model_int8.pt" in os.listdir(out)
    assert 0.0 < q["max_abs_logit_diff"] < 1e-2
    assert q["embedding_bytes"] < man["embedding_bytes"]["after"]
    sd = torch.load(out / "model_int8.pt", weights_only=True)
    assert sd["sparse_arch.embedding_bag_collection.embedding_bags.t_C1.weight"].dtype == torch.uint8
    dense, ids = sample_inputs(cfg, n=512, seed=0)  # the rows the export checked
    kjt = kjt_of(ids, cfg.feature_names)
    with torch.no_grad():
        diff = (load_compact(str(out), int8=True)(dense, kjt) - load_compact(str(out))(dense, kjt)).abs().max()
    assert float(diff) == pytest.approx(q["max_abs_logit_diff"], rel=1e-6)


# --- CLI and demo figures -------------------------------------------------------------------
def test_cli_export_and_refusal(tmp_path, capsys):
    """Generated weights: `umec export --from RUN --out DIR --int8` writes the export; a second
    call without --force fails with a one-line error (exit 2), with --force it succeeds."""
    from umec_torchrec.cli import main

    run, cfg, masks, _ = make_run(tmp_path, kind="dot")
    out = str(tmp_path / "exp")
    assert main(["export", "--from", run.path, "--out", out, "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "3/6 features kept" in printed and "int8 tables" in printed
    assert sorted(os.listdir(out)) == ["manifest.json", "model.pt", "model_int8.pt", "program.pt2"]
    assert main(["export", "--from", run.path, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--from", run.path, "--out", out, "--force", "--align", "1"]) == 0
    man = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert man["program"]["align"] == 1 and man["program"]["served_widths"]["top"] == man["layers"]["top"]["after"]
    assert main(["export", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "e2")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["export", "--from", run.path, "--out", str(tmp_path / "e3"), "--align", "0"]) == 2
    assert "--align must be >= 1, got 0" in capsys.readouterr().err and not os.path.exists(tmp_path / "e3")


def test_compare_models_dense_vs_compact(tmp_path):
    """Generated data (CTRData with random ids/labels): the demo figures report fewer
    parameters, bytes and FLOPs for the compact model and the AUC of each model's own logits."""
    from umec_torchrec.classification import roc_auc
    from umec_torchrec.data import CTRData
    from umec_torchrec.export.compare import compare_models, format_comparison

    cfg = small_config("cat")
    dense_model = build_dlrm(cfg).eval()
    masks = random_masks(dense_model, ["C1", "C4"])
    d, ids = sample_inputs(cfg, n=300, seed=3)
    labels = (torch.rand(300, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    data = CTRData(d, ids, labels, [f"I{i}" for i in range(5)], list(cfg.feature_names), list(cfg.table_sizes))
    export_model(dense_model, cfg, masks, str(tmp_path / "exp"))
    cmp = compare_models(dense_model, cfg, str(tmp_path / "exp"), data, batch_size=128)
    for k in ("parameters", "embedding_bytes", "flops_per_sample"):
        assert cmp["compact"][k] < cmp["dense"][k], k
    with torch.no_grad():
        want = roc_auc(dense_model(d, kjt_of(ids, cfg.feature_names)).squeeze(-1), labels)
    assert cmp["dense"]["auc"] == pytest.approx(want)
    assert "FLOPs/sample" in format_comparison(cmp)


# --- inference benchmark (structure only: no wall-clock assertions) -------------------------
def test_bench_budget_masks_hit_the_flops_budget():
    """Generated Kaggle-shaped config (1-row tables): the benchmark's masks have a measured
    dense-path FLOPs ratio within 5% below each budget, also with a chosen feature share."""
    from umec_torchrec.bench.inference import budget_masks
    from umec_torchrec.bench.kaggle import kaggle_model_config

    cfg = kaggle_model_config(kind="cat", table_sizes=[1] * 26)
    for b in (0.5, 0.3, 0.1):
        masks, ratio = budget_masks(cfg, b)
        assert 0.95 * b <= ratio <= b
        assert ratio == pytest.approx(dense_path_flops(compact_config(cfg, masks)) / dense_path_flops(cfg))
    masks, ratio = budget_masks(cfg, 0.1, feature_share=0.12)  # 3 of 26 features, wider layers
    assert len(masks.kept_features) == 3 and 0.095 <= ratio <= 0.1
    with pytest.raises(ValueError, match="feature share must be in"):
        budget_masks(cfg, 0.1, feature_share=0.0)


def test_bench_inference_runs_on_small_tables(capsys):
    """Generated ids, small tables, 1 round: `umec bench inference` prints one row per
    (batch, budget) with the ideal speed-up = 1 / FLOPs ratio and a memory ratio below 1."""
    from umec_torchrec.bench.inference import format_table, run_inference_bench

    res = run_inference_bench((16,), (0.5, 0.2), kind="dot", rounds=1, warmup=0, table_sizes=[50] * 26)
    assert [(r["batch"], r["budget"]) for r in res] == [(16, 0.5), (16, 0.2)]
    for r in res:
        assert r["ideal_speedup"] == pytest.approx(1 / r["flops_ratio"])
        assert 0 < r["memory_ratio"] < 1 and r["speedup"] > 0 and r["masked_speedup"] > 0
        for prog in ("dense", "compact"):  # the profiled split saw GEMMs and lookups, and adds up
            split = r["time_split_s"][prog]
            assert split["gemm"] > 0 and split["lookup"] > 0
            assert split["total"] == pytest.approx(split["gemm"] + split["lookup"] + split["other"])
        assert r["gemm_speedup"] > 0 and 0 < r["lookup_share"]["compact"] < 1
    assert len(format_table(res).splitlines()) == 3


def test_export_directory_and_files_are_readable_by_others(tmp_path):
    """No data: with umask 022 an export directory is 0755 and a file written atomically 0644,
    as a plain ``mkdir`` / ``open`` gives (``mkdtemp`` / ``mkstemp`` made them 0700 / 0600, so
    no other user could read an export); a file that exists keeps its mode when rewritten."""
    import os
    import stat

    from umec_torchrec.export.atomic_dir import atomic_directory
    from umec_torchrec.io import write_json

    old = os.umask(0o022)
    try:
        out = tmp_path / "exp"
        with atomic_directory(str(out)) as d:
            write_json(os.path.join(d, "manifest.json"), {"a": 1})
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(out / "manifest.json").st_mode) == 0o644
        f = tmp_path / "kept.json"
        f.write_text("{}")
        os.chmod(f, 0o640)
        write_json(str(f), {"b": 2})
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    finally:
        os.umask(old)
