"""The sweep report: its statistics against hand computations, and the report read from a real
SQLite MLflow store filled with a sweep's parent and child runs as `ntng sweep` writes them."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ntng_ray.cli import main
from ntng_ray.errors import NtngError
from ntng_ray.sweep.plan import budget_label
from ntng_ray.sweep.render import (
    best_configuration,
    budget_answer,
    ordered,
    publish_report,
    render_markdown,
    rounded,
)
from ntng_ray.sweep.results import (
    LOSSES,
    BudgetResult,
    Curve,
    MetricResult,
    Protocol,
    StrategyResult,
    SweepReport,
    build_report,
    find_parent_run,
    open_report_client,
)
from ntng_ray.sweep.stats import (
    BETTER,
    INSUFFICIENT,
    NO_DIFFERENCE,
    WORSE,
    Difference,
    summarize,
    verdict,
    welch_difference,
)
from ntng_ray.track import schema

# --- statistics: expected numbers computed by hand (mpmath, 30 digits), not with scipy --------


def test_summary_and_welch_interval_match_a_hand_computation() -> None:
    baseline, method = [3.0, 3.2], [2.5, 2.7, 2.6]
    assert summarize(baseline) == pytest.approx((3.1, 0.1414213562, 2))
    assert summarize(method) == pytest.approx((2.6, 0.1, 3))
    # se^2 = 0.01/3 + 0.02/2; dof = se^4 / ((0.01/3)^2/2 + (0.02/2)^2/1) = 32/19;
    # t_0.975(32/19) = 5.1762316285 (inverted regularized incomplete beta).
    diff = welch_difference(method, baseline)
    assert diff == pytest.approx(Difference(-0.5, -1.0976997448, 0.0976997448, 32 / 19))
    assert verdict(diff, higher_is_better=False) == NO_DIFFERENCE


def test_welch_interval_with_equal_variances_uses_four_degrees_of_freedom() -> None:
    # Both sds 0.1, n 3: dof = 4, t_0.975(4) = 2.7764451052, se = sqrt(0.02/3).
    diff = welch_difference([2.5, 2.7, 2.6], [3.0, 3.2, 3.1])
    assert diff == pytest.approx(Difference(-0.5, -0.7266957945, -0.2733042055, 4.0))
    assert diff.dof == pytest.approx(4.0)
    assert welch_difference([3.0, 3.2, 3.1], [2.5, 2.7, 2.6], level=0.95).low == pytest.approx(
        0.2733042055
    )


def test_verdicts_follow_the_interval_and_the_direction_of_better() -> None:
    lower = Difference(-1.0, -1.5, -0.5, 4.0)
    higher = Difference(1.0, 0.5, 1.5, 4.0)
    straddles = Difference(0.1, -0.4, 0.6, 4.0)
    assert verdict(lower, higher_is_better=False) == BETTER
    assert verdict(higher, higher_is_better=False) == WORSE
    assert verdict(higher, higher_is_better=True) == BETTER
    assert verdict(lower, higher_is_better=True) == WORSE
    assert verdict(straddles, higher_is_better=True) == NO_DIFFERENCE
    assert verdict(None, higher_is_better=False) == INSUFFICIENT


def test_fewer_than_two_values_give_no_interval() -> None:
    assert welch_difference([2.0], [3.0, 3.1]) is None
    assert welch_difference([2.0, 2.1], [3.0]) is None
    assert summarize([2.0]).n == 1 and math.isnan(summarize([2.0]).std)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_zero_spread_collapses_the_interval_to_the_difference() -> None:
    assert welch_difference([2.0, 2.0], [3.0, 3.0]) == Difference(-1.0, -1.0, -1.0, 2.0)


def test_confidence_level_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match=r"level = 1\.5"):
        welch_difference([1.0, 2.0], [1.0, 2.0], level=1.5)


def test_budget_labels_have_no_trailing_zeros() -> None:
    assert [budget_label(b) for b in (20.0, 21600.0, 2.5, 0.25)] == ["20", "21600", "2.5", "0.25"]


# --- a sweep in a real SQLite store ----------------------------------------------------------


class Sweep:
    """Writes a sweep's runs exactly as the contract with `ntng sweep` describes them."""

    def __init__(self, client: MlflowClient, parent_exp: str, child_exp: str) -> None:
        self.client = client
        self.parent_exp = parent_exp
        self.child_exp = child_exp
        self.clock = 1_700_000_000_000

    def run(
        self,
        experiment: str,
        tags: dict[str, str],
        metrics: list[tuple[str, float, int]] = (),
        params: dict[str, str] | None = None,
        status: str | None = "FINISHED",
    ) -> str:
        self.clock += 1000
        run_id = self.client.create_run(experiment, start_time=self.clock, tags=tags).info.run_id
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, self.clock, step) for k, v, step in metrics],
            params=[Param(k, v) for k, v in (params or {}).items()],
        )
        if status is not None:
            self.client.set_terminated(run_id, status)
        return run_id

    def parent(
        self,
        name: str,
        budgets: list[float],
        params: dict[str, str] | None = None,
        sweep_file: dict | None = None,
        **protocol: str,
    ) -> str:
        tags = {
            "ntng.sweep": name,
            "ntng.role": "sweep",
            "ntng.protocol.searcher": "random",
            "ntng.protocol.trials": "2",
            "ntng.protocol.seeds": "3",
            "ntng.protocol.allow_unequal_tuning": "false",
            "ntng.protocol.trials_by_strategy": json.dumps({"baseline": 2, "stacking": 2}),
            "ntng.protocol.scheduler": "none",
            "ntng.budgets_rst_seconds": json.dumps(budgets),
            "ntng.strategies": json.dumps(["baseline", "stacking"]),
        } | {f"ntng.protocol.{k}": v for k, v in protocol.items()}
        run_id = self.run(self.parent_exp, tags, [("sweep_rst_seconds", 250.5, 0)], params=params)
        if sweep_file is not None:  # as `ntng sweep` logs it: the resolved spec as YAML
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "sweep.yaml"
                path.write_text(yaml.safe_dump(sweep_file, sort_keys=False))
                self.client.log_artifact(run_id, str(path))
        return run_id

    def child(self, parent: str, strategy: str, phase: str, budget: float, seed: int, **tags: str):
        base = {
            "mlflow.parentRunId": parent,
            "ntng.sweep": "demo",
            "ntng.strategy": strategy,
            "ntng.phase": phase,
            "ntng.seed": str(seed),
            "ntng.budget_rst_seconds": repr(budget),
            "ntng.launch": "in_process",
        }
        return base | tags

    def final(
        self,
        parent: str,
        strategy: str,
        budget: float,
        seed: int,
        val: float,
        train_eval: float,
        outcome: str | None = "completed",
    ) -> str:
        tags = self.child(parent, strategy, "final", budget, seed)
        if outcome is not None:
            tags["ntng.outcome"] = outcome
        diverged = outcome == "diverged"
        history = [
            ("val_loss", val + 2, 0),
            ("val_loss", val + 1, 10),
            ("val_loss", math.nan if diverged else val, 20),
            ("train_eval_loss", train_eval, 20),
            ("val_progress_point", 0.0, 0),
            ("val_progress_point", 0.5, 10),
            ("val_progress_point", 1.0, 20),
            ("rst_seconds", 0.0, 0),
            ("rst_seconds", budget / 4, 5),
            ("rst_seconds", budget / 2 + seed / 10, 10),
            ("rst_seconds", budget, 20),
            ("final_validation_loss", math.nan if diverged else val, 20),
            ("final_train_eval_loss", math.nan if diverged else train_eval, 20),
            (schema.METRIC_STEPS, 100 + seed, 20),
            (schema.METRIC_TOKENS, 12_800 * (100 + seed), 20),
        ]
        status = {None: None, "completed": "FINISHED"}.get(outcome, "FAILED")
        return self.run(self.child_exp, tags, history, status=status)

    def tune(
        self,
        parent: str,
        strategy: str,
        budget: float,
        rst: float,
        params: dict[str, str],
        selected: bool = False,
        outcome: str = "completed",
    ) -> str:
        tags = self.child(parent, strategy, "tune", budget, 0, **{"ntng.outcome": outcome})
        if selected:
            tags["ntng.selected"] = "true"
        metrics = [("rst_seconds", rst, 7), ("final_validation_loss", 3.0, 7)]
        return self.run(self.child_exp, tags, metrics, params=params)

    def downstream(self, parent: str, pretrain: str, suite: str, score: float) -> str:
        tags = {
            "mlflow.parentRunId": parent,
            "ntng.sweep": "demo",
            "ntng.phase": "downstream",
            "ntng.pretrain_run_id": pretrain,
            "ntng.suite": suite,
        }
        return self.run(self.child_exp, tags, [(f"{suite}_average", score, 0)])


