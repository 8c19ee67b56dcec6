"""Reference tables: the shipped study tables, the file format, hashing and validation."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from ntng_ray.errors import NtngError
from ntng_ray.rst import (
    ReferenceTable,
    TableUnit,
    list_shipped_tables,
    load_table,
    parse_table,
    resolve_table,
    shipped_table_names,
    validate_table,
    write_table,
)

SHIPPED = [
    "cpu-bert-crammed-tiny",
    "cpu-bert-tiny",
    "cpu-t5-tiny",
    "paper-bert-rtx3090",
    "paper-bert-rtx3090-fixed",
    "paper-t5-a100",
]
PAPER_BERT = [0.02521, 0.03837, 0.05177, 0.06508, 0.07847, 0.09188, 0.01052, 0.1186,
              0.1319, 0.1454, 0.1589, 0.1722, 0.1857, 0.1988, 0.212, 0.2253]  # fmt: skip


def small_table(**changes: object) -> ReferenceTable:
    """A valid 4-layer table bound to the bert-tiny preset, with exactly representable costs."""
    table = ReferenceTable(
        name="tiny-cpu",
        preset="bert-tiny",
        description="test table",
        machine={"cpu": "test"},
        software={"torch": "test"},
        unit=TableUnit("microbatch", 4, 128, None, includes_optimizer=False),
        train_seconds={1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0},
    )
    return replace(table, **changes)


def problems_of(table: ReferenceTable) -> str:
    return "\n".join(validate_table(table).problems)


def written(tmp_path: Path, table: ReferenceTable) -> dict:
    path = write_table(table, tmp_path / "t.json")
    return json.loads(path.read_text())


def load_data(tmp_path: Path, data: object, name: str = "edited.json") -> ReferenceTable:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return load_table(path)


# --- shipped tables --------------------------------------------------------------------------


def test_shipped_tables_are_listed_and_load_with_matching_hashes() -> None:
    assert shipped_table_names() == SHIPPED
    tables = list_shipped_tables()
    assert [t.table_id for t in tables] == SHIPPED
    assert all(len(t.content_hash) == 64 for t in tables)


def test_paper_bert_table_is_exactly_as_published_and_refused_naming_layer_7() -> None:
    table = load_table("paper-bert-rtx3090")
    assert list(table.train_seconds.values()) == PAPER_BERT
    assert table.forward_seconds == {16: 0.09285}
    assert table.preset == "bert-crammed"
    assert table.unit == TableUnit("microbatch", 128, 128, None, False, "adamw")
    report = validate_table(table)
    assert not report.ok
    assert report.worst_rel_residual_layer == 7
    assert report.worst_abs_residual_layer == 7
    assert any("layer 7" in p and "not above layer 6" in p for p in report.problems)
    assert any("layer 7" in p and "linear fit" in p for p in report.problems)
    assert "INVALID" in report.summary()
    assert "layer 7" in report.summary()


def test_fixed_bert_table_replaces_layer_7_by_the_fit_of_the_others() -> None:
    table = load_table("paper-bert-rtx3090-fixed")
    others = {k: v for k, v in enumerate(PAPER_BERT, start=1) if k != 7}
    xs, ys = list(others), list(others.values())
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    expected = float(f"{mean_y + slope * (7 - mean_x):.5g}")
    assert table.train_seconds[7] == expected == pytest.approx(0.1053, abs=5e-5)
    assert {k: v for k, v in table.train_seconds.items() if k != 7} == others
    assert "least-squares" in table.note
    assert "7-layer" in table.note
    assert validate_table(table).ok


def test_t5_table_passes_and_carries_the_optimizer_figures() -> None:
    table = load_table("paper-t5-a100")
    assert table.preset == "t5-v1_1-base"
    assert table.num_layers == 12
    assert table.unit == TableUnit("optimizer_step", 144, 512, 114, True, "adamw")
    assert table.train_seconds[1] == 0.129
    assert table.train_seconds[12] == 1.031
    assert table.full_unit_seconds_by_optimizer == {"adamw": 1.031, "lion": 1.043, "sophia": 1.156}
    report = validate_table(table)
    assert report.ok, report.summary()
    assert report.fit.slope == pytest.approx(0.082, rel=0.01)


# --- validation ------------------------------------------------------------------------------


def test_a_gap_in_train_seconds_is_named() -> None:
    table = small_table(preset="custom", train_seconds={1: 0.25, 2: 0.5, 4: 1.0})
    assert "missing layer counts 3" in problems_of(table)


def test_depth_must_match_a_known_preset() -> None:
    table = small_table(train_seconds={1: 0.25, 2: 0.5, 3: 0.75})
    assert "preset 'bert-tiny' has 4 layers" in problems_of(table)


def test_an_unknown_preset_is_not_required_to_exist() -> None:
    assert validate_table(small_table(preset="my-own-model")).ok


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"train_seconds": {1: 0.0, 2: 0.5, 3: 0.75, 4: 1.0}}, "train_seconds.1 = 0.0"),
        ({"forward_seconds": {2: -0.25}}, "forward_seconds.2 = -0.25"),
        ({"optimizer_step_seconds": {"adamw": math.nan}}, "optimizer_step_seconds.adamw = nan"),
        ({"hessian_seconds": 0.0}, "hessian_seconds = 0.0"),
    ],
)
def test_non_positive_entries_are_named(changes: dict, named: str) -> None:
    problems = problems_of(small_table(**changes))
    assert named in problems
    assert "positive" in problems


def test_forward_seconds_must_rise_and_stay_below_train() -> None:
    problems = problems_of(small_table(forward_seconds={1: 0.125, 3: 0.125, 4: 1.0}))
    assert "forward_seconds: layer 3" in problems
    assert "forward_seconds.4 = 1.0: a forward pass must cost less" in problems


def test_a_monotone_but_far_from_linear_table_is_refused_naming_the_layer() -> None:
    table = small_table(train_seconds={1: 0.25, 2: 0.3, 3: 0.35, 4: 2.0})
    report = validate_table(table)
    assert report.worst_rel_residual > 0.25
    assert f"layer {report.worst_rel_residual_layer}" in "\n".join(report.problems)
    assert validate_table(table, max_relative_residual=10.0).ok


def test_optimizer_entries_must_fit_the_unit() -> None:
    excluding = small_table(full_unit_seconds_by_optimizer={"adamw": 1.0})
    assert "the unit excludes the optimizer" in problems_of(excluding)
    including_unit = TableUnit("optimizer_step", 4, 128, None, includes_optimizer=True)
    including = small_table(unit=including_unit, optimizer_step_seconds={"adamw": 0.1})
    assert "the unit already includes the optimizer" in problems_of(including)
    no_reference = small_table(unit=including_unit, full_unit_seconds_by_optimizer={"lion": 1.0})
    assert "needs the reference optimizer 'adamw'" in problems_of(no_reference)


def test_report_to_dict_is_json_data() -> None:
    data = validate_table(small_table()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is True
    assert data["fit"]["slope"] == pytest.approx(0.25)


# --- resolve_table ---------------------------------------------------------------------------


def test_resolve_refuses_a_table_bound_to_another_preset() -> None:
    with pytest.raises(NtngError, match=r"bound to preset 't5-v1_1-base'.*'bert-tiny'"):
        resolve_table("paper-t5-a100", "bert-tiny")


def test_resolve_refuses_an_invalid_table_unless_allowed() -> None:
    with pytest.raises(NtngError, match=r"(?s)layer 7.*allow_invalid_table"):
        resolve_table("paper-bert-rtx3090", "bert-crammed")
    table, report = resolve_table("paper-bert-rtx3090", "bert-crammed", allow_invalid=True)
    assert table.table_id == "paper-bert-rtx3090"
    assert report.overridden
    assert not report.ok
    assert "used anyway" in report.summary()


def test_resolve_returns_a_valid_table_unflagged() -> None:
    table, report = resolve_table("paper-t5-a100", "t5-v1_1-base")
    assert report.ok
    assert not report.overridden
    assert report.content_hash == table.content_hash


# --- file format -----------------------------------------------------------------------------


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    table = small_table(note="measured", forward_seconds={4: 0.5}, hessian_seconds=0.125)
    path = write_table(table, tmp_path / "sub" / "t.json")
    loaded = load_table(path)
    assert loaded == table
    assert loaded.content_hash == table.content_hash
    assert json.loads(path.read_text())["sha256"] == table.content_hash
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]
    write_table(replace(table, name="again"), path)
    assert load_table(str(path)).name == "again"


def test_construction_normalises_keys_and_numbers() -> None:
    table = small_table(train_seconds={"2": 1, "1": 0.5})  # type: ignore[dict-item]
    assert table.train_seconds == {1: 0.5, 2: 1.0}
    assert all(isinstance(v, float) for v in table.train_seconds.values())


def test_reformatting_a_table_keeps_its_hash(tmp_path: Path) -> None:
    data = written(tmp_path, small_table())
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(dict(reversed(data.items())), indent=7))
    assert load_table(path) == small_table()


def test_a_tampered_table_is_refused(tmp_path: Path) -> None:
    data = written(tmp_path, small_table())
    data["train_seconds"]["4"] = 1.5
    with pytest.raises(NtngError, match=r"edited after it was hashed"):
        load_data(tmp_path, data)


def test_a_missing_sha256_is_refused(tmp_path: Path) -> None:
    data = written(tmp_path, small_table())
    del data["sha256"]
    with pytest.raises(NtngError, match=r"sha256 is required but missing.*write_table"):
        load_data(tmp_path, data)


def test_malformed_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",')
    with pytest.raises(NtngError, match=r"bad\.json' is not valid JSON"):
        load_table(path)


def test_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"train_seconds": {"1": 0.1, "1": 0.2}}')
    with pytest.raises(NtngError, match=r"key '1' appears twice"):
        load_table(path)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d.pop("unit"), "unit: required but missing"),
        (lambda d: d.pop("train_seconds"), "train_seconds: required but missing"),
        (lambda d: d.update(train_seconds={}), "train_seconds: needs at least one entry"),
        (lambda d: d["unit"].update(sequences="4"), "unit.sequences = '4': expected a positive"),
        (lambda d: d["unit"].update(kind="batch"), "unit.kind = 'batch': expected one of"),
        (lambda d: d["unit"].pop("includes_optimizer"), "unit.includes_optimizer: required"),
        (lambda d: d["train_seconds"].update(x=1.0), "train_seconds.x: keys must be layer counts"),
        (lambda d: d["train_seconds"].update({"01": 0.25}), "train_seconds.01: keys must be"),
        (lambda d: d["train_seconds"].update({"2": "fast"}), "train_seconds.2 = 'fast'"),
        (lambda d: d.update(preset=3), "preset = 3: expected a non-empty string"),
        (lambda d: d.update(forward_second={}), "forward_second: not a known field"),
        (lambda d: d.update(schema_version=2), "schema_version = 2: this version"),
    ],
)
def test_missing_or_mistyped_fields_are_named(tmp_path: Path, edit, named: str) -> None:
    data = written(tmp_path, small_table())
    edit(data)
    with pytest.raises(NtngError, match=r"is malformed") as info:
        load_data(tmp_path, data)
    assert named in str(info.value)


def test_parse_table_reports_every_problem_at_once() -> None:
    with pytest.raises(NtngError) as info:
        parse_table({"schema_version": 1, "name": ""}, "mine")
    message = str(info.value)
    for named in ("name = ''", "preset: required", "unit: required", "train_seconds: required"):
        assert named in message


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(NtngError, match=r"expected a JSON object at the top, got list"):
        load_data(tmp_path, [1, 2])


def test_unknown_name_lists_the_shipped_tables() -> None:
    with pytest.raises(NtngError, match=r"unknown reference table 'paper-bert'.*paper-t5-a100"):
        load_table("paper-bert")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(NtngError, match=r"nope.json' does not exist"):
        load_table(tmp_path / "nope.json")
