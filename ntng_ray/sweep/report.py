"""The sweep comparison report: read a sweep's parent and child runs (``results``), compare
every strategy with the tuned baseline per budget, and write Markdown, HTML and PNG plots
(``render``), published on the sweep's parent run.

This module is the entry ``ntng report`` and the sweep use: build, render, publish.
"""

from __future__ import annotations

from ntng_ray.sweep.render import (
    publish_report,
    render_html,
    render_markdown,
    write_report,
)
from ntng_ray.sweep.results import (
    BudgetResult,
    StrategyResult,
    SweepReport,
    budget_label,
    build_report,
    find_parent_run,
    open_report_client,
    open_results,
)

__all__ = [
    "BudgetResult",
    "StrategyResult",
    "SweepReport",
    "budget_label",
    "build_report",
    "find_parent_run",
    "open_report_client",
    "open_results",
    "publish_report",
    "render_html",
    "render_markdown",
    "write_report",
]
