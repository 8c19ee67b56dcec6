"""Shared test setup: offline HF, a session-wide cache, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from paths import SHARED_DATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def ntng_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so tokenizers and packed data are built once."""
    path = tmp_path_factory.mktemp("ntng-cache")
    os.environ["NTNG_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Runs the tests start log to a throwaway SQLite store, never the working folder's."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture
def shared_data() -> Path:
    """The project's shared real data; absent on users' machines, present in CI."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it exists only in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for every test that needs Ray, started on first use.

    Sized in logical CPUs for a driver and two workers (Ray schedules by logical CPUs).
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()
