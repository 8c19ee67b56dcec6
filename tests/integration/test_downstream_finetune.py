"""Fine-tuning real tiny checkpoints: BERT learns SST-2, T5 writes CB's label words; the CLI.

The checkpoints come from real (very short) pretraining runs. BERT's is pretrained on
WikiText-2 so that its WordPiece vocabulary holds English words: with the synthetic corpus's
few hundred words, SST-2's reviews fall apart into letters and a 4-layer model needs far more
steps than a test affords to learn sentiment from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from downstream_data import hub_cb, small_benchmarks
from fast import SMALL_DATA
from paths import SHARED_DATA

from ntng_ray.cli import main
from ntng_ray.config import load_config
from ntng_ray.downstream.finetune import finetune_suite
from ntng_ray.downstream.settings import load_settings
from ntng_ray.errors import NtngError
from ntng_ray.train.run import pretrain

# The recipe is the real one; only the sizes shrink. One thread: on a shared 2-core machine
# two threads per process stall on each other's time slices.
QUICK = ["max_length=48", "threads=1", "eval_batch_size=128"]
WIKITEXT = SHARED_DATA / "pretrain_text" / "wikitext-2" / "valid.txt"


def pretrained(out: Path, config: str, overrides: list[str]) -> Path:
    common = ["budget.rst_seconds=3", "eval.points=[]", "train.threads=1", "tracking.enabled=false"]
    pretrain(load_config(config, [*SMALL_DATA, *common, *overrides, f"output_dir={out}"]))
    return out


def wikitext_bert(out: Path, overrides: list[str]) -> Path:
    """A tiny BERT pretrained for 3 RST seconds on WikiText-2 (its run's output_dir)."""
    if not WIKITEXT.is_file():
        pytest.skip(f"shared data file {WIKITEXT} is absent (it exists only in CI)")
    source = ["data.source=files", f"data.files=[{WIKITEXT}]"]
    return pretrained(out, "bert-tiny-synthetic", [*source, *overrides])


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HF BERT (post-LN, bert-tiny)."""
    return wikitext_bert(tmp_path_factory.mktemp("bert"), [])


@pytest.fixture(scope="module")
def crammed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Crammed BERT (bert-crammed-tiny): no token types, Cramming's classification head."""
    crammed = ["model.preset=bert-crammed-tiny", "rst.table=cpu-bert-crammed-tiny"]
    return wikitext_bert(tmp_path_factory.mktemp("crammed"), crammed)


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 pretrained for 3 RST seconds on the synthetic corpus."""
    return pretrained(tmp_path_factory.mktemp("t5"), "t5-tiny-synthetic", [])


def test_crammed_bert_fine_tuned_on_sst2_beats_the_majority_class(
    crammed: Path, shared_data: Path, tmp_path: Path
) -> None:
    """The study's architecture through GLUE (HF BERT's head is trained by the tests below)."""
    settings = load_settings(
        [*QUICK, "max_train_examples=6400", "epochs=1", "batch_size=16", "lr=5e-4"]
    )
    scores = finetune_suite(crammed, "glue", ["sst-2"], shared_data / "glue", settings, tmp_path)

    dev = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    positive = sum(line.endswith("\t1") for line in dev)
    majority = max(positive, len(dev) - positive) / len(dev)
    result = scores["tasks"]["SST-2"]
    assert result["n_eval"] == len(dev) == 872
    assert result["n_train"] == 6400
    assert result["metrics"]["accuracy"] > majority + 0.03, (majority, result)
    assert json.loads((tmp_path / "scores.json").read_text()) == scores


def test_t5_fine_tuned_on_cb_writes_valid_label_words(
    t5: Path, shared_data: Path, tmp_path: Path
) -> None:
    settings = load_settings([*QUICK, "epochs=4", "lr=1e-3"])
    scores = finetune_suite(t5, "superglue", ["CB"], shared_data / "superglue", settings, tmp_path)

    result = scores["tasks"]["CB"]
    assert scores["t5_mode"] == "generation"
    assert result["n_eval"] == 56
    assert result["invalid_predictions"] == 0, result
    metrics = result["metrics"]
    assert set(metrics) == {"accuracy", "macro_f1"}
    assert scores["average"] == pytest.approx((metrics["accuracy"] + metrics["macro_f1"]) / 2)


def test_cli_writes_scores_json_with_wnli_left_out_of_the_average(
    bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = small_benchmarks(tmp_path / "data")
    out = tmp_path / "out"
    checkpoint = ["--checkpoint", str(bert / "model"), "--suite", "GLUE"]
    tasks = ["--tasks", "wnli,sts-b,mnli", "--data-dir", str(data["glue"])]
    code = main(["finetune", *checkpoint, *tasks, f"output_dir={out}", "epochs=1", *QUICK])
    assert code == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["suite"] == "glue"
    tasks = scores["tasks"]
    assert list(tasks) == ["WNLI", "STS-B", "MNLI"]
    assert set(tasks["STS-B"]["metrics"]) == {"pearson", "spearman"}
    assert set(tasks["WNLI"]["metrics"]) == {"accuracy"}
    assert set(tasks["MNLI"]["metrics"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert [task["n_eval"] for task in tasks.values()] == [12, 12, 12 + 9]
    assert scores["averaged_tasks"] == ["STS-B", "MNLI"]
    assert scores["excluded_from_average"] == ["WNLI"]
    average = (tasks["STS-B"]["score"] + tasks["MNLI"]["score"]) / 2
    assert scores["average"] == pytest.approx(average)
    assert scores["settings"]["epochs"] == 1 and scores["settings"]["lr"] == 4e-5
    printed = capsys.readouterr().out
    assert "glue average" in printed and str(out / "scores.json") in printed


@pytest.mark.parametrize("architecture", ["bert", "crammed"])
def test_ranking_tasks_are_deterministic_by_seed_and_best_epoch_is_labelled(
    architecture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Sentence pairs too: crammed BERT tells them apart by [SEP] alone (no token types)."""
    bert = request.getfixturevalue(architecture)
    data = small_benchmarks(tmp_path / "data")
    settings = load_settings([*QUICK, "epochs=2", "report=best", "lr=1e-3"])

    def run(name: str) -> dict:
        scores = finetune_suite(
            bert, "superglue", ["COPA", "ReCoRD"], data["superglue"], settings, tmp_path / name
        )
        for task in scores["tasks"].values():
            task.pop("wall_seconds")
        return scores

    first, second = run("a"), run("b")
    assert first == second
    copa, record = first["tasks"]["COPA"], first["tasks"]["ReCoRD"]
    assert set(copa["metrics"]) == {"accuracy"} and copa["n_eval"] == 8
    assert set(record["metrics"]) == {"f1", "em"} and record["n_eval"] == 8
    assert first["report"] == "best"
    for task in (copa, record):
        assert task["epoch_reported"] in (1, 2)
        assert task["last_epoch"]["epoch"] == 2
        assert task["score"] >= task["last_epoch"]["score"]


