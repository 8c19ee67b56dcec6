"""Small task data for the downstream tests: the benchmarks' own layouts, and the hub's."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "\n".join(lines) + "\n")


def small_benchmarks(root: Path) -> dict[str, Path]:
    """A few rows of WNLI, STS-B, MNLI, COPA, MultiRC and ReCoRD in the benchmarks' layouts."""
    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "in", "park", "old", "man"]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(6)) + " ."

    glue, superglue = root / "glue", root / "superglue"
    for split, rows in (("train", 24), ("dev", 12)):
        write_lines(
            glue / "WNLI" / f"{split}.tsv",
            ["index\tsentence1\tsentence2\tlabel"]
            + [f"{i}\t{sentence()}\t{sentence()}\t{i % 2}" for i in range(rows)],
        )
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
        write_lines(
            glue / "STS-B" / f"{split}.tsv",
            [f"{header}\tscore"]
            + [
                f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{sentence()}\t{sentence()}\t{i % 6:.3f}"
                for i in range(rows)
            ],
        )
    parses = "\t".join(["( a )"] * 4)
    header = "index\tpromptID\tpairID\tgenre\ts1_binary\ts2_binary\ts1_parse\ts2_parse"
    for split, rows in (("train", 24), ("dev_matched", 12), ("dev_mismatched", 10)):
        write_lines(
            glue / "MNLI" / f"{split}.tsv",
            [f"{header}\tsentence1\tsentence2\tlabel1\tgold_label"]
            + [
                f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{sentence()}\t{sentence()}\t{label}\t{label}"
                for i, label in enumerate(["entailment", "neutral", "contradiction"] * (rows // 3))
            ],
        )
    for split, rows in (("train", 16), ("val", 8)):
        copa = [
            {"premise": sentence(), "choice1": sentence(), "choice2": sentence(),
             "question": "cause" if i % 2 else "effect", "label": i % 2, "idx": i}
            for i in range(rows)
        ]  # fmt: skip
        multirc = [
            {"idx": i, "passage": {"text": sentence(), "questions": [
                {"idx": 0, "question": "who sat ?", "answers": [
                    {"idx": 0, "text": "the cat", "label": i % 2},
                    {"idx": 1, "text": "a dog", "label": 1 - i % 2}]}]}}
            for i in range(rows)
        ]  # fmt: skip
        record = [
            {"idx": i, "passage": {"text": "Ann met Bob in Rome .", "entities": [
                {"start": 0, "end": 2}, {"start": 8, "end": 10}, {"start": 15, "end": 18}]},
             "qas": [{"idx": 0, "query": "@placeholder met Bob",
                      "answers": [{"start": 0, "end": 2, "text": "Ann"}]}]}
            for i in range(rows)
        ]  # fmt: skip
        for task, records in (("COPA", copa), ("MultiRC", multirc), ("ReCoRD", record)):
            write_lines(superglue / task / f"{split}.jsonl", [json.dumps(r) for r in records])
    return {"glue": glue, "superglue": superglue}


def hub_repo(root: Path, tables: dict[str, dict[str, datasets.Dataset]]) -> Path:
    """A folder laid out as the hub's parquet repositories are: <config>/<split>-*.parquet."""
    configs = []
    for config, splits in tables.items():
        files = []
        for split, table in splits.items():
            table.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
            files.append(f"  - split: {split}\n    path: {config}/{split}-*")
        configs.append(f"- config_name: {config}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return root


def hub_cb(root: Path, rows: int) -> Path:
    """CB as the hub holds it (ClassLabel in the hub's order), train and validation."""
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "idx": datasets.Value("int32"),
            "label": datasets.ClassLabel(names=["entailment", "contradiction", "neutral"]),
        }
    )
    table = datasets.Dataset.from_dict(
        {
            "premise": [f"the cat sat on mat {i}" for i in range(rows)],
            "hypothesis": ["the cat sat"] * rows,
            "idx": list(range(rows)),
            "label": [i % 3 for i in range(rows)],
        },
        features=features,
    )
    root.mkdir(parents=True, exist_ok=True)
    return hub_repo(root, {"cb": {"train": table, "validation": table}})
