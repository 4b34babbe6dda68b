"""The latency predictor (umec/latency.py) and the ``latency`` budget: the predictor equals its
calibration table at the grid points and is monotone between them, it reduces to a known
formula (the FLOPs resource) for a bilinear table, a latency budget is met by ``finalize()``,
and bad tables / missing tables give one-line errors. Generated tables and generated data
(tests/helpers/data.py); no timing is asserted."""

from __future__ import annotations

from typing import Dict, Optional

import pytest
import torch

from helpers.data import random_data
from helpers.models import small_model
from helpers.umec_steps import umec_steps
from umec_torchrec.umec.allocation import kept_of_masks
from umec_torchrec.umec.budgets import Budget
from umec_torchrec.umec.groups import discover_groups
from umec_torchrec.umec.latency import (
    DTYPES,
    LatencyPredictor,
    LatencyTable,
    ServingDtypes,
    interp1,
    interp2,
    monotone,
    predict_program,
    reported_resources,
    using_latency_table,
)
from umec_torchrec.umec.optimizer import UMECConfig, UMECOptimizer
from umec_torchrec.umec.resources import make_resource

K = 1e-9  # seconds per multiply-add of the bilinear table


def _grid(top: int) -> list:
    g, w = [], 1
    while w < top:
        g.append(w)
        w *= 2
    return g + [top]


def bilinear_table(max_in: int = 256, max_out: int = 64, fields: int = 8, lookup_s: float = 2e-6,
                   overhead_s: float = 1e-5, kind: str = "cat", dim: int = 8,
                   other_dtypes: Optional[Dict[str, float]] = None) -> LatencyTable:
    """A generated table whose Linear time is exactly ``K * in * out`` (bilinear, so the
    interpolation is exact everywhere), a constant lookup per field (fp32 ``lookup_s``, and
    one section per entry of ``other_dtypes``) and no interaction cost."""
    ins, outs = _grid(max_in), _grid(max_out)
    costs = {"fp32": lookup_s, **(other_dtypes or {})}
    return LatencyTable(
        batch=64, align=1, embedding_dim=dim, kind=kind, linear_in=ins, linear_out=outs,
        linear_s=[[K * i * o for o in outs] for i in ins],
        lookup={d: {"rows": [1, 10**6], "seconds": [c, c]} for d, c in costs.items()},
        interaction_inputs=[1, fields + 1], interaction_s=[0.0, 0.0], overhead_s=overhead_s,
        conditions={"threads": 1, "torch": torch.__version__})


def random_table(seed: int = 0) -> LatencyTable:
    """A generated table with random monotone (non-linear) values."""
    g = torch.Generator().manual_seed(seed)
    ins, outs = [3, 16, 32, 80, 128, 256], [1, 8, 16, 48, 64]
    lin = monotone(torch.rand(len(ins), len(outs), generator=g, dtype=torch.float64) * 1e-4)
    rows = [10, 1000, 10**5, 10**7]
    look = monotone(torch.rand(len(rows), generator=g, dtype=torch.float64) * 1e-5)
    inter = monotone(torch.rand(4, generator=g, dtype=torch.float64) * 1e-5)
    return LatencyTable(batch=64, align=16, embedding_dim=8, kind="cat", linear_in=ins, linear_out=outs,
                        linear_s=lin.tolist(), lookup={"fp32": {"rows": rows, "seconds": look.tolist()}},
                        interaction_inputs=[2, 3, 5, 9], interaction_s=inter.tolist(), overhead_s=3e-5)


def test_predictor_equals_the_table_at_grid_points_and_is_monotone_between():
    t = random_table()
    ins = torch.tensor(t.linear_in, dtype=torch.float64)
    outs = torch.tensor(t.linear_out, dtype=torch.float64)
    gi, go = torch.meshgrid(ins, outs, indexing="ij")
    assert torch.allclose(t.linear(gi, go), torch.tensor(t.linear_s, dtype=torch.float64), rtol=0, atol=1e-15)
    m = torch.tensor(t.interaction_inputs, dtype=torch.float64)
    assert torch.allclose(t.interaction(m), torch.tensor(t.interaction_s, dtype=torch.float64), rtol=0, atol=1e-15)
    body = t.lookup["fp32"]
    assert torch.allclose(t.lookup_seconds(body["rows"], [4.0] * len(body["rows"])),
                          torch.tensor(body["seconds"], dtype=torch.float64), rtol=0, atol=1e-15)
    # a fine mesh over and beyond the grid: non-decreasing along both axes
    xi = torch.linspace(1, 300, 181, dtype=torch.float64)
    yo = torch.linspace(1, 70, 139, dtype=torch.float64)
    X, Y = torch.meshgrid(xi, yo, indexing="ij")
    v = t.linear(X, Y)
    assert (v.diff(dim=0) >= -1e-18).all() and (v.diff(dim=1) >= -1e-18).all()
    assert (t.interaction(torch.linspace(1, 12, 200, dtype=torch.float64)).diff() >= -1e-18).all()
    r = torch.logspace(0, 8, 100, dtype=torch.float64).tolist()
    assert (t.lookup_seconds(r, [4.0] * len(r)).diff() >= -1e-18).all()
    # between two grid points the value lies between theirs (interpolation, not extrapolation)
    mid = t.linear(torch.tensor(24.0, dtype=torch.float64), torch.tensor(12.0, dtype=torch.float64))
    lo = t.linear_s[1][1]
    hi = t.linear_s[2][2]
    assert lo <= float(mid) <= hi


