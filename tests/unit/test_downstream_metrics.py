"""Task specs and metrics: names resolve as the benchmarks spell them, metrics match hand values."""

from __future__ import annotations

import math
import string
import warnings

import pytest

from ntng_ray.downstream import metrics
from ntng_ray.downstream.encoding import fill
from ntng_ray.downstream.tasks import TASKS, resolve_tasks
from ntng_ray.errors import NtngError

GLUE = ["CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"]
SUPERGLUE = ["BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC"]


def test_every_benchmark_task_has_a_spec() -> None:
    assert list(TASKS["glue"]) == GLUE
    assert list(TASKS["superglue"]) == SUPERGLUE


def test_task_names_resolve_in_any_case_and_unknown_ones_list_the_allowed() -> None:
    specs = resolve_tasks("GLUE", ["sst-2", "mnli", "SST-2", "sTs-B"])
    assert [spec.name for spec in specs] == ["SST-2", "MNLI", "STS-B"]
    assert resolve_tasks("superglue", ["rte"])[0].suite == "superglue"
    assert [spec.name for spec in resolve_tasks("superglue", None)] == SUPERGLUE
    with pytest.raises(NtngError, match=r"'SST2' is not a glue task; allowed: CoLA, SST-2"):
        resolve_tasks("glue", ["SST2"])
    with pytest.raises(NtngError, match="allowed: glue, superglue"):
        resolve_tasks("sglue", None)


@pytest.mark.parametrize("spec", [s for suite in TASKS.values() for s in suite.values()])
def test_templates_read_only_the_canonical_columns(spec) -> None:
    """Every template fills from a row of the task's own columns (a typo would be a KeyError)."""
    row = {column: f"<{column}>" for column in spec.columns}
    row |= {"entities": ["A", "B"], "answers": ["A"]} if spec.kind == "record" else {}
    texts = [fill(spec.t5_input, row)] + [
        fill(template, row, candidate="<c>") for template in spec.bert_segments if template
    ]
    assert all("{" not in text for text in texts)
    assert spec.t5_input.split()[0] == spec.hub_config
    assert all(set(word) <= set(string.ascii_lowercase + " ") for word in spec.target_words)


def test_classification_metrics_match_hand_computed_values() -> None:
    refs, preds = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]
    assert metrics.accuracy(refs, preds) == pytest.approx(3 / 5)
    assert metrics.f1(refs, preds) == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    # An invalid prediction (-1) is a miss, not a third class that breaks binary F1.
    assert metrics.f1([1, 1, 0], [-1, 1, 0]) == pytest.approx(2 / 3)  # p 1, r 1/2
    # CB: F1 per class 2/3, 1/2 and 0 (class 2 never predicted).
    assert metrics.macro_f1([0, 0, 1, 2], [0, 1, 1, 1], 3) == pytest.approx((2 / 3 + 1 / 2) / 3)


def test_mcc_hand_value_and_edge_cases() -> None:
    # tp 1, tn 2, fp 0, fn 1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3)
    assert metrics.mcc([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / math.sqrt(12))
    assert metrics.mcc([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert metrics.mcc([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert metrics.mcc([1, 0, 1, 0], [1, 1, 1, 1]) == 0.0


def test_correlations_hand_values_and_constant_series() -> None:
    assert metrics.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # An outlier: ranks agree exactly, values do not. r = 149 / sqrt(5 * 7205).
    assert metrics.pearson([1, 2, 3, 4], [1, 2, 3, 100]) == pytest.approx(149 / math.sqrt(36025))
    assert metrics.spearman([1, 2, 3, 4], [1, 2, 3, 100]) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.pearson([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == 0.0
        assert metrics.spearman([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == 0.0
        assert metrics.pearson([3.0, 3.0, 3.0], [1.0, 2.0, 4.0]) == 0.0


def test_multirc_exact_match_is_per_question() -> None:
    groups = ["a", "a", "b", "b", "c"]
    refs, preds = [1, 0, 1, 1, 0], [1, 0, 1, 0, 0]
    assert metrics.group_exact_match(refs, preds, groups) == pytest.approx(2 / 3)
    scores = metrics.task_metrics(TASKS["superglue"]["MultiRC"], refs, preds, groups)
    assert scores == pytest.approx({"f1a": 4 / 5, "em": 2 / 3})  # tp 2, fp 0, fn 1


def test_record_scores_take_the_best_gold_answer_after_normalisation() -> None:
    answers = [["Barack Obama", "Obama"], ["the United States"]]
    predictions = ["obama!", "United States of America"]
    # Query 1 matches "Obama" exactly; query 2 shares 2 of 4 predicted tokens: F1 2/3.
    scores = metrics.record_scores(answers, predictions)
    assert scores == pytest.approx({"f1": (1 + 2 / 3) / 2, "em": 0.5})
    assert metrics.normalize_answer("The  U.S. army, an Army") == "us army army"


def test_task_scores_and_suite_averages_follow_the_benchmarks() -> None:
    assert metrics.task_score({"f1": 0.8, "accuracy": 0.6}) == pytest.approx(0.7)
    average, averaged = metrics.suite_average("glue", {"SST-2": 0.8, "WNLI": 0.1, "CoLA": 0.2})
    assert (average, averaged) == (pytest.approx(0.5), ["SST-2", "CoLA"])
    assert metrics.suite_average("glue", {"WNLI": 0.5}) == (None, [])
    average, averaged = metrics.suite_average("superglue", {"CB": 0.6, "RTE": 0.7})
    assert (average, averaged) == (pytest.approx(0.65), ["CB", "RTE"])
