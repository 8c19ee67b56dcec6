"""The GLUE and SuperGLUE tasks: inputs, label space, metrics, and where their data lives.

Pure data, so a bad task name fails before torch or any data is touched. Every task is read into
one canonical table whatever its source: the columns of its Hugging Face hub dataset
(``nyu-mll/glue``, ``aps/super_glue``) and a ``label`` column holding the class index in the
hub's label order (a float score for STS-B). Local copies in the benchmarks' own distribution
layouts are renamed into that table by the ``TsvLayout`` (GLUE) or by the SuperGLUE readers in
``loaders.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ntng_ray.errors import NtngError

Suite = Literal["glue", "superglue"]
Kind = Literal["classification", "regression", "choice", "record"]

SUITES: tuple[Suite, ...] = ("glue", "superglue")
HUB_REPOS: dict[Suite, str] = {"glue": "nyu-mll/glue", "superglue": "aps/super_glue"}
# The study excluded WNLI from the GLUE average (as BERT's authors did): its dev set is
# adversarial to the train set, so models score below the majority class.
EXCLUDED_FROM_AVERAGE: dict[Suite, frozenset[str]] = {
    "glue": frozenset({"WNLI"}),
    "superglue": frozenset(),
}
SUPERGLUE_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}
GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
NLI = ("entailment", "not_entailment")
BOOLEAN = ("False", "True")


@dataclass(frozen=True)
class TsvLayout:
    """How GLUE's download script wrote a task: file per split, header, and column names.

    ``names`` is given for files without a header row (CoLA); ``rename`` maps the file's
    column names to the canonical (hub) ones. MRPC's files start with a BOM, which is stripped.
    """

    files: dict[str, str] = field(default_factory=lambda: dict(GLUE_FILES))
    names: tuple[str, ...] | None = None
    rename: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    ``kind``: ``classification`` (one input, a class), ``regression`` (STS-B's score),
    ``choice`` (COPA: pick one of ``choices`` columns; the label is its index) or ``record``
    (ReCoRD: pick the entity that fills ``@placeholder``; scored against ``answers``).
    ``bert_segments`` are the two segments BERT reads, as ``str.format`` templates over a row
    (``{candidate}`` is the choice being scored); ``t5_input`` is T5's text-to-text input.
    ``t5_words`` are T5's target words for the labels, plain lower-case words so that a
    tokenizer trained on ordinary text can spell them.
    """

    name: str
    suite: Suite
    hub_config: str
    folder: str
    kind: Kind
    columns: tuple[str, ...]
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    bert_segments: tuple[str, str | None]
    t5_input: str
    eval_splits: tuple[str, ...] = ("validation",)
    tsv: TsvLayout | None = None
    choices: tuple[str, ...] = ()
    t5_words: tuple[str, ...] = ()
    group: bool = False

    @property
    def num_labels(self) -> int:
        """Outputs of BERT's head: 1 for a score, 2 for ranked candidates (right or not)."""
        if self.kind == "regression":
            return 1
        return 2 if self.kind in ("choice", "record") else len(self.labels)

    @property
    def target_words(self) -> tuple[str, ...]:
        """T5's words for the labels, in label order."""
        return self.t5_words or tuple(label.lower().replace("_", " ") for label in self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.eval_splits)


def _glue(name: str, config: str, **spec: object) -> TaskSpec:
    spec.setdefault("kind", "classification")
    spec.setdefault("tsv", TsvLayout())
    return TaskSpec(name=name, suite="glue", hub_config=config, folder=name, **spec)  # type: ignore[arg-type]


def _superglue(name: str, config: str, **spec: object) -> TaskSpec:
    spec.setdefault("kind", "classification")
    return TaskSpec(name=name, suite="superglue", hub_config=config, folder=name, **spec)  # type: ignore[arg-type]


def _pair(a: str, b: str, prefix: str) -> dict[str, object]:
    """The common sentence-pair task: two columns, BERT reads them as its two segments."""
    return {
        "columns": (a, b),
        "bert_segments": (f"{{{a}}}", f"{{{b}}}"),
        "t5_input": f"{prefix} {a}: {{{a}}} {b}: {{{b}}}",
    }