def test_interp_helpers_known_values():
    xp, fp = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([10.0, 20.0, 40.0])
    assert interp1(torch.tensor([0.0, 1.0, 1.5, 3.0, 4.0, 9.0]), xp, fp).tolist() == [10.0, 10.0, 15.0, 30.0, 40.0,
                                                                                        40.0]
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    grid = torch.tensor([0.0, 1.0])
    assert float(interp2(torch.tensor(0.5), torch.tensor(0.5), grid, grid, f)) == pytest.approx(1.5)
    # a spike is lowered to what follows it (timing noise only adds time), never spread onward
    assert monotone(torch.tensor([1.0, 5.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 2.0, 3.0]
    assert monotone(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).tolist() == [[0.0, 0.0], [0.0, 2.0]]


def test_bilinear_table_gives_the_flops_formula_at_any_kept_counts():
    """With Linear time K * in * out, one lookup cost per field and no interaction cost, the
    predicted latency of a ``cat`` DLRM is overhead + K/2 * FLOPs + lookup * kept fields, at
    every kept-count vector (the FLOPs resource is checked against FlopCounterMode elsewhere)."""
    data = random_data(n=64, features=5, dense=3)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    spec = discover_groups(model)
    table = bilinear_table(max_in=64, max_out=16, fields=5)
    pred = LatencyPredictor(spec, table)
    flops = make_resource("flops", spec)
    g = torch.Generator().manual_seed(0)
    full = torch.tensor([float(s.size) for s in spec.sets])
    kept = torch.floor(torch.rand(20, len(full), generator=g) * full) + 1.0
    alive = (torch.rand(20, spec.feature_set.size, generator=g) < 0.6).float()
    kept[:, 0] = alive.sum(1)
    want = table.overhead_s + K / 2 * flops(kept.double(), alive.double()) + 2e-6 * alive.double().sum(1)
    got = pred(kept.double(), alive.double())
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-15)
    table.program_factor = 1.5  # the pieces inside the program: scaled, the overhead not
    got = LatencyPredictor(spec, table)(kept.double(), alive.double())
    assert torch.allclose(got, table.overhead_s + 1.5 * (want - table.overhead_s), rtol=1e-9, atol=1e-15)


def test_per_field_term_adds_to_every_kept_field():
    """``field_s`` (the per-kept-field term) adds ``field_s`` per kept feature to the resource
    and to predict_program (outside the program factor); a file without it reads as 0; one
    that would make a field cost less than nothing is refused."""
    data = random_data(n=64, features=5, dense=3)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    spec = discover_groups(model)
    table = bilinear_table(max_in=64, max_out=16, fields=5)
    table.program_factor = 1.5
    g = torch.Generator().manual_seed(1)
    full = torch.tensor([float(s.size) for s in spec.sets])
    kept = torch.floor(torch.rand(10, len(full), generator=g) * full).double() + 1.0
    alive = (torch.rand(10, spec.feature_set.size, generator=g) < 0.6).double()
    base = LatencyPredictor(spec, table)(kept, alive)
    with_term = LatencyTable.from_dict(dict(table.to_dict(), field_s=-1e-6))
    got = LatencyPredictor(spec, with_term)(kept, alive)
    assert torch.allclose(got, base - 1e-6 * alive.sum(1), rtol=1e-9, atol=1e-15)
    args = ("cat", 8, 3, [16, 8], [16, 8, 1], [10, 100, 1000])
    assert predict_program(with_term, *args)["total"] == pytest.approx(predict_program(table, *args)["total"] - 3e-6)
    old = table.to_dict()
    old.pop("field_s")
    assert LatencyTable.from_dict(old).field_s == 0.0
    with pytest.raises(ValueError, match="LAT.json: field 'field_s' must be >= -program_factor x the cheapest"):
        LatencyTable.from_dict(dict(table.to_dict(), field_s=-1e-5), source="LAT.json")


def test_predicted_latency_falls_with_every_pruned_group():
    """Monotone in every kept count: removing one group of any set never raises the prediction
    (random monotone table), and with a strictly increasing table it strictly lowers it (exact
    widths, so the primal-dual step sees every unit, not only every 16th)."""
    data = random_data(n=64, features=5, dense=3)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    spec = discover_groups(model)
    for table, strict in ((random_table(1), False), (bilinear_table(max_in=64, max_out=16, fields=5), True)):
        with using_latency_table(table):
            lat = make_resource("latency", spec)
        full = torch.tensor([[float(s.size) for s in spec.sets]], dtype=torch.float64)
        alive = torch.ones(1, spec.feature_set.size, dtype=torch.float64)
        base = float(lat(full, alive))
        for li, gs in enumerate(spec.sets):
            k = full.clone()
            k[0, li] -= 1
            a = alive.clone()
            if gs.kind == "features":
                a[0, 0] = 0.0
            after = float(lat(k, a))
            assert (after < base) if strict else (after <= base + 1e-18), (gs.name, after, base)


def test_a_latency_budget_is_met_by_finalize():
    """Generated data: UMEC under latency=0.5 (relative) and under an absolute latency in
    seconds; after finalize() the predicted latency of the masks (recomputed from the table)
    is within the budget, like any other resource."""
    data = random_data(n=512, features=6, dense=3)
    table = bilinear_table(max_in=64, max_out=16, fields=6, lookup_s=3e-6, overhead_s=5e-6)
    for budget in ("latency=0.5", "abs"):
        model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
        with using_latency_table(table):
            spec = discover_groups(model)
            dense_s = LatencyPredictor(spec, table)(torch.tensor([[float(s.size) for s in spec.sets]]),
                                                    torch.ones(1, spec.feature_set.size))
            text = budget if budget != "abs" else f"latency=abs:{1e6 * 0.4 * float(dense_s):.6f}us"
            umec = UMECOptimizer(torch.optim.Adagrad(model.parameters(), lr=0.05), model, [text],
                                 UMECConfig(score="weight"))
        umec_steps(model, umec, data.batches(64, shuffle=True, seed=0))
        masks = umec.finalize()
        frac = umec.resource_fractions()["latency"]
        limit = 0.5 if budget != "abs" else 0.4
        assert frac <= limit + 1e-6, (budget, frac)
        kept, alive = kept_of_masks(spec, masks)
        again = float(LatencyPredictor(spec, table)(kept.double(), alive.double())[0]) / float(dense_s)
        assert again == pytest.approx(frac, rel=1e-5) and again <= limit + 1e-6
        assert masks.kept_units() != {n: w for n, w in masks.layer_widths.items()} or len(masks.kept_features) < 6


def test_latency_budget_without_a_table_is_refused():
    data = random_data(n=64, features=3, dense=3)
    model, _ = small_model("cat", data)
    with pytest.raises(ValueError, match="latency budget needs a latency model: pass --latency-model"):
        UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["latency=0.5"], UMECConfig(score="weight"))
    assert "latency" not in reported_resources()
    with using_latency_table(random_table()):
        assert "latency" in reported_resources()


