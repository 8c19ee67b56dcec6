"""Task data: the shared GLUE/SuperGLUE files, the original layouts' quirks, and the hub path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
from downstream_data import hub_repo, write_text

from ntng_ray.downstream.loaders import load_split
from ntng_ray.downstream.tasks import TASKS
from ntng_ray.errors import NtngError

GLUE_FILES = [
    ("CoLA", "train", "train.tsv"),
    ("CoLA", "validation", "dev.tsv"),
    ("SST-2", "train", "train.tsv"),
    ("SST-2", "validation", "dev.tsv"),
    ("STS-B", "train", "train.tsv"),
    ("STS-B", "validation", "dev.tsv"),
    ("QNLI", "validation", "dev.tsv"),
    ("WNLI", "train", "train.tsv"),
    ("WNLI", "validation", "dev.tsv"),
]
SUPERGLUE_FILES = [
    ("superglue", "CB", "train", "train.jsonl"),
    ("superglue", "CB", "validation", "val.jsonl"),
    ("superglue", "BoolQ", "validation", "val.jsonl"),
    ("superglue_fewglue32", "BoolQ", "train", "train.jsonl"),
    ("superglue_fewglue32", "COPA", "train", "train.jsonl"),
    ("superglue_fewglue32", "WiC", "train", "train.jsonl"),
    ("superglue_fewglue32", "WSC", "train", "train.jsonl"),
]
# Where the label and the last text column sit in each shared file's rows.
LABEL_COLUMN = {"CoLA": 1, "SST-2": -1, "STS-B": -1, "QNLI": -1, "WNLI": -1}
TEXT_COLUMN = {"CoLA": 3, "SST-2": 0, "STS-B": -2, "QNLI": -2, "WNLI": -2}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def glue(name: str):
    return TASKS["glue"][name]


def superglue(name: str):
    return TASKS["superglue"][name]


@pytest.mark.parametrize(("task", "split", "file"), GLUE_FILES)
def test_glue_loader_reads_every_row_and_label_of_the_shared_files(
    shared_data: Path, cache: Path, task: str, split: str, file: str
) -> None:
    path = shared_data / "glue" / task / file
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    rows = [line.split("\t") for line in (lines if task == "CoLA" else lines[1:])]
    table = load_split(glue(task), split, shared_data / "glue", None, cache)

    assert len(table) == len(rows)
    spec = glue(task)
    raw = [row[LABEL_COLUMN[task]] for row in rows]
    if spec.kind == "regression":
        assert table["label"] == pytest.approx([float(v) for v in raw])
    else:
        names = {n: i for i, n in enumerate(spec.labels)}
        assert table["label"] == [int(v) if v.isdigit() else names[v] for v in raw]
    assert table[spec.columns[-1]] == [row[TEXT_COLUMN[task]] for row in rows]


@pytest.mark.parametrize(("folder", "task", "split", "file"), SUPERGLUE_FILES)
def test_superglue_loader_reads_every_row_and_label_of_the_shared_files(
    shared_data: Path, cache: Path, folder: str, task: str, split: str, file: str
) -> None:
    records = [json.loads(line) for line in (shared_data / folder / task / file).open()]
    table = load_split(superglue(task), split, shared_data / folder, None, cache)

    assert len(table) == len(records)
    spec = superglue(task)
    expected = []
    for record in records:
        label = record["label"]
        if isinstance(label, str) and spec.labels == ("False", "True"):
            label = label == "true"  # BoolQ's val file: the strings "true" / "false"
        expected.append(spec.labels.index(label) if isinstance(label, str) else int(label))
    assert table["label"] == expected
    if task == "BoolQ" and split == "validation":
        assert {type(r["label"]) for r in records} == {str}
    if task == "WSC":
        assert table["span2_text"] == [r["target"]["span2_text"] for r in records]


def test_glue_layout_quirks_bom_headers_stray_quotes_and_mnli_dev_files(
    tmp_path: Path, cache: Path
) -> None:
    root = tmp_path / "glue"
    write_text(
        root / "MRPC" / "dev.tsv",
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tHe called " the witness " a liar .\tHe said " the witness " lied .\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tNA\n",
    )
    table = load_split(glue("MRPC"), "validation", root, None, cache)
    assert table.column_names == ["sentence1", "sentence2", "label"]
    assert table.to_list() == [
        {
            "sentence1": 'He called " the witness " a liar .',
            "sentence2": 'He said " the witness " lied .',
            "label": 1,
        },
        {"sentence1": "Yucaipa owned Dominick 's .", "sentence2": "NA", "label": 0},
    ]

    parses = "\t".join(["( a )"] * 4)
    header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
    header += "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"
    for file, gold in (("dev_matched.tsv", "neutral"), ("dev_mismatched.tsv", "contradiction")):
        write_text(
            root / "MNLI" / file,
            f"{header}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            f'0\t1\t1n\tfiction\t{parses}\tThe "new" rights\tEveryone\t{gold}\t{gold}'
            f"\tneutral\tneutral\tneutral\t{gold}\n",
        )
    for split, label in (("validation_matched", 1), ("validation_mismatched", 2)):
        table = load_split(glue("MNLI"), split, root, None, cache)
        assert table.to_list() == [
            {"premise": 'The "new" rights', "hypothesis": "Everyone", "label": label}
        ]

    write_text(
        root / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n"
    )
    assert load_split(glue("RTE"), "train", root, None, cache)["label"] == [1]


def test_superglue_nested_records_flatten_as_on_the_hub(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "superglue"
    multirc = {
        "idx": 4,
        "passage": {
            "text": "Tom ran.",
            "questions": [
                {
                    "idx": 0,
                    "question": "Who ran?",
                    "answers": [
                        {"idx": 0, "text": "Tom", "label": 1},
                        {"idx": 1, "text": "Ann", "label": 0},
                    ],
                },
                {
                    "idx": 1,
                    "question": "Did he?",
                    "answers": [{"idx": 2, "text": "yes", "label": 1}],
                },
            ],
        },
    }
    write_text(root / "MultiRC" / "val.jsonl", json.dumps(multirc) + "\n")
    table = load_split(superglue("MultiRC"), "validation", root, None, cache)
    assert table["answer"] == ["Tom", "Ann", "yes"]
    assert table["label"] == [1, 0, 1]
    assert table["group"] == ["4-0", "4-0", "4-1"]

    text = "Obama met Merkel in Berlin.\n@highlight\nObama visits Germany"
    spans = [
        {"start": text.index(w), "end": text.index(w) + len(w) - 1}
        for w in ("Obama", "Merkel", "Berlin")
    ]
    record = {
        "idx": 0,
        "passage": {"text": text, "entities": spans},
        "qas": [
            {
                "idx": 0,
                "query": "@placeholder hosted the visit",
                "answers": [{"start": 10, "end": 15, "text": "Merkel"}],
            }
        ],
    }
    write_text(root / "ReCoRD" / "val.jsonl", json.dumps(record) + "\n")
    table = load_split(superglue("ReCoRD"), "validation", root, None, cache)
    assert table.to_list() == [
        {
            "passage": "Obama met Merkel in Berlin.\n- Obama visits Germany",
            "query": "@placeholder hosted the visit",
            "entities": ["Berlin", "Merkel", "Obama"],
            "answers": ["Merkel"],
        }
    ]


def test_missing_files_and_bad_labels_are_named(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(NtngError, match=r"expected the file '.*/SST-2/dev\.tsv'"):
        load_split(glue("SST-2"), "validation", tmp_path, None, cache)
    write_text(
        tmp_path / "CB" / "val.jsonl", '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n'
    )
    with pytest.raises(NtngError, match=r"row 0: label 'maybe' is not one of entailment, "):
        load_split(superglue("CB"), "validation", tmp_path, None, cache)


def test_hub_path_reads_the_hubs_parquet_layout(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "glue").mkdir()
    sst2 = datasets.Dataset.from_dict(
        {"sentence": ["good", "bad", "fine"], "label": [1, 0, 1], "idx": [0, 1, 2]},
        features=datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["negative", "positive"]),
                "idx": datasets.Value("int32"),
            }
        ),
    )
    nli = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": datasets.Value("int32"),
        }
    )
    mnli = {
        split: datasets.Dataset.from_dict(
            {"premise": ["p"], "hypothesis": ["h"], "label": [label], "idx": [0]}, features=nli
        )
        for split, label in (("train", 0), ("validation_matched", 1), ("validation_mismatched", 2))
    }
    repo = hub_repo(tmp_path / "glue", {"sst2": {"validation": sst2}, "mnli": mnli})

    table = load_split(glue("SST-2"), "validation", None, str(repo), cache)
    assert table.to_list() == [
        {"sentence": "good", "label": 1},
        {"sentence": "bad", "label": 0},
        {"sentence": "fine", "label": 1},
    ]
    assert load_split(glue("MNLI"), "validation_mismatched", None, str(repo), cache)["label"] == [2]
    with pytest.raises(NtngError, match=r"config 'cola'"):
        load_split(glue("CoLA"), "validation", None, str(repo), cache)


def test_hub_superglue_labels_map_by_name_and_multirc_groups(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "sg").mkdir()
    # Class names in another order than the task's: labels follow the names, not the ints.
    cb = datasets.Dataset.from_dict(
        {"premise": ["p", "q"], "hypothesis": ["h", "i"], "idx": [0, 1], "label": [0, 2]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "idx": datasets.Value("int32"),
                "label": datasets.ClassLabel(names=["neutral", "entailment", "contradiction"]),
            }
        ),
    )
    multirc = datasets.Dataset.from_dict(
        {
            "paragraph": ["P", "P"],
            "question": ["Q", "Q"],
            "answer": ["a", "b"],
            "idx": [
                {"paragraph": 3, "question": 7, "answer": 0},
                {"paragraph": 3, "question": 7, "answer": 1},
            ],
            "label": [1, 0],
        },
        features=datasets.Features(
            {
                "paragraph": datasets.Value("string"),
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "idx": {
                    "paragraph": datasets.Value("int32"),
                    "question": datasets.Value("int32"),
                    "answer": datasets.Value("int32"),
                },
                "label": datasets.ClassLabel(names=["False", "True"]),
            }
        ),
    )
    repo = hub_repo(tmp_path / "sg", {"cb": {"validation": cb}, "multirc": {"validation": multirc}})
    cb_table = load_split(superglue("CB"), "validation", None, str(repo), cache)
    assert cb_table["label"] == [2, 1]  # neutral, contradiction in the task's order
    table = load_split(superglue("MultiRC"), "validation", None, str(repo), cache)
    assert table.to_list() == [
        {"paragraph": "P", "question": "Q", "answer": "a", "label": 1, "group": "3-7"},
        {"paragraph": "P", "question": "Q", "answer": "b", "label": 0, "group": "3-7"},
    ]


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs an offline hub")
def test_hub_unreachable_offline_says_to_use_data_dir(cache: Path) -> None:
    with pytest.raises(NtngError, match="--data-dir"):
        load_split(glue("SST-2"), "validation", None, None, cache)