def test_t5_text_to_text_for_multirc_and_record(t5: Path, tmp_path: Path) -> None:
    data = small_benchmarks(tmp_path / "data")
    settings = load_settings([*QUICK, "epochs=1"])
    scores = finetune_suite(
        t5, "superglue", ["multirc", "record"], data["superglue"], settings, tmp_path
    )
    multirc, record = scores["tasks"]["MultiRC"], scores["tasks"]["ReCoRD"]
    assert set(multirc["metrics"]) == {"f1a", "em"} and multirc["n_eval"] == 16
    assert set(record["metrics"]) == {"f1", "em"} and record["n_eval"] == 8
    assert scores["averaged_tasks"] == ["MultiRC", "ReCoRD"]


def test_without_data_dir_tasks_come_from_the_hub_layout(t5: Path, tmp_path: Path) -> None:
    repo = hub_cb(tmp_path / "hub", rows=12)
    settings = load_settings([*QUICK, "epochs=1", f"hub_repo={repo}", "max_eval_examples=5"])
    scores = finetune_suite(t5, "superglue", ["cb"], None, settings, tmp_path / "out")
    assert scores["tasks"]["CB"]["n_train"] == 12
    assert scores["tasks"]["CB"]["n_eval"] == 5
    assert scores["settings"]["hub_repo"] == str(repo)


def test_bad_input_fails_before_any_training(
    t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = small_benchmarks(tmp_path / "data")
    base = ["finetune", "--checkpoint", str(t5), "--suite", "superglue"]
    out = f"output_dir={tmp_path / 'out'}"

    assert main([*base, "--tasks", "copa,boolqq", "--data-dir", str(data["superglue"]), out]) == 2
    assert "'boolqq' is not a superglue task; allowed: BoolQ, CB, COPA" in capsys.readouterr().err

    assert main([*base, "--tasks", "COPA,CB", "--data-dir", str(data["superglue"]), out]) == 2
    err = capsys.readouterr().err
    assert f"expected the file '{data['superglue'] / 'CB' / 'train.jsonl'}'" in err

    assert main([*base, "--tasks", "COPA", "batch_size=0", "report=worst", out]) == 2
    err = capsys.readouterr().err
    assert "batch_size = 0" in err and "report = 'worst'" in err

    assert main(["finetune", "--checkpoint", str(tmp_path), "--suite", "glue", out]) == 2
    assert "no exported model there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    with pytest.raises(NtngError, match="allowed: glue, superglue"):
        finetune_suite(t5, "glu", None, None, load_settings([]), tmp_path / "out")