def test_table_too_small_for_the_model_is_refused():
    data = random_data(n=64, features=5, dense=3)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    small = bilinear_table(max_in=16, max_out=16, fields=5)
    with pytest.raises(ValueError, match="covers in widths up to 16, the model needs 48"):
        LatencyPredictor(discover_groups(model), small)
    with pytest.raises(ValueError, match="calibrated for a dot interaction with D=8, the model is cat"):
        LatencyPredictor(discover_groups(model), bilinear_table(max_in=64, kind="dot"))


def test_latency_budget_strings():
    assert Budget.parse("latency=abs:3ms").value == pytest.approx(3e-3)
    assert Budget.parse("latency=abs:250us").value == pytest.approx(2.5e-4)
    assert Budget.parse("latency=abs:0.003") == Budget.parse(str(Budget.parse("latency=abs:3ms")))
    assert Budget.parse("latency=0.2").relative
    with pytest.raises(ValueError, match="cannot read the absolute time '3 minutes'"):
        Budget.parse("latency=abs:3 minutes")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other/1"), "field 'format' is 'other/1'"),
    (lambda d: d.pop("overhead_s"), "missing field 'overhead_s'"),
    (lambda d: d["linear_s"][0].__setitem__(1, -1.0), "field 'linear_s' must hold finite seconds >= 0"),
    (lambda d: d["linear_s"][0].__setitem__(0, 1.0), "field 'linear_s' must be non-decreasing"),
    (lambda d: d.update(linear_s=d["linear_s"][1:]), "field 'linear_s' must be a 6 x 5 list"),
    (lambda d: d.update(interaction_inputs=[3, 2, 5, 9]), "field 'interaction_inputs' must be a non-empty list"),
    (lambda d: d["lookup"].update(int3={"rows": [1], "seconds": [0.0]}), "unknown dtype 'int3'"),
    (lambda d: d.update(extra=1), "unknown field 'extra'"),
    (lambda d: d.update(batch=0), "field 'batch' must be a positive integer"),
    (lambda d: d.update(program_factor=0.0), "field 'program_factor' must be a finite number > 0"),
])
def test_bad_tables_name_the_field(change, message):
    d = random_table().to_dict()
    change(d)
    with pytest.raises(ValueError, match="LAT.json: .*" + message.replace("(", r"\(").replace("[", r"\[")):
        LatencyTable.from_dict(d, source="LAT.json")


