"""Shared fixtures: paths to the real data beside the checkout (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MATH_PICKLE = SHARED_DATA / "published" / "MATH_final.pkl"
DATASETS = SHARED_DATA / "datasets"


@pytest.fixture(scope="session")
def math_pickle() -> Path:
    """The paper's released MATH table (../shared/data/published/MATH_final.pkl)."""
    if not MATH_PICKLE.exists():
        pytest.skip(f"the released MATH table is not at {MATH_PICKLE} (../shared is absent in this clone)")
    return MATH_PICKLE


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """Real benchmark questions (../shared/data/datasets)."""
    if not DATASETS.exists():
        pytest.skip(f"benchmark questions are not at {DATASETS} (../shared is absent in this clone)")
    return DATASETS
