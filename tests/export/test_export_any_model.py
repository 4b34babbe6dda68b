"""Export of a user's TorchRec DLRM (any table names, no ModelConfig), multi-hot programs,
per-table dtypes. All tests use generated weights and generated ids (seeded)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from helpers.programs import run_in_fresh_process
from umec_torchrec.export import export_model, load_compact, load_program
from umec_torchrec.export.module_config import module_config
from umec_torchrec.export.program import JaggedPredictor, jagged_of
from umec_torchrec.export.served_tables import ServedTables, TableData, dequantize
from umec_torchrec.export.table_dtypes import parse_rules, resolve
from umec_torchrec.models import DLRMConcat
from umec_torchrec.umec import FeatureMask, PruningMasks, apply_masks_, layout

FEATURES = ["user", "item", "hist_item", "ctx", "geo"]
ROWS = {"user_table": 40, "item_emb": 60, "ctx_emb": 12, "geo": 25}


def user_dlrm(kind: str, seed: int = 0) -> DLRM:
    """A DLRM as a user builds it: its own table names, a shared MEAN-pooled table, SUM elsewhere."""
    torch.manual_seed(seed)
    tables = [
        EmbeddingBagConfig(name="user_table", embedding_dim=8, num_embeddings=40, feature_names=["user"]),
        EmbeddingBagConfig(name="item_emb", embedding_dim=8, num_embeddings=60, feature_names=["item", "hist_item"],
                           pooling=PoolingType.MEAN),
        EmbeddingBagConfig(name="ctx_emb", embedding_dim=8, num_embeddings=12, feature_names=["ctx"]),
        EmbeddingBagConfig(name="geo", embedding_dim=8, num_embeddings=25, feature_names=["geo"],
                           pooling=PoolingType.MEAN),
    ]
    ebc = EmbeddingBagCollection(tables=tables)
    common = dict(embedding_bag_collection=ebc, dense_in_features=4, dense_arch_layer_sizes=[20, 8],
                  over_arch_layer_sizes=[24, 10, 1])
    if kind == "dcn":
        return DLRM_DCN(**common, dcn_num_layers=2, dcn_low_rank_dim=4).eval()
    return (DLRMConcat if kind == "cat" else DLRM)(**common).eval()


def multi_hot(n: int, seed: int, max_ids: int = 4):
    """Generated dense rows and a KJT with 0..max_ids ids per feature and row."""
    g = torch.Generator().manual_seed(seed)
    rows = [40, 60, 60, 12, 25]
    lengths = torch.randint(0, max_ids + 1, (len(FEATURES), n), generator=g)
    bound = torch.tensor(rows, dtype=torch.float64).repeat_interleave(lengths.sum(1))
    values = (torch.rand(bound.numel(), generator=g, dtype=torch.float64) * bound).long()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=values, lengths=lengths.reshape(-1).int())
    return torch.rand(n, 4, generator=g) * 2, kjt


def masks_for(dlrm, kept, seed: int = 1) -> PruningMasks:
    g = torch.Generator().manual_seed(seed)
    layers = {h.name: torch.randperm(h.width, generator=g)[: h.width // 2].tolist() for h in layout.hidden_layers(dlrm)}
    return PruningMasks(layout.feature_names(dlrm), kept, layers, {h.name: h.width for h in layout.hidden_layers(dlrm)})


@torch.no_grad()
def masked_logits(dlrm, masks, dense, kjt) -> torch.Tensor:
    apply_masks_(dlrm, masks)
    return dlrm(dense, FeatureMask(masks.pruned_features)(kjt)).squeeze(-1)


def test_module_config_reads_a_user_dlrm():
    """Generated weights: the config read from the module names the user's tables (shared
    and single), sizes, widths and poolings, and rebuilds the same parameter shapes."""
    cfg, pooling = module_config(user_dlrm("dcn"))
    assert cfg.kind == "dcn" and cfg.feature_names == FEATURES and cfg.table_sizes == [40, 60, 60, 12, 25]
    assert cfg.table_rows() == ROWS and cfg.table_name("hist_item") == "item_emb" and cfg.table_name("geo") == "geo"
    assert cfg.bottom == [20, 8] and cfg.top == [24, 10, 1] and cfg.dcn_num_layers == 2 and cfg.dcn_low_rank_dim == 4
    assert pooling == {"user_table": "SUM", "item_emb": "MEAN", "ctx_emb": "SUM", "geo": "MEAN"}


@pytest.mark.parametrize("kind", ["dot", "cat", "dcn"])
def test_user_dlrm_multi_hot_program_equals_masked_model(kind, tmp_path):
    """Generated weights and multi-hot ids (bags of 0-4 ids; SUM and MEAN tables, a shared
    table): export_model(model, masks) with no ModelConfig writes a jagged program whose
    logits equal the masked model's (1e-5) at other batch sizes too; the compact model reloads
    with its poolings."""
    dlrm = user_dlrm(kind)
    masks = masks_for(dlrm, ["user", "hist_item", "ctx", "geo"])  # 'item' pruned, its shared table kept
    dense, kjt = multi_hot(96, seed=3)
    out = str(tmp_path / "exp")
    man = export_model(dlrm, masks, out, sample=(dense, kjt))
    assert man["program"]["form"] == "jagged" and man["features"]["kept"] == ["user", "hist_item", "ctx", "geo"]
    assert man["tables"]["kept"] == {"user_table": 40, "item_emb": 60, "ctx_emb": 12, "geo": 25}
    assert man["program"]["pooling"]["item_emb"] == "MEAN" and man["program"]["max_abs_diff_vs_module"] <= 1e-5
    prog = load_program(out)
    for n, seed in ((96, 3), (1, 4), (33, 5)):
        d, k = multi_hot(n, seed)
        ref = masked_logits(dlrm, masks, d, k)
        with torch.no_grad():
            got = prog(d, *jagged_of(k, man["features"]["kept"]))
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(load_compact(out)(d, k).squeeze(-1), ref, atol=1e-5, rtol=0)
    assert ref.std() > 1e-3  # the check is not on constant logits


def test_served_tables_pool_sum_and_mean_by_hand():
    """Generated rows: pooled bags (SUM, MEAN, an empty bag, a shared table) equal the sums
    written out by hand, and int4 codes unpack low nibble first."""
    g = torch.Generator().manual_seed(0)
    wa, wb = torch.randn(10, 4, generator=g), torch.randn(7, 4, generator=g)
    st = ServedTables([TableData.fp32("ta", ["a"], wa), TableData.fp32("tb", ["b", "c"], wb, "MEAN")])
    lengths = torch.tensor([[1, 0], [2, 1], [0, 3]])
    x = st.pool(torch.tensor([3, 1, 2, 6, 4, 5, 0]), lengths)
    torch.testing.assert_close(x[0], torch.stack([wa[3], (wb[1] + wb[2]) / 2, torch.zeros(4)]))
    torch.testing.assert_close(x[1], torch.stack([torch.zeros(4), wb[6], (wb[4] + wb[5] + wb[0]) / 3]))
    packed = torch.tensor([[0x21, 0x43]], dtype=torch.uint8)
    got = dequantize("int4", packed, torch.tensor([2.0]).half(), torch.tensor([-1.0]).half(), 3)
    assert got.tolist() == [[1.0, 3.0, 5.0]]  # codes 1, 2, 3 (the 4th code, beyond D, dropped)


def test_per_table_dtypes_program_matches_torchrec_quant_and_runs_in_fresh_process(tmp_path):
    """Generated weights and multi-hot ids: --dtype int8 with largest:1=int4 and ctx_emb=fp16
    gives each table its dtype through TorchRec's quantize_inference_model; the program's
    logits equal TorchRec's quantized module's (1e-5), the manifest reports bytes and the
    logit difference against fp32 (non-zero, small), and the program loads and gives the
    same logits in a fresh process that imports only torch."""
    dlrm = user_dlrm("cat")
    masks = masks_for(dlrm, ["user", "item", "ctx", "geo"])
    dense, kjt = multi_hot(128, seed=7)
    out = tmp_path / "exp"
    man = export_model(dlrm, masks, str(out), dtype="int8", table_dtypes="largest:1=int4,ctx_emb=fp16",
                       sample=(dense, kjt))
    dt = man["dtypes"]
    assert {t: e["dtype"] for t, e in dt["tables"].items()} == {"user_table": "int8", "item_emb": "int4",
                                                                 "ctx_emb": "fp16", "geo": "int8"}
    assert dt["tables"]["item_emb"]["bytes"] == 60 * (4 + 4) and dt["tables"]["user_table"]["bytes"] == 40 * (8 + 4)
    assert dt["tables"]["ctx_emb"]["bytes"] == 12 * 16 and dt["embedding_bytes"] < dt["fp32_embedding_bytes"] / 2
    assert man["program"]["max_abs_diff_vs_module"] <= 1e-5  # against TorchRec's quantized module
    diff = dt["logit_diff_vs_fp32"]
    assert 0 < diff["mean"] <= diff["max"] < 0.05 and diff["rows"] == 128
    assert "model_int8.pt" not in os.listdir(out) and "AtomicCounter" in dt["program_tables"]
    kept = man["features"]["kept"]
    cases = {n: (d, *jagged_of(k, kept)) for n, (d, k) in ((n, multi_hot(n, seed=n)) for n in (1, 50))}
    with torch.no_grad():
        prog = load_program(str(out))
        expected = {n: (c, prog(*c)) for n, c in cases.items()}
    worst, _, bad = run_in_fresh_process(str(out / "program.pt2"), expected, str(tmp_path))
    assert worst == 0.0 and bad == []


def test_uniform_int8_ids_program_keeps_the_int8_state_dict(tmp_path):
    """Generated weights, one id per feature: int8=True (the old --int8) serves int8 tables in
    an ids program and still writes model_int8.pt, whose module gives the reported difference."""
    dlrm = user_dlrm("dot")
    masks = masks_for(dlrm, FEATURES)
    man = export_model(dlrm, masks, str(tmp_path / "e"), int8=True)
    assert man["program"]["form"] == "ids" and set(t["dtype"] for t in man["dtypes"]["tables"].values()) == {"int8"}
    assert man["int8"]["max_abs_logit_diff"] == pytest.approx(man["dtypes"]["torchrec_quant_logit_diff_vs_fp32_max"])
    assert "model_int8.pt" in os.listdir(tmp_path / "e") and man["program"]["max_abs_diff_vs_module"] <= 1e-5
    q = load_compact(str(tmp_path / "e"), int8=True)
    assert layout.embedding_configs(q)[1].pooling == PoolingType.MEAN
    with pytest.raises(ValueError, match="int8=True"):
        export_model(dlrm, masks, str(tmp_path / "f"), int8=True, dtype="int4")


def test_table_dtype_rules_precedence_and_errors():
    """Pure function: a named table wins over largest:K, which wins over the default; bad rules
    and unknown tables are refused with the rule in the message; pruned names are ignored."""
    sizes = {"a": 100, "b": 10, "c": 50, "d": 50}
    assert resolve(sizes, "int8", "largest:2=int4,a=fp32") == ({"a": "fp32", "b": "int8", "c": "int4", "d": "int8"},
                                                                [])
    assert resolve(sizes, "fp32", {"largest:3": "fp16", "largest:1": "int4"})[0] == {
        "a": "int4", "b": "fp32", "c": "fp16", "d": "fp16"}
    assert resolve(sizes, "fp32", "gone=int4", pruned=["gone"]) == ({t: "fp32" for t in sizes}, ["gone"])
    for bad, msg in (("a=int3", "dtype must be one of"), ("largest:0=int4", "positive integer"), ("a", "NAME=DTYPE"),
                     ("a=int4,a=int8", "two dtypes")):
        with pytest.raises(ValueError, match=msg):
            parse_rules(bad)
    with pytest.raises(ValueError, match=r"\['zz'\]"):
        resolve(sizes, "fp32", "zz=int4")


def test_models_without_export_surgery_are_refused_by_name(tmp_path):
    """Generated weights: a model with no DLRM or SimpleDeepFMNN inside, and a DLRM whose
    interaction the surgery does not know (DLRM_Projection), are refused, naming them."""
    from torchrec.models.dlrm import DLRM_Projection

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=5,
                                                            feature_names=["f"])])
    head = torch.nn.Sequential(torch.nn.Linear(4, 1))
    with pytest.raises(TypeError, match="no torchrec DLRM found inside Sequential.*no export surgery"):
        export_model(head, None, str(tmp_path / "a"))
    proj = DLRM_Projection(ebc, 3, [8, 4], [8, 1], interaction_branch1_layer_sizes=[4, 8],
                           interaction_branch2_layer_sizes=[4, 8])
    with pytest.raises(TypeError, match="InteractionProjectionArch"):
        export_model(proj, None, str(tmp_path / "b"))
    assert not os.listdir(tmp_path)


def deepfm_model():
    """torchrec's SimpleDeepFMNN with a shared MEAN table (generated weights)."""
    from torchrec.models.deepfm import SimpleDeepFMNN

    torch.manual_seed(0)
    tables = [EmbeddingBagConfig(name="user_table", embedding_dim=8, num_embeddings=40, feature_names=["user"]),
              EmbeddingBagConfig(name="item_emb", embedding_dim=8, num_embeddings=60,
                                 feature_names=["item", "hist_item"], pooling=PoolingType.MEAN),
              EmbeddingBagConfig(name="ctx_emb", embedding_dim=8, num_embeddings=12, feature_names=["ctx"]),
              EmbeddingBagConfig(name="geo", embedding_dim=8, num_embeddings=25, feature_names=["geo"])]
    return SimpleDeepFMNN(4, EmbeddingBagCollection(tables=tables), hidden_layer_size=16, deep_fm_dimension=12).eval()


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_declared_deepfm_export_equals_the_masked_model(dtype, tmp_path):
    """Generated weights and multi-hot ids: a SimpleDeepFMNN declared with declare_groups (as in
    its docstring), masked through the GroupSpec's keep multipliers (2 features, 5 of 12 deep
    units pruned), exports to a jagged program whose outputs equal the masked model's (1e-5,
    fp32), or TorchRec's quantized module's (int8); the compact model reloads."""
    from umec_torchrec.umec.groups import declare_groups, feature_tables

    fm = deepfm_model()
    deep, over = fm.inter_arch.deep_fm.dense_module[0], fm.over_arch.model[0]
    spec = declare_groups(deep, {f: range(8 * (k + 1), 8 * (k + 2)) for k, f in enumerate(FEATURES)},
                          chain=[(over, 8)], feature_tables=feature_tables(fm))
    pruned_f = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])  # item, ctx
    pruned_u = torch.zeros(12)
    pruned_u[[0, 3, 4, 9, 11]] = 1.0
    masks = PruningMasks(FEATURES, ["user", "hist_item", "geo"], {"layer0": [1, 2, 5, 6, 7, 8, 10]}, {"layer0": 12})
    dense, kjt = multi_hot(80, seed=11)
    man = export_model(fm, masks, str(tmp_path / "e"), dtype=dtype, sample=(dense, kjt))
    with torch.no_grad():
        for p, keep in spec.keep_multipliers([pruned_f, pruned_u]).items():
            p.mul_(keep)
        ref = fm(dense, FeatureMask(masks.pruned_features)(kjt)).squeeze(-1)
        got = load_program(str(tmp_path / "e"))(dense, *jagged_of(kjt, man["features"]["kept"]))
        compact = load_compact(str(tmp_path / "e"))
        torch.testing.assert_close(compact(dense, kjt).squeeze(-1), ref, atol=1e-5, rtol=0)
    assert man["kind"] == "deepfm" and man["layers"]["deep"] == {"before": 12, "after": 7}
    assert man["tables"]["pruned"] == {"ctx_emb": 12} and man["program"]["form"] == "jagged"
    assert man["program"]["max_abs_diff_vs_module"] <= 1e-5 and ref.std() > 1e-4
    if dtype == "fp32":
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    else:
        assert 0 < man["dtypes"]["logit_diff_vs_fp32"]["max"] < 1e-2
        assert man["dtypes"]["embedding_bytes"] < man["dtypes"]["fp32_embedding_bytes"] / 2


