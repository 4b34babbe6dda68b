"""The installed package (not the checkout) has the TorchX components, one version string,
the LICENSE that ``setup.cfg`` names, and the optional extras. No data involved: the
sources are copied to a temporary directory, installed with pip into a ``--target``
folder (no dependencies, no index, this environment's setuptools), and imported from there
in a fresh interpreter."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import pytest

import umec_torchrec

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "umec_torchrec", "torchx_components")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    setuptools = pytest.importorskip("setuptools", reason="setuptools is not installed: no build without an index")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.importorskip("wheel", reason=f"setuptools {setuptools.__version__} builds wheels only with 'wheel'")
    tmp = tmp_path_factory.mktemp("pkg")
    src, site = tmp / "src", tmp / "site"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return site


def _metadata(site: Path):
    (info,) = site.glob("umec_torchrec-*.dist-info")
    return info, Parser().parsestr((info / "METADATA").read_text())


def test_installed_package_has_components_version_license_and_extras(installed):
    assert (installed / "torchx_components" / "umec.py").is_file()
    info, meta = _metadata(installed)
    assert meta["Version"] == umec_torchrec.__version__
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"].strip() == "attr: umec_torchrec.__version__"  # one version string
    license_id = cfg["metadata"]["license"].strip()
    assert license_id == "BSD-3-Clause" and license_id in (meta["License-Expression"] or meta["License"] or "")
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text
    assert any(p.read_text() == text for p in info.rglob("LICENSE")), "LICENSE is not in the wheel"
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"plots", "tensorboard", "torchx"} <= extras, extras
    reqs = " ".join(meta.get_all("Requires-Dist") or [])
    for pkg, extra in (("matplotlib", "plots"), ("tensorboard", "tensorboard"), ("torchx", "torchx")):
        assert f'extra == "{extra}"' in reqs and pkg in reqs, reqs


def test_components_and_version_import_from_the_installed_copy(installed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    code = ("import torchx_components.umec as m, umec_torchrec as u; "
            "print(m.__file__); print(u.__file__); print(m.compress('--from', 'r').roles[0].name)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    comp_file, pkg_file, role = r.stdout.split()
    assert Path(comp_file).is_relative_to(installed) and Path(pkg_file).is_relative_to(installed), r.stdout
    assert role == "compress"
    r = subprocess.run([sys.executable, "-m", "umec_torchrec", "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"umec {umec_torchrec.__version__}", r.stdout + r.stderr
