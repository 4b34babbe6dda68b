"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real Criteo / Frappe samples); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared Criteo/Frappe sample")
    return SHARED_DATA


@pytest.fixture(scope="session")
def criteo_sample(shared_data: Path) -> Path:
    """The real 19,532-row Criteo Kaggle sample (gzip TSV); skips when absent."""
    p = shared_data / "criteo_kaggle_train_sample.tsv.gz"
    if not p.is_file():
        pytest.skip(f"{p} not found: real-data test needs the shared Criteo sample")
    return p


@pytest.fixture(scope="session")
def frappe_sample(shared_data: Path) -> Path:
    """The real 57,722-row Frappe validation split (gzip libsvm); skips when absent."""
    p = shared_data / "frappe" / "frappe.valid.libsvm.gz"
    if not p.is_file():
        pytest.skip(f"{p} not found: real-data test needs the shared Frappe sample")
    return p