def test_cli_dtype_flags(tmp_path, capsys):
    """Generated weights (a small trained-format run): `umec export --dtype int8 --table-dtype
    largest:1=int4` writes those dtypes; --int8 still works and says it is deprecated; a bad rule
    fails in one line before anything is written."""
    from test_export import make_run

    from umec_torchrec.cli import main

    run, cfg, masks, _ = make_run(tmp_path, kind="cat")
    out = str(tmp_path / "q")
    assert main(["export", "--from", run.path, "--out", out, "--dtype", "int8", "--table-dtype", "largest:1=int4"]) == 0
    man = json.load(open(os.path.join(out, "manifest.json")))
    kinds = [t["dtype"] for t in man["dtypes"]["tables"].values()]
    assert sorted(kinds) == ["int4"] + ["int8"] * (len(kinds) - 1) and "logit diff vs fp32" in capsys.readouterr().out
    assert main(["export", "--from", run.path, "--out", str(tmp_path / "o"), "--int8"]) == 0
    assert "deprecated, use --dtype int8" in capsys.readouterr().err
    assert main(["export", "--from", run.path, "--out", str(tmp_path / "bad"), "--table-dtype", "x=int9"]) == 2
    err = capsys.readouterr().err
    assert "x=int9" in err and len(err.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "bad")


