"""The benchmarks' metrics, and their task scores and suite averages.

Classification metrics come from scikit-learn and correlations from SciPy. ReCoRD's token F1
and exact match follow the official SuperGLUE script (SQuAD's answer normalisation, best over
the gold answers), which no maintained package ships. Predictions that name no valid class
(a T5 output that is not a label word) are -1: wrong for every metric.

Correlations of a constant series are undefined (SciPy returns NaN); they are reported as 0.0,
no correlation, as scikit-learn does for the MCC of constant predictions, so that a degenerate
model scores zero instead of poisoning the average.

Averages are the benchmarks' own: a task's score is the unweighted mean of its metrics (MNLI:
of matched and mismatched accuracy; MRPC and QQP: of F1 and accuracy; STS-B: of Pearson and
Spearman; CB: of accuracy and macro-F1; MultiRC: of F1a and EM; ReCoRD: of F1 and EM), and the
suite's score is the unweighted mean of its task scores, over the tasks run, WNLI excluded.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ntng_ray.downstream.tasks import EXCLUDED_FROM_AVERAGE, Suite, TaskSpec

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = frozenset(string.punctuation)


def accuracy(references: Sequence[int], predictions: Sequence[int]) -> float:
    return float(accuracy_score(references, predictions))


def f1(references: Sequence[int], predictions: Sequence[int]) -> float:
    """F1 of the positive class (label 1), whatever other (invalid) labels predictions hold."""
    return float(f1_score(references, predictions, labels=[1], average="micro", zero_division=0))


def macro_f1(references: Sequence[int], predictions: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of every class's F1 (CB), classes absent from both scoring 0."""
    labels = list(range(num_labels))
    return float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0))


def mcc(references: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation (CoLA); 0.0 when either side is constant."""
    return float(matthews_corrcoef(references, predictions))


def _constant(values: np.ndarray) -> bool:
    return values.size < 2 or bool(np.all(values == values[0]))


def pearson(references: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson's r (STS-B); 0.0 when either side is constant (undefined)."""
    x, y = np.asarray(references, dtype=float), np.asarray(predictions, dtype=float)
    if _constant(x) or _constant(y):
        return 0.0
    return float(stats.pearsonr(x, y).statistic)


def spearman(references: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman's rho (STS-B); 0.0 when either side is constant (undefined)."""
    x, y = np.asarray(references, dtype=float), np.asarray(predictions, dtype=float)
    if _constant(x) or _constant(y):
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def group_exact_match(
    references: Sequence[int], predictions: Sequence[int], groups: Sequence[str]
) -> float:
    """MultiRC's EM: the share of questions whose every answer option is labelled right."""
    right: dict[str, bool] = {}
    for reference, prediction, group in zip(references, predictions, groups, strict=True):
        right[group] = right.get(group, True) and reference == prediction
    return sum(right.values()) / len(right) if right else 0.0


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(char for char in text.lower() if char not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, answer: str) -> float:
    """Bag-of-tokens F1 between two normalised answers."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def record_scores(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """ReCoRD's F1 and EM: each query's best over its gold answers, averaged over queries."""
    f1s, ems = [], []
    for golds, prediction in zip(answers, predictions, strict=True):
        f1s.append(max((token_f1(prediction, gold) for gold in golds), default=0.0))
        ems.append(
            max(
                (float(normalize_answer(prediction) == normalize_answer(g)) for g in golds),
                default=0.0,
            )
        )
    return {"f1": float(np.mean(f1s)), "em": float(np.mean(ems))}


def task_metrics(
    spec: TaskSpec,
    references: Sequence,
    predictions: Sequence,
    groups: Sequence[str] | None = None,
) -> dict[str, float]:
    """The task's metrics (``spec.metrics``) of one evaluation split."""
    if spec.kind == "record":
        return record_scores(references, predictions)
    compute = {
        "accuracy": lambda: accuracy(references, predictions),
        "f1": lambda: f1(references, predictions),
        "f1a": lambda: f1(references, predictions),
        "macro_f1": lambda: macro_f1(references, predictions, len(spec.labels)),
        "mcc": lambda: mcc(references, predictions),
        "pearson": lambda: pearson(references, predictions),
        "spearman": lambda: spearman(references, predictions),
        "em": lambda: group_exact_match(references, predictions, groups or []),
    }
    return {name: compute[name]() for name in spec.metrics}


def task_score(metrics: dict[str, float]) -> float:
    """The benchmark's score of a task: the unweighted mean of its metrics."""
    return float(np.mean(list(metrics.values())))


def suite_average(suite: Suite, scores: dict[str, float]) -> tuple[float | None, list[str]]:
    """The suite's average over the tasks run (WNLI excluded from GLUE's), and those tasks.

    None when no task counts (e.g. only WNLI was run).
    """
    averaged = [name for name in scores if name not in EXCLUDED_FROM_AVERAGE[suite]]
    if not averaged:
        return None, []
    return float(np.mean([scores[name] for name in averaged])), averaged
