"""Task data through HF ``datasets``: local copies in the benchmarks' layouts, or the hub.

Local GLUE is ``<data_dir>/<TASK>/{train,dev}.tsv`` as GLUE's download script writes it
(MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``): tab-separated with no quoting (texts
hold stray quotes), a header row except CoLA's, a BOM on MRPC's files. Local SuperGLUE is
``<data_dir>/<Task>/{train,val}.jsonl``, with labels as JSON booleans, ints or strings
("true"/"false", class names). The hub path reads ``nyu-mll/glue`` / ``aps/super_glue`` (or any
repository or local folder in their parquet layout). Every source comes out as the task's
canonical table (see ``tasks.py``): its columns and an integer ``label`` in the hub's order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

from ntng_ray.downstream.tasks import HUB_REPOS, SUPERGLUE_FILES, TaskSpec
from ntng_ray.errors import NtngError

LABEL = "label"
GROUP = "group"


def local_file(spec: TaskSpec, split: str, data_dir: Path) -> Path:
    """Where the benchmark's distribution keeps ``split`` of the task under ``data_dir``."""
    files = spec.tsv.files if spec.tsv is not None else SUPERGLUE_FILES
    return data_dir / spec.folder / files[split]


def check_local_files(spec: TaskSpec, data_dir: Path, splits: tuple[str, ...]) -> None:
    """Fail before any training when a split's file is missing, naming the path expected."""
    for split in splits:
        path = local_file(spec, split, data_dir)
        if not path.is_file():
            raise NtngError(
                f"{spec.suite} task {spec.name}: {split} data not found; expected the file "
                f"{str(path)!r} (the benchmark's own layout under --data-dir {str(data_dir)!r})"
            )


def load_split(
    spec: TaskSpec, split: str, data_dir: Path | None, hub_repo: str | None, cache_dir: Path
) -> datasets.Dataset:
    """One split of a task as its canonical table: from ``data_dir`` if given, else the hub."""
    if split not in spec.splits:
        raise NtngError(f"{spec.name}: split {split!r} unknown; allowed: {', '.join(spec.splits)}")
    if data_dir is not None:
        check_local_files(spec, data_dir, (split,))
        path = local_file(spec, split, data_dir)
        raw = _read_tsv(spec, path, cache_dir) if spec.tsv else _read_jsonl(path, cache_dir)
        return canonical_table(spec, raw, str(path))
    repo = hub_repo or HUB_REPOS[spec.suite]
    return canonical_table(spec, _read_hub(spec, split, repo, cache_dir), f"{repo} {split}")


def _read_tsv(spec: TaskSpec, path: Path, cache_dir: Path) -> datasets.Dataset:
    """A GLUE TSV with every column as text, its columns renamed to the hub's names.

    Every column is read as a string (no type guessing, no "NA" turned into a missing value),
    so a sentence is kept exactly as written.
    """
    layout = spec.tsv
    assert layout is not None
    if layout.names is not None:
        names, header = list(layout.names), None
    else:
        with path.open(encoding="utf-8-sig") as handle:
            names, header = handle.readline().rstrip("\r\n").split("\t"), 0
    features = datasets.Features({name: datasets.Value("string") for name in names})
    table = _load(
        "csv",
        path,
        cache_dir,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        header=header,
        column_names=names if header is None else None,
        features=features,
        encoding="utf-8-sig",
        keep_default_na=False,
        na_filter=False,
    )
    return table.rename_columns({k: v for k, v in layout.rename.items() if k in names})


def _read_jsonl(path: Path, cache_dir: Path) -> datasets.Dataset:
    return _load("json", path, cache_dir)


def _load(builder: str, path: Path, cache_dir: Path, **options: Any) -> datasets.Dataset:
    try:
        return datasets.load_dataset(
            builder,
            data_files=str(path.resolve()),
            split="train",
            cache_dir=str(cache_dir / "hf_datasets"),
            **options,
        )
    except DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise NtngError(f"could not read {str(path)!r} as {builder}: {cause}") from None


def _read_hub(spec: TaskSpec, split: str, repo: str, cache_dir: Path) -> datasets.Dataset:
    """The hub dataset's split (or a local folder in the hub's layout), label names resolved."""
    where = f"{spec.name} from {repo!r} (config {spec.hub_config!r}, split {split!r})"
    try:
        table = datasets.load_dataset(
            repo, spec.hub_config, split=split, cache_dir=str(cache_dir / "hf_datasets")
        )
    except ConnectionError as exc:
        raise NtngError(
            f"{where}: could not reach the Hugging Face hub ({exc}); offline machines pass "
            "--data-dir with local copies in the benchmark's layout"
        ) from None
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        raise NtngError(f"{where}: {exc}") from None
    feature = table.features.get(LABEL)
    if isinstance(feature, datasets.ClassLabel):
        names = feature.names
        features = table.features.copy()
        features[LABEL] = datasets.Value("string")
        table = table.map(
            lambda labels: {LABEL: [names[i] if i >= 0 else str(i) for i in labels]},
            input_columns=LABEL,
            batched=True,
            features=features,
            desc=f"{spec.name} label names",
        )
    if spec.group:
        table = table.map(
            lambda row: {GROUP: f"{row['idx']['paragraph']}-{row['idx']['question']}"},
            desc=f"{spec.name} question groups",
        )
    return table


