"""Everything in this folder is the slow tier: Ray, DeepSpeed, sweeps, the cluster, end-to-end runs.

`python -m pytest -m "not integration"` leaves it out (the fast unit tier); CI runs both tiers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