GLUE_TASKS: tuple[TaskSpec, ...] = (
    _glue(
        "CoLA",
        "cola",
        columns=("sentence",),
        labels=("unacceptable", "acceptable"),
        metrics=("mcc",),
        bert_segments=("{sentence}", None),
        t5_input="cola sentence: {sentence}",
        tsv=TsvLayout(names=("source", "label", "mark", "sentence")),
    ),
    _glue(
        "SST-2",
        "sst2",
        columns=("sentence",),
        labels=("negative", "positive"),
        metrics=("accuracy",),
        bert_segments=("{sentence}", None),
        t5_input="sst2 sentence: {sentence}",
    ),
    _glue(
        "MRPC",
        "mrpc",
        labels=("not_equivalent", "equivalent"),
        metrics=("f1", "accuracy"),
        tsv=TsvLayout(
            rename={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}
        ),
        **_pair("sentence1", "sentence2", "mrpc"),
    ),
    _glue(
        "QQP",
        "qqp",
        labels=("not_duplicate", "duplicate"),
        metrics=("f1", "accuracy"),
        tsv=TsvLayout(rename={"is_duplicate": "label"}),
        **_pair("question1", "question2", "qqp"),
    ),
    _glue(
        "STS-B",
        "stsb",
        kind="regression",
        labels=(),
        metrics=("pearson", "spearman"),
        tsv=TsvLayout(rename={"score": "label"}),
        **_pair("sentence1", "sentence2", "stsb"),
    ),
    _glue(
        "MNLI",
        "mnli",
        labels=("entailment", "neutral", "contradiction"),
        metrics=("accuracy",),
        eval_splits=("validation_matched", "validation_mismatched"),
        tsv=TsvLayout(
            files=dict(MNLI_FILES),
            rename={"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
        ),
        **_pair("premise", "hypothesis", "mnli"),
    ),
    _glue(
        "QNLI", "qnli", labels=NLI, metrics=("accuracy",), **_pair("question", "sentence", "qnli")
    ),
    _glue(
        "RTE", "rte", labels=NLI, metrics=("accuracy",), **_pair("sentence1", "sentence2", "rte")
    ),
    _glue(
        "WNLI",
        "wnli",
        labels=("not_entailment", "entailment"),
        metrics=("accuracy",),
        **_pair("sentence1", "sentence2", "wnli"),
    ),
)

SUPERGLUE_TASKS: tuple[TaskSpec, ...] = (
    _superglue(
        "BoolQ",
        "boolq",
        labels=BOOLEAN,
        metrics=("accuracy",),
        **_pair("question", "passage", "boolq"),
    ),
    _superglue(
        "CB",
        "cb",
        labels=("entailment", "contradiction", "neutral"),
        metrics=("accuracy", "macro_f1"),
        **_pair("premise", "hypothesis", "cb"),
    ),
    _superglue(
        "COPA",
        "copa",
        kind="choice",
        columns=("premise", "choice1", "choice2", "question"),
        labels=("choice1", "choice2"),
        choices=("choice1", "choice2"),
        t5_words=("first", "second"),
        metrics=("accuracy",),
        bert_segments=("{premise} What was the {question}?", "{candidate}"),
        t5_input=(
            "copa choice1: {choice1} choice2: {choice2} premise: {premise} question: {question}"
        ),
    ),
    _superglue(
        "MultiRC",
        "multirc",
        columns=("paragraph", "question", "answer"),
        labels=BOOLEAN,
        metrics=("f1a", "em"),
        bert_segments=("{paragraph}", "{question} {answer}"),
        t5_input="multirc question: {question} answer: {answer} paragraph: {paragraph}",
        group=True,
    ),
    _superglue(
        "ReCoRD",
        "record",
        kind="record",
        columns=("passage", "query", "entities", "answers"),
        labels=(),
        metrics=("f1", "em"),
        bert_segments=("{passage}", "{query}"),
        t5_input="record query: {query} entities: {entities} passage: {passage}",
    ),
    _superglue(
        "RTE", "rte", labels=NLI, metrics=("accuracy",), **_pair("premise", "hypothesis", "rte")
    ),
    _superglue(
        "WiC",
        "wic",
        columns=("word", "sentence1", "sentence2"),
        labels=BOOLEAN,
        metrics=("accuracy",),
        bert_segments=("{word}: {sentence1}", "{sentence2}"),
        t5_input="wic word: {word} sentence1: {sentence1} sentence2: {sentence2}",
    ),
    _superglue(
        "WSC",
        "wsc",
        columns=("text", "span1_text", "span2_text"),
        labels=BOOLEAN,
        metrics=("accuracy",),
        bert_segments=("{text}", "Does {span2_text} refer to {span1_text}?"),
        t5_input="wsc text: {text} pronoun: {span2_text} candidate: {span1_text}",
    ),
)

TASKS: dict[Suite, dict[str, TaskSpec]] = {
    "glue": {spec.name: spec for spec in GLUE_TASKS},
    "superglue": {spec.name: spec for spec in SUPERGLUE_TASKS},
}


def check_suite(suite: str) -> Suite:
    """``suite`` lower-cased, or an NtngError listing the suites."""
    name = suite.lower()
    if name not in SUITES:
        raise NtngError(f"suite = {suite!r}: not a known suite; allowed: {', '.join(SUITES)}")
    return name  # type: ignore[return-value]


def resolve_tasks(suite: str, names: list[str] | None) -> list[TaskSpec]:
    """The suite's tasks by name (any case, in the order given; all of them when None)."""
    known = TASKS[check_suite(suite)]
    if names is None:
        return list(known.values())
    by_lower = {name.lower(): spec for name, spec in known.items()}
    specs: list[TaskSpec] = []
    for name in names:
        spec = by_lower.get(name.strip().lower())
        if spec is None:
            raise NtngError(
                f"task {name!r} is not a {suite} task; allowed: {', '.join(known)} (any case)"
            )
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise NtngError(f"tasks: no task named; allowed: {', '.join(known)}")
    return specs