def canonical_table(spec: TaskSpec, table: datasets.Dataset, source: str) -> datasets.Dataset:
    """Flatten SuperGLUE's nested records, check the columns, and parse every label."""
    if spec.group and GROUP not in table.column_names:
        table = _flatten_multirc(table)
    elif spec.kind == "record" and "qas" in table.column_names:
        table = _flatten_record(table)
    elif "target" in table.column_names:
        table = _flatten_wsc(table)
    wanted = list(spec.columns) + ([] if spec.kind == "record" else [LABEL])
    wanted += [GROUP] if spec.group else []
    missing = [column for column in wanted if column not in table.column_names]
    if missing:
        raise NtngError(
            f"{spec.name} ({source}): columns {missing} missing; the data has {table.column_names}"
        )
    table = table.select_columns(wanted)
    if spec.kind == "record":
        return table
    parse = _parse_score if spec.kind == "regression" else _parse_class
    return table.map(
        lambda labels, indices: {
            LABEL: [parse(spec, v, source, i) for v, i in zip(labels, indices, strict=True)]
        },
        input_columns=LABEL,
        with_indices=True,
        batched=True,
        features=_canonical_features(spec, table),
        desc=f"{spec.name} labels",
    )


def _canonical_features(spec: TaskSpec, table: datasets.Dataset) -> datasets.Features:
    features = table.features.copy()
    features[LABEL] = datasets.Value("float32" if spec.kind == "regression" else "int64")
    return features


def _parse_class(spec: TaskSpec, value: Any, source: str, row: int) -> int:
    """A class index from a bool, an int, a digit string or a class name (any case)."""
    names = {label.lower(): index for index, label in enumerate(spec.labels)}
    if isinstance(value, bool):
        index = int(value)
    elif isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().lower() in names:
        index = names[value.strip().lower()]
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value)
    else:
        index = -1
    if not 0 <= index < len(spec.labels):
        raise NtngError(
            f"{spec.name} ({source}), row {row}: label {value!r} is not one of "
            f"{', '.join(spec.labels)} (or their indices 0-{len(spec.labels) - 1})"
        )
    return index


def _parse_score(spec: TaskSpec, value: Any, source: str, row: int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise NtngError(
            f"{spec.name} ({source}), row {row}: score {value!r} is not a number"
        ) from None


def _flatten_multirc(table: datasets.Dataset) -> datasets.Dataset:
    """One row per answer option, grouped by question, as the hub lays MultiRC out."""

    def flatten(batch: dict[str, list]) -> dict[str, list]:
        rows: dict[str, list] = {
            "paragraph": [],
            "question": [],
            "answer": [],
            LABEL: [],
            GROUP: [],
        }
        for passage_index, passage in zip(batch["idx"], batch["passage"], strict=True):
            for question in passage["questions"]:
                for answer in question["answers"]:
                    rows["paragraph"].append(passage["text"])
                    rows["question"].append(question["question"])
                    rows["answer"].append(answer["text"])
                    rows[LABEL].append(answer.get(LABEL))
                    rows[GROUP].append(f"{passage_index}-{question['idx']}")
        return rows

    return table.map(
        flatten, batched=True, remove_columns=table.column_names, desc="MultiRC answers"
    )


def _flatten_record(table: datasets.Dataset) -> datasets.Dataset:
    """One row per query, with the passage's entity strings, as the hub lays ReCoRD out.

    Entity and answer spans index the original text (end inclusive); the passage's
    "@highlight" markers then become dashes, as in the hub's copy.
    """

    def flatten(batch: dict[str, list]) -> dict[str, list]:
        rows: dict[str, list] = {"passage": [], "query": [], "entities": [], "answers": []}
        for passage, queries in zip(batch["passage"], batch["qas"], strict=True):
            text = passage["text"]
            entities = sorted({text[e["start"] : e["end"] + 1] for e in passage["entities"]})
            for qa in queries:
                rows["passage"].append(text.replace("@highlight\n", "- "))
                rows["query"].append(qa["query"])
                rows["entities"].append(entities)
                rows["answers"].append(sorted({a["text"] for a in qa.get("answers") or []}))
        return rows

    return table.map(
        flatten, batched=True, remove_columns=table.column_names, desc="ReCoRD queries"
    )


def _flatten_wsc(table: datasets.Dataset) -> datasets.Dataset:
    """The target's spans as columns, as the hub lays WSC out."""
    return table.map(
        lambda row: {key: row["target"][key] for key in ("span1_text", "span2_text")},
        desc="WSC spans",
    )
