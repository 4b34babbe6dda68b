"""The TorchX components of ``torchx_components/umec.py`` take what a cluster user passes to
``dist.ddp`` (named resources, mounts, rendezvous backend, retries, env, debug), name the
role after the stage, and pass TorchX's own component checks. No data involved: each test
builds AppDefs the way ``torchx run`` does (``materialize_appdef`` over command-line words)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchx", reason="torchx is not installed (pip install torchx==0.7.0)")

from torchx import specs  # noqa: E402
from torchx.components.dist import ddp  # noqa: E402
from torchx.specs.builders import materialize_appdef  # noqa: E402
from torchx.specs.file_linter import validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_FILE = ROOT / "torchx_components" / "umec.py"
STAGES = ("train", "compress", "finetune")
#: the ``dist.ddp`` parameters a cluster user needs from each component
CLUSTER_PARAMS = ("h", "j", "cpu", "gpu", "memMB", "env", "mounts", "max_retries", "rdzv_port", "rdzv_backend",
                  "debug", "name", "image")


@pytest.fixture(scope="module")
def comp():
    sys.path.insert(0, str(ROOT))
    try:
        from torchx_components import umec
    finally:
        sys.path.remove(str(ROOT))
    return umec


@pytest.mark.parametrize("stage", STAGES)
def test_component_passes_torchx_linter_and_takes_ddp_params(comp, stage):
    assert [m.description for m in validate(str(COMPONENT_FILE), stage)] == []
    params = inspect.signature(getattr(comp, stage)).parameters
    ddp_params = inspect.signature(ddp).parameters
    for name in CLUSTER_PARAMS:
        assert name in params, f"{stage} lacks {name}"
        assert params[name].annotation == ddp_params[name].annotation or name == "name", name
    doc = inspect.getdoc(getattr(comp, stage))
    for name in CLUSTER_PARAMS:
        assert f"    {name}:" in doc, f"{stage}: {name} not documented"


@pytest.mark.parametrize("stage", STAGES)
def test_cluster_flags_reach_the_appdef(comp, stage):
    words = ["--h", "aws_t3.medium", "--j", "2x2", "--mounts", "type=bind,src=/data,dst=/data,readonly",
             "--rdzv_backend", "static", "--max_retries", "3", "--env", "A=1,B=two", "--debug", "True",
             "--", "--from", "runs/x", "--out", "runs/y"]
    app = materialize_appdef(getattr(comp, stage), words)
    (role,) = app.roles
    assert role.name == stage and app.name == f"umec-{stage}"
    assert role.resource == specs.named_resources["aws_t3.medium"]
    assert role.num_replicas == 2 and role.max_retries == 3
    (mount,) = role.mounts
    assert isinstance(mount, specs.BindMount) and (mount.src_path, mount.dst_path, mount.read_only) == \
        ("/data", "/data", True)
    cmd = " ".join(role.args)
    assert "--rdzv_backend static" in cmd and "--node_rank" in cmd, cmd
    assert f"-m umec_torchrec.cli {stage} --from runs/x --out runs/y" in cmd, cmd
    assert role.env["A"] == "1" and role.env["B"] == "two"
    assert role.env["TORCH_DISTRIBUTED_DEBUG"] == "DETAIL" and role.env["UMEC_DEBUG"] == "1"


def test_defaults_are_cpu_gloo_with_the_documented_image(comp):
    app = comp.compress("--from", "runs/x")
    (role,) = app.roles
    assert role.image == comp.IMAGE and role.resource.gpu == 0 and role.max_retries == 0
    assert "UMEC_DEBUG" not in role.env and "TORCH_DISTRIBUTED_DEBUG" not in role.env
    assert "--rdzv_backend c10d" in " ".join(role.args)
    doc = inspect.getdoc(comp.compress)
    assert "TorchRec" in doc and "Dockerfile" in doc


def test_unknown_named_resource_is_one_clear_error(comp):
    with pytest.raises(ValueError, match=r"h='no_such_host'.*named resource"):
        comp.train("--out", "runs/x", h="no_such_host")


def test_dockerfile_installs_torchrec_and_this_package(comp):
    text = (ROOT / "Dockerfile").read_text()
    run_lines = " ".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "torchrec==" in run_lines and "fbgemm" in run_lines
    assert "COPY torchx_components" in run_lines and "COPY umec_torchrec" in run_lines
    assert "pip install --no-cache-dir --no-deps ." in run_lines
    assert f"-t {comp.IMAGE}" in text  # the build command documented in the file tags the default image
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored  # the build context stays small
