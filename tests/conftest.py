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


@pytest.fixture(scope="session")
def math_data_dir(math_pickle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A data directory holding the imported MATH table; ``IAPO_GYM_DATA`` points at it for the session."""
    import os

    from iapo_gym.tables.store import import_file

    directory = tmp_path_factory.mktemp("iapo-data")
    old = os.environ.get("IAPO_GYM_DATA")
    os.environ["IAPO_GYM_DATA"] = str(directory)
    import_file(math_pickle, name="MATH")
    yield directory
    if old is None:
        os.environ.pop("IAPO_GYM_DATA", None)
    else:
        os.environ["IAPO_GYM_DATA"] = old
