"""Shared test setup: offline HF, a session-wide cache, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def ntng_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so tokenizers and packed data are built once."""
    path = tmp_path_factory.mktemp("ntng-cache")
    os.environ["NTNG_CACHE_DIR"] = str(path)
    return path


@pytest.fixture
def shared_data() -> Path:
    """The project's shared real data; absent on users' machines, present in CI."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it exists only in CI)")
    return SHARED_DATA