def test_jagged_predictor_equals_the_module_on_empty_and_full_bags():
    """Generated weights: the jagged predictor (eager) equals the TorchRec module on a batch
    whose bags are all empty and on one with a single large bag."""
    dlrm = user_dlrm("dot")
    pred = JaggedPredictor(dlrm).eval()
    lengths = torch.zeros(len(FEATURES), 3, dtype=torch.long)
    lengths[1, 2] = 9
    values = torch.arange(9)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=values, lengths=lengths.reshape(-1).int())
    dense = torch.rand(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(pred(dense, values, lengths), dlrm(dense, kjt).squeeze(-1), atol=1e-6, rtol=0)


def test_fp32_ids_program_reads_a_shared_table_for_each_of_its_features(tmp_path):
    """Generated weights, one id per feature: the fp32 ids program (the model's own tables)
    looks each feature up in its table when a table is shared by two features, and equals the
    module (1e-5)."""
    from umec_torchrec.export.program import CompactPredictor

    dlrm = user_dlrm("cat")
    ids = torch.stack([torch.arange(6) % n for n in (40, 60, 60, 12, 25)], dim=1)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=ids.t().reshape(-1),
                                              lengths=torch.ones(6 * 5, dtype=torch.int32))
    dense = torch.rand(6, 4)
    with torch.no_grad():
        ref = dlrm(dense, kjt).squeeze(-1)
        torch.testing.assert_close(CompactPredictor(dlrm)(dense, ids), ref, atol=1e-5, rtol=0)
    man = export_model(dlrm, None, str(tmp_path / "e"))
    assert man["program"]["form"] == "ids" and man["program"]["max_abs_diff_vs_module"] <= 1e-5