def test_table_round_trips_through_its_dict():
    t = random_table(3)
    assert LatencyTable.from_dict(t.to_dict()) == t


def dtype_table(seed: int = 0) -> LatencyTable:
    """:func:`random_table` with a lookup section per dtype (random, monotone, distinct)."""
    g = torch.Generator().manual_seed(seed + 100)
    t = random_table(seed)
    rows = t.lookup["fp32"]["rows"]
    t.lookup = {d: {"rows": rows, "seconds": monotone(torch.rand(len(rows), generator=g, dtype=torch.float64)
                                                      * 1e-5).tolist()} for d in DTYPES}
    t.validate()
    return t


def test_per_dtype_lookup_sections_round_trip_and_are_interpolated_per_dtype(tmp_path):
    """Each dtype's section comes back from the file unchanged; the predictor equals it at its
    grid points and is monotone in rows for each dtype; a list of mixed dtypes picks each
    table's own section; the first format's ``float32`` name is read as ``fp32``."""
    from umec_torchrec.export.calibrate import load_latency_table, save_latency_table

    t = dtype_table()
    path = str(tmp_path / "LAT.json")
    save_latency_table(path, t)
    again = load_latency_table(path)
    assert again == t and set(again.lookup) == set(DTYPES) and again.source == path
    r = torch.logspace(0, 8, 100, dtype=torch.float64).tolist()
    for d in DTYPES:
        body = again.lookup[d]
        at_grid = again.lookup_seconds(body["rows"], dtypes=[d] * len(body["rows"]))
        assert torch.allclose(at_grid, torch.tensor(body["seconds"], dtype=torch.float64), rtol=0, atol=1e-15)
        assert (again.lookup_seconds(r, dtypes=[d] * len(r)).diff() >= -1e-18).all()
    rows = again.lookup["int8"]["rows"]
    mixed = again.lookup_seconds(rows[:4], dtypes=list(DTYPES))
    assert mixed.tolist() == [again.lookup[d]["seconds"][i] for i, d in enumerate(DTYPES)]
    # element sizes name the same sections: 4 bytes fp32, 2 fp16, 1 int8, 0.5 int4
    assert again.lookup_seconds(rows[:4], [4.0, 2.0, 1.0, 0.5]).tolist() == mixed.tolist()
    legacy = dict(t.to_dict(), lookup={"float32": t.lookup["fp32"], "int8": t.lookup["int8"]})
    assert set(LatencyTable.from_dict(legacy).lookup) == {"fp32", "int8"}


