"""The command line: help is useful, reference tables validate, and bad input fails cleanly.

Every bad-input case must exit non-zero with a message naming the problem, and leave no output
folder behind.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

from ntng_ray.cli import build_parser, main
from ntng_ray.rst.table import parse_table, write_table


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_help_names_every_command(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for command in ("pretrain", "calibrate", "rst", "config", "presets", "ui"):
        assert command in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--help"])
    assert "summary.json" in capsys.readouterr().out


def test_rst_list_and_validate(capsys) -> None:
    code, out = run(capsys, "rst", "list")
    assert code == 0
    for name in ("paper-bert-rtx3090", "paper-bert-rtx3090-fixed", "paper-t5-a100"):
        assert name in out
    code, out = run(capsys, "rst", "validate", "paper-bert-rtx3090")
    assert code != 0 and "layer 7" in out
    assert run(capsys, "rst", "validate", "paper-bert-rtx3090-fixed")[0] == 0
    assert run(capsys, "rst", "validate", "paper-t5-a100")[0] == 0


@pytest.mark.integration
def test_calibrate_writes_a_table_that_validates(tmp_path, capsys) -> None:
    out = tmp_path / "table.json"
    code, text = run(
        capsys, "calibrate", "--preset", "bert-tiny", "--microbatch", "16", "--repeats", "3",
        "--warmup", "1", "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    table = json.loads(out.read_text())
    assert table["preset"] == "bert-tiny" and table["unit"]["sequences"] == 16
    assert sorted(map(int, table["train_seconds"])) == [1, 2, 3, 4]
    assert set(table["optimizer_step_seconds"]) == {"adamw", "lion", "sophia"}
    assert table["hessian_seconds"] > 0
    assert run(capsys, "rst", "validate", str(out))[0] == 0


@pytest.fixture
def corrupt_table(tmp_path) -> str:
    """A properly hashed table whose 3-layer entry is negative."""
    data = json.loads((resources.files("ntng_ray.rst.tables") / "paper-t5-a100.json").read_text())
    data["train_seconds"]["3"] = -1.0
    path = tmp_path / "bad-table.json"
    write_table(parse_table(data), path)
    return str(path)


BAD_INPUTS = [
    (["model.preset=bert-giant"], "model.preset = 'bert-giant'"),
    (["budget.rst_seconds=-1"], "budget.rst_seconds = -1"),
    (["data.source=files", "data.files=[/nonexistent/corpus.txt]"], "/nonexistent/corpus.txt"),
    (["data.source=files", "data.files=[/nonexistent/*.txt]"], "/nonexistent/*.txt"),
    (["tokenizer.vocab_size=64"], "tokenizer.vocab_size = 64"),
    (["schedule.name=linear"], "schedule.name = 'linear'"),
    (["optimizer.lr=0"], "optimizer.lr = 0"),
    (["train.grad_accum=0"], "train.grad_accum = 0"),
    (["rst.table=no-such-table"], "no-such-table"),
    (["rst.table=paper-t5-a100"], "paper-t5-a100"),
    (["rst.table=paper-bert-rtx3090"], "bound to preset 'bert-crammed'"),
    (["data.source=hub", "data.hub_name=c4"], "c4"),
    (["optimizer.name=sgd"], "optimizer.name = 'sgd'"),
    (["eval.points=[1.5]"], "progress points must lie in [0, 1]"),
    (["budget"], "expected key=value"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUTS)
def test_bad_input_fails_early_and_writes_nothing(
    tmp_path, capsys, overrides: list[str], expected: str
) -> None:
    out = tmp_path / "never"
    code, text = run(capsys, "pretrain", "bert-tiny-synthetic", *overrides, f"output_dir={out}")
    assert code == 2
    assert "ntng: error:" in text and expected in text, text
    assert not out.exists()


def test_malformed_yaml_and_missing_config(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: [bert-tiny\n")
    code, text = run(capsys, "pretrain", str(bad), f"output_dir={tmp_path / 'o'}")
    assert code == 2 and "not valid YAML" in text and str(bad) in text
    code, text = run(capsys, "pretrain", str(tmp_path / "absent.yaml"))
    assert code == 2 and "absent.yaml" in text
    assert not (tmp_path / "o").exists()


def test_invalid_table_file_names_the_entry(tmp_path, capsys, corrupt_table: str) -> None:
    code, text = run(capsys, "rst", "validate", corrupt_table)
    assert code != 0 and "train_seconds" in text and "layer 3" in text


def test_run_refuses_an_invalid_table_for_its_preset(tmp_path, capsys) -> None:
    data = json.loads((resources.files("ntng_ray.rst.tables") / "cpu-bert-tiny.json").read_text())
    data["train_seconds"]["3"] = data["train_seconds"]["1"] / 2
    path = tmp_path / "bad-bert-tiny.json"
    write_table(parse_table(data), path)
    out = tmp_path / "never"
    code, text = run(
        capsys, "pretrain", "bert-tiny-synthetic", f"rst.table={path}", f"output_dir={out}"
    )
    assert code == 2 and "layer 3" in text and "allow_invalid_table" in text, text
    assert not out.exists()


def test_non_empty_output_dir_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, text = run(capsys, "pretrain", "bert-tiny-synthetic", f"output_dir={out}")
    assert code == 2 and "is not empty" in text and "overwrite=true" in text
    assert [p.name for p in out.iterdir()] == ["summary.json"]