def _trial_params(**settings: str) -> dict[str, str]:
    """What a trial logs: its whole flattened config, incl. per-trial name and output folder."""
    return {
        "name": f"trial-{len(settings)}-{sorted(settings.items())}",
        "output_dir": f"/tmp/trials/{sorted(settings.items())}",
        "optimizer.betas": "[0.9, 0.98]",
        "schedule.name": "one_cycle",
        "strategy.name": "baseline",
    } | settings


# The demo parent's params (the sweep spec flattened, strategies left out) and sweep file.
PARENT_PARAMS = {
    "search.seed": "0",
    "search.train_seed": "7",
    "final.first_seed": "0",
    "final.seeds": "3",
    "split_seed": "1234",
}
SWEEP_FILE = {
    "name": "demo",
    "strategies": {
        "baseline": {
            "settings": {},
            "space": {
                "optimizer.lr": {"loguniform": [0.001, 0.004]},
                "schedule.warmup": {"choice": [0.1, 0.2]},
            },
        },
        "stacking": {
            "settings": {"strategy.fixed_thing": 3},
            "space": {"strategy.gamma_f": {"choice": [0.5, 0.9]}, "schedule.name": "one_cycle"},
        },
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with an older and a newer `demo` sweep, and an `other<&>` sweep with no trials."""
    folder = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    artifacts = (folder / "artifacts").as_uri()
    sweep = Sweep(
        client,
        client.create_experiment("sweeps", artifact_location=artifacts),
        client.create_experiment("trials", artifact_location=artifacts),
    )
    old = sweep.parent("demo", [20.0])
    parent = sweep.parent("demo", [20.0, 10.0], PARENT_PARAMS, SWEEP_FILE)
    other = sweep.parent(
        "other<&>", [5.0], allow_unequal_tuning="true", scheduler="asha",
        trials_by_strategy=json.dumps({"baseline": 2, "stacking": 4}),
    )  # fmt: skip
    sweep.final(old, "baseline", 20.0, 0, val=9.0, train_eval=9.0)

    finals = {}
    for seed, (val, te) in enumerate([(3.0, 2.8), (3.2, 3.0), (3.1, 2.9)]):
        finals["baseline", seed] = sweep.final(parent, "baseline", 20.0, seed, val, te)
    for seed, (val, te) in enumerate([(2.5, 2.9), (2.7, 3.3), (2.6, 3.1)]):
        finals["stacking", seed] = sweep.final(parent, "stacking", 20.0, seed, val, te)
    diverged = sweep.final(parent, "stacking", 20.0, 3, 50.0, 50.0, outcome="diverged")
    for seed, (val, te) in enumerate([(3.5, 3.4), (3.7, 3.6)]):
        sweep.final(parent, "baseline", 10.0, seed, val, te)
    sweep.final(parent, "baseline", 10.0, 2, 3.6, 3.5, outcome=None)  # still running
    sweep.final(parent, "stacking", 10.0, 0, 3.3, 3.2)
    sweep.final(parent, "stacking", 10.0, 1, 3.9, 3.9, outcome="over_budget")

    sweep.tune(parent, "baseline", 20.0, 20.0, _trial_params(**{"optimizer.lr": "0.001"}))
    sweep.tune(parent, "baseline", 20.0, 19.5, _trial_params(**{"optimizer.lr": "0.003"}), True)
    sweep.tune(parent, "stacking", 20.0, 20.1, _trial_params(**{"strategy.gamma_f": "0.5"}), True)
    sweep.tune(
        parent, "stacking", 20.0, 18.0, _trial_params(**{"strategy.gamma_f": "0.9"}),
        outcome="diverged",
    )  # fmt: skip
    sweep.tune(
        parent, "baseline", 10.0, 10.0,
        _trial_params(**{"optimizer.lr": "0.0021987654", "schedule.warmup": "0.1"}), True,
    )  # fmt: skip
    sweep.tune(parent, "stacking", 10.0, 9.0, _trial_params(**{"optimizer.lr": "0.002"}))

    sweep.downstream(parent, finals["baseline", 0], "glue", 10.0)  # superseded by the next one
    for seed, score in enumerate([80.0, 82.0, 81.0]):
        sweep.downstream(parent, finals["baseline", seed], "glue", score)
    for seed, score in enumerate([70.0, 71.0, 72.0]):
        sweep.downstream(parent, finals["stacking", seed], "glue", score)
    sweep.downstream(parent, diverged, "glue", 99.0)
    return {"uri": uri, "client": client, "parent": parent, "old": old, "other": other,
            "finals": finals}  # fmt: skip


@pytest.fixture(scope="module")
def report(store: dict) -> SweepReport:
    return build_report(store["client"], store["parent"])


def test_find_parent_run_by_name_takes_the_newest_and_by_id_takes_it(store: dict) -> None:
    client = store["client"]
    assert find_parent_run(client, "demo") == store["parent"]
    assert find_parent_run(client, store["old"]) == store["old"]
    with pytest.raises(NtngError, match=r"not a sweep's parent run \(its tag ntng.role is None"):
        find_parent_run(client, store["finals"]["baseline", 0])


def test_unknown_sweep_names_the_name_the_store_and_the_sweeps_there(store: dict) -> None:
    with pytest.raises(NtngError) as caught:
        find_parent_run(store["client"], "nope")
    message = str(caught.value)
    assert "'nope'" in message and store["uri"] in message and "demo, other<&>" in message


def test_report_reads_protocol_budgets_and_seed_counts(report: SweepReport, store: dict) -> None:
    assert (report.sweep, report.parent_run_id) == ("demo", store["parent"])
    assert report.protocol.searcher == "random" and report.protocol.warnings() == []
    assert report.sweep_rst_seconds == 250.5 and report.preparation_rst_seconds is None
    assert [b.budget_rst_seconds for b in report.budgets] == [10.0, 20.0]
    ten, twenty = report.budgets
    base10, stack10 = ten.strategies
    assert (base10.seeds_completed, base10.seeds_run, base10.not_completed) == (
        2,
        3,
        {"running": ["2"]},
    )
    assert (stack10.seeds_completed, stack10.not_completed) == (1, {"over_budget": ["1"]})
    stack20 = twenty.strategies[1]
    assert (stack20.seeds_completed, stack20.seeds_run) == (3, 4)
    assert stack20.not_completed == {"diverged": ["3"]}


def test_report_statistics_match_the_hand_computation(report: SweepReport) -> None:
    twenty = report.budgets[1]
    assert [c.key for c in twenty.columns] == [
        "final_validation_loss",
        "final_train_eval_loss",
        "glue_average",
    ]
    base, stack = twenty.strategies
    val = stack.metrics["final_validation_loss"]
    assert base.metrics["final_validation_loss"].summary == pytest.approx((3.1, 0.1, 3))
    assert val.summary == pytest.approx((2.6, 0.1, 3))
    assert val.difference == pytest.approx((-0.5, -0.7266957945, -0.2733042055, 4.0))
    assert val.verdict == BETTER
    # Train-eval: method [2.9, 3.3, 3.1] vs baseline [2.8, 3.0, 2.9]; dof = 50/17,
    # t_0.975(50/17) = 3.2187586, se = sqrt(0.05/3).
    te = stack.metrics["final_train_eval_loss"]
    assert te.difference == pytest.approx((0.2, -0.2155399471, 0.6155399471, 50 / 17))
    assert te.verdict == NO_DIFFERENCE
    glue = stack.metrics["glue_average"]
    assert base.metrics["glue_average"].values == (80.0, 82.0, 81.0)
    assert glue.difference == pytest.approx((-10.0, -12.266957945, -7.733042055, 4.0))
    assert glue.verdict == WORSE
    assert base.metrics["glue_average"].verdict is None
    stack10 = report.budgets[0].strategies[1]
    assert [c.key for c in report.budgets[0].columns][-1] == "final_train_eval_loss"
    assert stack10.metrics["final_validation_loss"].diff == pytest.approx(3.3 - 3.6)
    assert stack10.metrics["final_validation_loss"].verdict == INSUFFICIENT


def test_report_sums_tuning_rst_and_shows_the_selected_configuration(report: SweepReport) -> None:
    base10, stack10 = report.budgets[0].strategies
    base20, stack20 = report.budgets[1].strategies
    assert (base20.tuning_trials, base20.tuning_rst_seconds) == (2, pytest.approx(39.5))
    assert stack20.tuning_rst_seconds == pytest.approx(38.1)
    # Only the keys the search space samples (from the parent's sweep.yaml): not the fixed
    # settings a trial's params also hold, nor a space entry that is a plain value.
    assert report.tuned_keys == {
        "baseline": ("optimizer.lr", "schedule.warmup"),
        "stacking": ("strategy.gamma_f",),
    }
    assert base20.best_config == {"optimizer.lr": "0.003"}
    assert stack20.best_config == {"strategy.gamma_f": "0.5"}
    assert base10.best_config == {"optimizer.lr": "0.0021987654", "schedule.warmup": "0.1"}
    assert (stack10.selected_run_id, stack10.best_config) == (None, {})
    assert best_configuration(base10) == "optimizer.lr=0.0022, schedule.warmup=0.1"
    assert best_configuration(stack10) == "n/a"


def test_settings_are_rounded_to_three_significant_digits() -> None:
    logged = ("0.0021987654", "1e-3", "123456.7", "20", "true", "[0.9, 0.98]")
    shown = ["0.0022", "0.001", "1.23e+05", "20", "true", "[0.9, 0.98]"]
    assert [rounded(v) for v in logged] == shown


def test_without_a_sweep_file_the_settings_that_differ_are_shown(store: dict) -> None:
    old = build_report(store["client"], store["old"])
    assert old.tuned_keys is None
    assert old.protocol.final_first_seed is None and old.protocol.warnings() == []


def test_curve_is_the_mean_and_min_max_over_completed_seeds(report: SweepReport) -> None:
    curve = report.budgets[1].strategies[0].curve
    assert curve.rst == pytest.approx((0.0, 10.1, 20.0))
    assert curve.mean == pytest.approx((5.1, 4.1, 3.1))
    assert curve.low == pytest.approx((5.0, 4.0, 3.0))
    assert curve.high == pytest.approx((5.2, 4.2, 3.2))
    # sd 0.1 over 3 seeds: t_0.975(2) = 4.3026527297, half-width 4.3026527297 * 0.1 / sqrt(3).
    assert curve.ci == pytest.approx((0.2484138,) * 3)
    assert len(report.budgets[1].strategies[1].curve.mean) == 3  # the diverged seed is left out


def test_steps_tokens_and_budget_share_are_means_over_completed_finals(
    report: SweepReport,
) -> None:
    base20, stack20 = report.budgets[1].strategies
    assert base20.steps == pytest.approx((101.0, 1.0, 3))
    assert stack20.tokens.mean == pytest.approx(12_800 * 101)  # the diverged seed 3 left out
    assert base20.budget_share.mean == pytest.approx(1.0)


def test_markdown_shows_numbers_intervals_verdicts_and_the_method(report: SweepReport) -> None:
    text = render_markdown(report)
    lines = text.splitlines()
    tuning = re.compile(r"\| stacking \| \d+ \| ")  # the tuning tables' rows
    stacking = [x for x in lines if x.startswith("| stacking |") and not tuning.match(x)]
    assert stacking == [
        "| stacking | 1 / 2 (over_budget: seed 1) | 3.3000 (n=1) | -0.3000 [CI n/a] "
        "| insufficient seeds | 100 | 1.28M | 100.0% | n/a |",
        "| stacking | 3.2000 (n=1) | -0.3000 [CI n/a] | insufficient seeds |",
        "| stacking | 3 / 4 (diverged: seed 3) | 2.6000 ± 0.1000 | -0.5000 [-0.7267, -0.2733] "
        "| **▲ better** | 101 | 1.29M | 100.0% | n/a |",
        "| stacking | 3.1000 ± 0.2000 | 0.2000 [-0.2155, 0.6155] | = no significant difference "
        "| 71.0000 ± 1.0000 | -10.0000 [-12.2670, -7.7330] | **▼ worse** |",
    ]
    assert "| insufficient seeds |" in text
    assert "| baseline | 2 | 39.5 s | " in text and "| optimizer.lr=0.003 |" in text
    assert "| stacking | 2 | 38.1 s | " in text and "| strategy.gamma_f=0.5 |" in text
    assert "**At 20 RST s, against the tuned baseline in validation loss (95% CI): stacking is " \
        "better by 0.500 [0.273, 0.727].**" in text  # fmt: skip
    assert (
        "tuning trials trained with seed 7 (search.train_seed); final phase seeds 0, 1, 2" in text
    )
    assert "no gain" not in text and "](" not in text.replace("](val_loss", "").replace(
        "](final_metrics", ""
    )  # no UI address for a SQLite store: no run links
    assert "Welch's t" in text and "ddof = 1" in text and "min-max band" in text
    assert text.index("## Budget 10 RST s\n") < text.index("## Budget 20 RST s\n")
    assert "![val_loss_vs_rst_20.png](val_loss_vs_rst_20.png)" in text
    assert "Warning" not in text
    assert "Total RST of the sweep (tuning and final trials): 250.5 s." in text


def test_publish_writes_files_and_logs_them_on_the_parent(
    report: SweepReport, store: dict, tmp_path: Path
) -> None:
    files = publish_report(store["client"], report, tmp_path / "out")
    names = sorted(p.name for p in files)
    assert names == sorted(
        ["report.md", "report.html"]
        + [f"{kind}_{b}.png" for kind in ("val_loss_vs_rst", "final_metrics") for b in (10, 20)]
    )
    for path in files:
        assert path.parent == tmp_path / "out" and path.stat().st_size > 0
    assert (tmp_path / "out" / "final_metrics_20.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert (
        '<td class="num">2.6000 ± 0.1000</td>' in page and "embedded in this page as base64" in page
    )
    # Fits MLflow's artifact viewer: every table in a horizontally scrollable box.
    assert page.count('<div class="scroll"><table>') == 6 and "overflow-x:auto" in page
    assert '<td class="v-better">▲ better</td>' in page and '<td class="v-worse">' in page
    assert '<td class="v-same">' in page and '<td class="v-na">insufficient seeds</td>' in page
    logged = store["client"].list_artifacts(store["parent"], "report")
    assert sorted(Path(a.path).name for a in logged) == names
    # The parent run answers at a glance: its description, Δ metrics and verdict tags.
    parent = store["client"].get_run(store["parent"]).data
    note = parent.tags["mlflow.note.content"]
    assert "**At 20 RST s, against the tuned baseline in validation loss" in note
    assert "| strategy | seeds done / run | validation loss | Δ validation loss (95% CI) " \
        "| verdict | steps | tokens | budget used | preparation RST |" in note  # fmt: skip
    assert "train-eval" not in note
    assert "| stacking | 3 / 4 (diverged: seed 3) | 2.6000 ± 0.1000 |" in note and "![" not in note
    assert parent.metrics["delta_val_loss.stacking.b20"] == pytest.approx(-0.5)
    assert parent.metrics["delta_val_loss.stacking.b10"] == pytest.approx(-0.3)
    assert parent.tags["ntng.verdict.stacking.b20"] == "better"
    assert parent.tags["ntng.verdict.stacking.b10"] == "insufficient seeds"
    assert not any(k.startswith("delta_val_loss.baseline") for k in parent.metrics)


def test_report_of_a_sweep_without_trials_warns_and_escapes(store: dict, tmp_path: Path) -> None:
    empty = build_report(store["client"], store["other"])
    warnings = empty.protocol.warnings()
    assert len(warnings) == 2 and "baseline 2, stacking 4" in warnings[0] and "asha" in warnings[1]
    assert publish_report(store["client"], empty) == []
    logged = {Path(a.path).name for a in store["client"].list_artifacts(store["other"], "report")}
    assert logged == {"report.md", "report.html", "val_loss_vs_rst_5.png", "final_metrics_5.png"}
    files = publish_report(store["client"], empty, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Sweep report: other&lt;&amp;&gt;" in page and "other<&>" not in page
    assert page.count('class="warning"') == 2
    assert "| baseline | 0 / 0 | n/a | — | (baseline) |" in files[0].read_text()
    assert "At 5 RST s the tuned baseline has 0 completed seeds" in files[0].read_text()


def test_cli_report_end_to_end(store: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["report", "demo", "--out", str(out), "--tracking-uri", store["uri"]]) == 0
    printed = capsys.readouterr().out
    assert "| stacking | 3 / 4 (diverged: seed 3) |" in printed
    assert "![" not in printed and f"wrote {out / 'report.md'}" in printed
    assert (out / "report.html").is_file() and (out / "val_loss_vs_rst_10.png").is_file()
    assert store["parent"] in printed and f"report: {(out / 'report.html').resolve()}" in printed
    assert f"ntng ui --tracking-uri {store['uri']}" in printed  # no UI address known


def test_cli_report_links_runs_in_the_given_ui(store: dict, tmp_path: Path, capsys) -> None:
    ui = "http://127.0.0.1:5555/"
    argv = ["report", "demo", "--out", str(tmp_path), "--tracking-uri", store["uri"]]
    assert main([*argv, "--ui-url", ui]) == 0
    printed = capsys.readouterr().out
    client = store["client"]
    parent_exp = client.get_run(store["parent"]).info.experiment_id
    parent_link = f"http://127.0.0.1:5555/#/experiments/{parent_exp}/runs/{store['parent']}"
    assert f"MLflow UI: {parent_link}" in printed
    assert "](http" not in printed  # the terminal shows no Markdown links
    trials = client.get_run(store["finals"]["stacking", 0]).info.experiment_id
    selected = [
        r for r in client.search_runs([trials])
        if r.data.tags.get("ntng.selected") == "true" and r.data.tags["ntng.strategy"] == "stacking"
        and r.data.tags["ntng.budget_rst_seconds"] == "20.0"
    ]  # fmt: skip
    (run,) = selected
    link = f"http://127.0.0.1:5555/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    markdown = (tmp_path / "report.md").read_text()
    assert f"| [stacking]({link}) | 3 / 4" in markdown and f"([MLflow]({parent_link}))" in markdown
    page = (tmp_path / "report.html").read_text()
    assert f'<a href="{link}" target="_blank" rel="noopener">stacking</a>' in page


def test_cli_unknown_sweep_and_missing_store_fail_clearly(
    store: dict, tmp_path: Path, capsys
) -> None:
    assert main(["report", "nope", "--tracking-uri", store["uri"]]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err
    missing = tmp_path / "absent.db"
    assert main(["report", "demo", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
    assert not missing.exists()
    with pytest.raises(NtngError, match="no MLflow store"):
        open_report_client(f"sqlite:///{missing}")


# --- the one-line answer, order and protocol warnings, on hand-made results ------------------

VAL = LOSSES[0]


def _budget(finals: dict[str, list[float]], budget: float = 12.0) -> BudgetResult:
    """A budget's results from final validation losses per strategy (the first is the baseline)."""
    names = list(finals)
    base = finals[names[0]]
    results = []
    for name in names:
        values = finals[name]
        summary = summarize(values)
        if name == names[0]:
            metric = MetricResult(tuple(values), summary, None, None, None)
        else:
            interval = welch_difference(values, base)
            diff = summary.mean - summarize(base).mean if values and base else None
            metric = MetricResult(tuple(values), summary, diff, interval, verdict(interval, False))
        results.append(
            StrategyResult(
                strategy=name,
                seeds_run=len(values),
                seeds_completed=len(values),
                not_completed={},
                metrics={VAL.key: metric},
                tuning_trials=2,
                tuning_rst_seconds=0.0,
                preparation_rst_seconds=None,
                selected_run_id=None,
                best_config={},
                curve=Curve((), (), (), ()),
            )
        )
    return BudgetResult(budget, (VAL,), results)


BASE = [3.00, 3.01, 2.99]


def test_answer_when_no_method_differs_names_the_widest_interval() -> None:
    budget = _budget({"baseline": BASE, "a": [3.01, 3.05, 2.97], "b": [2.99, 3.03, 3.00]})
    widths = [
        welch_difference(v, BASE).high - welch_difference(v, BASE).diff
        for v in ([3.01, 3.05, 2.97], [2.99, 3.03, 3.00])
    ]
    assert budget_answer(budget) == (
        "At 12 RST s no method differs significantly from the tuned baseline in validation loss "
        f"(95% CIs within ±{max(widths):.3f})."
    )


def test_answer_lists_better_and_worse_with_size_and_interval() -> None:
    budget = _budget(
        {
            "baseline": BASE,
            "sophia": [3.12, 3.13, 3.11],
            "a": [3.01, 3.05, 2.97],
            "layer_dropping": [2.96, 2.965, 2.97],
            "b": [2.99, 3.03, 3.00],
        }
    )
    better = welch_difference([2.96, 2.965, 2.97], BASE)  # -0.035 with its interval
    worse = welch_difference([3.12, 3.13, 3.11], BASE)  # +0.12
    answer = budget_answer(budget)
    assert answer.startswith(
        "At 12 RST s, against the tuned baseline in validation loss (95% CI): "
        f"layer_dropping is better by 0.035 [{-better.high:.3f}, {-better.low:.3f}]; "
        f"sophia is worse by 0.120 [{worse.low:.3f}, {worse.high:.3f}]; "
        "the other 2 (a, b) do not differ significantly (95% CIs within ±"
    )
    assert "no gain" not in answer
    # Rows: the baseline, then by Δ validation loss ascending (best first).
    assert [r.strategy for r in ordered(budget)] == [
        "baseline",
        "layer_dropping",
        "b",
        "a",
        "sophia",
    ]


def test_answer_says_which_methods_have_insufficient_seeds() -> None:
    budget = _budget({"baseline": BASE, "stacking": [2.5], "a": [3.01, 3.05, 2.97]})
    answer = budget_answer(budget)
    assert answer.startswith(
        "At 12 RST s none of the 1 methods with 2+ seeds differs significantly from the tuned "
        "baseline in validation loss (95% CIs within ±"
    )
    assert answer.endswith(
        "; stacking has insufficient seeds (fewer than 2 completed runs), so no interval."
    )
    only_short = _budget({"baseline": BASE, "stacking": [2.5]})
    assert budget_answer(only_short) == (
        "At 12 RST s no method can be compared with the tuned baseline in validation loss: "
        "stacking has insufficient seeds (fewer than 2 completed runs), so no interval."
    )
    one_baseline = _budget({"baseline": [3.0], "stacking": [2.5, 2.6]})
    assert "the tuned baseline has 1 completed seed in validation loss: too few" in budget_answer(
        one_baseline
    )
    # Δ known without an interval: sorted by Δ all the same, after the baseline.
    assert [r.strategy for r in ordered(budget)] == ["baseline", "stacking", "a"]


def test_protocol_warns_about_one_trial_and_a_tuning_seed_shared_with_the_finals() -> None:
    common = dict(searcher="random", trials=1, seeds=2, scheduler="none")
    protocol = Protocol(
        **common,
        allow_unequal_tuning=False,
        trials_by_strategy={"baseline": 1, "stacking": 1},
        final_first_seed=0,
    )
    first, second = protocol.warnings()
    assert first.startswith("With 1 trial per strategy nothing was tuned")
    assert second.startswith(
        "Tuning trained with final seed 0: the selected run is one of the final runs"
    )
    separate = Protocol(
        **common,
        allow_unequal_tuning=False,
        trials_by_strategy={"baseline": 2, "stacking": 2},
        final_first_seed=0,
        train_seed=100,
    )
    assert separate.warnings() == [] and separate.tuning_seed == 100