def test_a_latency_budget_with_int8_tables_is_met_by_finalize():
    """Generated data and a generated table whose int8 lookups cost a third of the fp32 ones:
    with the tables served in int8 (ServingDtypes) every feature is priced at the int8 section,
    the dense model is predicted faster than with fp32 tables, and after finalize() the masks'
    predicted latency (recomputed with int8 tables) is within latency=0.5."""
    data = random_data(n=512, features=6, dense=3)
    table = bilinear_table(max_in=64, max_out=16, fields=6, lookup_s=6e-6, overhead_s=5e-6,
                           other_dtypes={"int8": 2e-6})
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    int8 = ServingDtypes("int8")
    spec = discover_groups(model)
    full = torch.tensor([[float(s.size) for s in spec.sets]], dtype=torch.float64)
    alive = torch.ones(1, spec.feature_set.size, dtype=torch.float64)
    p8, p32 = LatencyPredictor(spec, table, int8), LatencyPredictor(spec, table)
    assert p8.dtypes == ["int8"] * 6 and p32.dtypes == ["fp32"] * 6
    assert float(p32(full, alive) - p8(full, alive)) == pytest.approx(6 * 4e-6, rel=1e-9)
    with using_latency_table(table, int8):
        umec = UMECOptimizer(torch.optim.Adagrad(model.parameters(), lr=0.05), model, ["latency=0.5"],
                             UMECConfig(score="weight"))
        assert umec_resource_dtypes(umec) == ["int8"] * 6
    umec_steps(model, umec, data.batches(64, shuffle=True, seed=0))
    masks = umec.finalize()
    frac = umec.resource_fractions()["latency"]
    kept, alive_m = kept_of_masks(spec, masks)
    again = float(p8(kept.double(), alive_m.double())[0]) / float(p8(full, alive)[0])
    assert frac <= 0.5 + 1e-6 and again == pytest.approx(frac, rel=1e-5)


def umec_resource_dtypes(umec: UMECOptimizer) -> list:
    """The dtypes the latency resource of ``umec`` prices (found among its resource models)."""
    from umec_torchrec.umec.resources import Latency

    found = [v for v in _walk(umec) if isinstance(v, Latency)]
    assert found, "no latency resource"
    return found[0].predictor.dtypes


def _walk(obj, depth: int = 0):
    if depth > 4:
        return
    for v in vars(obj).values() if hasattr(obj, "__dict__") else []:
        items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else [v]
        for x in items:
            yield x
            if hasattr(x, "__dict__") and not isinstance(x, (torch.Tensor, torch.nn.Module)):
                yield from _walk(x, depth + 1)


def test_a_dtype_the_calibration_lacks_is_refused_naming_it_and_the_file(tmp_path):
    """A table served in int4 priced with a calibration of fp32 and int8 lookups: the predictor,
    a latency budget and the resource refuse, naming int4 and the file; reports leave latency
    out with a warning instead of failing."""
    from umec_torchrec.export.calibrate import load_latency_table, save_latency_table

    data = random_data(n=64, features=5, dense=3)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    spec = discover_groups(model)
    path = str(tmp_path / "LAT.json")
    save_latency_table(path, bilinear_table(max_in=64, max_out=16, fields=5, other_dtypes={"int8": 1e-6}))
    table = load_latency_table(path)
    msg = (f"{path}: has no int4 lookups \\(calibrated: fp32, int8\\); "
           "calibrate with umec calibrate --dtypes fp32,int8,int4")
    with pytest.raises(ValueError, match=msg):
        LatencyPredictor(spec, table, ServingDtypes("int8", f"{spec.feature_tables[0]}=int4"))
    with using_latency_table(table, ServingDtypes("int4")):
        with pytest.raises(ValueError, match=f"{path}: has no int4 lookups"):
            UMECOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, ["latency=0.5"],
                          UMECConfig(score="weight"))
        with pytest.warns(UserWarning, match="predicted latency not reported: .*no int4 lookups"):
            assert "latency" not in reported_resources(spec)


def test_serving_dtype_rules_are_export_rules():
    """``largest:K`` picks the largest tables (rows x dim), a name picks its table, a name the
    model lacks or a bad dtype is refused naming the flag."""
    data = random_data(n=64, features=4, dense=3)
    model, _ = small_model("cat", data, dim=8, bottom=(16, 12), top=(16, 8, 1))
    spec = discover_groups(model)
    table = bilinear_table(max_in=64, max_out=16, fields=4, other_dtypes={"int8": 1e-6, "int4": 5e-7})
    tb = list(spec.feature_table_bytes)
    largest = spec.feature_tables[tb.index(max(tb))]
    named = next(t for t in spec.feature_tables if t != largest)
    pred = LatencyPredictor(spec, table, ServingDtypes("int8", f"largest:1=int4,{named}=fp32"))
    want = {t: "int4" if t == largest else "fp32" if t == named else "int8" for t in spec.feature_tables}
    assert pred.table_dtypes == want
    with pytest.raises(ValueError, match="--serve-table-dtype names tables \\['nope'\\]"):
        LatencyPredictor(spec, table, ServingDtypes("int8", "nope=int4"))
    with pytest.raises(ValueError, match="--serve-dtype must be one of fp32, fp16, int8, int4, got 'int3'"):
        ServingDtypes("int3").validate()
    with pytest.raises(ValueError, match="--serve-table-dtype: x=int3: dtype must be one of"):
        ServingDtypes("int8", "x=int3").validate()