def test_torchrec_quantized_module_still_cannot_be_exported():
    """Generated weights: the reason the program dequantizes in aten ops (docs/export.md) still
    holds: torch.export of TorchRec's quantized DLRM fails on fbgemm's TBE script object. If this
    starts to pass, the fallback and its documentation should be revisited."""
    from umec_torchrec.export import build_compact
    from umec_torchrec.export.compact import tag_config
    from umec_torchrec.export.quantize import quantize_tables
    from umec_torchrec.export.samples import one_id_kjt

    cfg, _ = module_config(user_dlrm("dot"))
    compact = tag_config(build_compact(user_dlrm("dot"), cfg, PruningMasks(FEATURES, FEATURES)), cfg)
    q, _ = quantize_tables(compact, {t: "int8" for t in ROWS})
    kjt = one_id_kjt(torch.zeros(2, 5, dtype=torch.long), FEATURES)
    with pytest.raises(Exception, match="AtomicCounter|fake"):
        torch.export.export(q, (torch.rand(2, 4), kjt), strict=False)


def test_multi_hot_model_config_exports_a_jagged_program(tmp_path):
    """Generated weights and multi-hot ids: a ModelConfig with multi-hot features
    (ids_per_sample) and a MEAN table exports, with inputs='auto' and no check rows, a jagged
    program whose logits equal the masked model's (1e-5)."""
    from umec_torchrec.models import ModelConfig, build_dlrm

    cfg = ModelConfig("cat", FEATURES, [40, 60, 60, 12, 25], 4, embedding_dim=8, bottom=[20, 8], top=[24, 10, 1],
                      pooling={"t_item": "mean"}, ids_per_sample={"item": 2.0, "hist_item": 2.0})
    torch.manual_seed(0)
    dlrm = build_dlrm(cfg).eval()
    masks = masks_for(dlrm, ["user", "item", "geo"])
    man = export_model(dlrm, cfg, masks, str(tmp_path / "e"))  # the old call form
    assert man["program"]["form"] == "jagged" and man["pooling"]["t_item"] == "MEAN"
    dense, kjt = multi_hot(40, seed=2)
    ref = masked_logits(dlrm, masks, dense, kjt)
    with torch.no_grad():
        got = load_program(str(tmp_path / "e"))(dense, *jagged_of(kjt, man["features"]["kept"]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert module_config(dlrm)[0].pooling == {"t_item": "mean"}
