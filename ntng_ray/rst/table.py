"""Reference tables: what one unit of work costs on the reference machine, and their checks.

A table is the whole of RST's trust: every charge a run makes is read from it. So a table is
hashed (an edit after hashing is caught on load), validated before use (a lost digit like the
study's 7-layer BERT entry must not pass unflagged), and bound to the model preset it timed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ntng_ray.atomic import write_text_atomic
from ntng_ray.config.presets import PRESETS
from ntng_ray.errors import NtngError

SCHEMA_VERSION = 1
SHIPPED_PACKAGE = "ntng_ray.rst"
SHIPPED_FOLDER = "tables"
MAX_RELATIVE_RESIDUAL = 0.25

UnitKind = Literal["microbatch", "optimizer_step"]
UNIT_KINDS: tuple[str, ...] = ("microbatch", "optimizer_step")


@dataclass(frozen=True)
class TableUnit:
    """What one table entry times, so charges can be scaled to a run's own batch."""

    kind: UnitKind
    sequences: int
    seq_len: int
    target_len: int | None
    includes_optimizer: bool
    reference_optimizer: str = "adamw"


@dataclass(frozen=True)
class ReferenceTable:
    """Seconds on the reference machine per unit of work. Treat the mappings as read-only.

    ``train_seconds`` and ``forward_seconds`` are keyed by the number of active layers;
    ``optimizer_step_seconds`` (units without the optimizer) and ``full_unit_seconds_by_optimizer``
    (units with it) by optimizer name. Keys and values are normalised to ``int`` and ``float``
    on construction, so measured numbers (numpy scalars, string keys) can be passed in directly.
    """

    name: str
    preset: str
    description: str
    unit: TableUnit
    train_seconds: dict[int, float]
    machine: dict[str, Any] = field(default_factory=dict)
    software: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    forward_seconds: dict[int, float] = field(default_factory=dict)
    optimizer_step_seconds: dict[str, float] = field(default_factory=dict)
    full_unit_seconds_by_optimizer: dict[str, float] = field(default_factory=dict)
    hessian_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("train_seconds", "forward_seconds"):
            values = getattr(self, name)
            object.__setattr__(
                self, name, {int(k): float(values[k]) for k in sorted(values, key=int)}
            )
        for name in ("optimizer_step_seconds", "full_unit_seconds_by_optimizer"):
            values = getattr(self, name)
            object.__setattr__(self, name, {str(k): float(values[k]) for k in sorted(values)})
        if self.hessian_seconds is not None:
            object.__setattr__(self, "hessian_seconds", float(self.hessian_seconds))

    @property
    def table_id(self) -> str:
        """The id a run records next to ``content_hash``."""
        return self.name

    @property
    def num_layers(self) -> int:
        """The full depth the table covers (its largest layer count)."""
        return max(self.train_seconds)

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace) of ``to_dict()``."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The table as JSON data, without ``sha256``: what the hash covers."""
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "preset": self.preset,
            "description": self.description,
            "note": self.note,
            "machine": self.machine,
            "software": self.software,
            "unit": asdict(self.unit),
            "train_seconds": {str(k): v for k, v in self.train_seconds.items()},
            "forward_seconds": {str(k): v for k, v in self.forward_seconds.items()},
            "optimizer_step_seconds": dict(self.optimizer_step_seconds),
            "full_unit_seconds_by_optimizer": dict(self.full_unit_seconds_by_optimizer),
            "hessian_seconds": self.hessian_seconds,
        }


# ---------------------------------------------------------------------------------------------
# Parsing: every structural problem of a file is collected, then reported in one message.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_EXPECTED: dict[str, Callable[[Any], bool]] = {
    "a non-empty string": lambda v: isinstance(v, str) and bool(v.strip()),
    "a string": lambda v: isinstance(v, str),
    "a positive integer": lambda v: _is_int(v) and v > 0,
    "true or false": lambda v: isinstance(v, bool),
    "a number": _is_number,
    "a JSON object": lambda v: isinstance(v, dict),
    "one of " + ", ".join(UNIT_KINDS): lambda v: v in UNIT_KINDS,
}

_MISSING = object()


class _Reader:
    """Reads typed fields from one JSON object, collecting problems instead of stopping."""

    def __init__(self, data: dict[str, Any], prefix: str, problems: list[str]) -> None:
        self.data, self.prefix, self.problems = data, prefix, problems

    def take(self, key: str, expected: str, optional: bool = False, default: Any = None) -> Any:
        """The value at ``key`` if it is ``expected`` (or null when optional), else ``default``."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING or (optional and value is None):
            if not optional:
                self.problems.append(f"{self.prefix}{key}: required but missing")
            return default
        if not _EXPECTED[expected](value):
            self.problems.append(f"{self.prefix}{key} = {value!r}: expected {expected}")
            return default
        return value

    def refuse_unknown(self, allowed: tuple[str, ...]) -> None:
        """Unknown keys are typos until proven otherwise (a misspelt entry would be ignored)."""
        for key in self.data:
            if key not in allowed:
                where = f"{self.prefix}{key}"
                self.problems.append(f"{where}: not a known field; allowed: {', '.join(allowed)}")

    def seconds(self, key: str, layer_keys: bool, optional: bool = True) -> dict[Any, float]:
        """A mapping of layer counts (or optimizer names) to seconds."""
        raw = self.take(key, "a JSON object", optional=optional, default={})
        result: dict[Any, float] = {}
        for name, value in raw.items():
            where = f"{self.prefix}{key}.{name}"
            if layer_keys and not (name.isascii() and name.isdigit() and name[0] != "0"):
                self.problems.append(f"{where}: keys must be layer counts 1, 2, ...; got {name!r}")
            elif not _is_number(value):
                self.problems.append(f"{where} = {value!r}: expected a number of seconds")
            else:
                result[int(name) if layer_keys else name] = value
        if not optional and self.data.get(key) == {}:
            self.problems.append(f"{self.prefix}{key}: needs at least one entry")
        return result


_UNIT_FIELDS = (
    "kind",
    "sequences",
    "seq_len",
    "target_len",
    "includes_optimizer",
    "reference_optimizer",
)
_TABLE_FIELDS = (
    "schema_version",
    "name",
    "preset",
    "description",
    "note",
    "machine",
    "software",
    "unit",
    "train_seconds",
    "forward_seconds",
    "optimizer_step_seconds",
    "full_unit_seconds_by_optimizer",
    "hessian_seconds",
    "sha256",
)


def _parse_unit(raw: dict[str, Any], problems: list[str]) -> TableUnit:
    """The unit's fields; meaningful only when no problem was added."""
    reader = _Reader(raw, "unit.", problems)
    reader.refuse_unknown(_UNIT_FIELDS)
    return TableUnit(
        kind=reader.take("kind", "one of " + ", ".join(UNIT_KINDS)),
        sequences=reader.take("sequences", "a positive integer"),
        seq_len=reader.take("seq_len", "a positive integer"),
        target_len=reader.take("target_len", "a positive integer", optional=True),
        includes_optimizer=reader.take("includes_optimizer", "true or false"),
        reference_optimizer=reader.take("reference_optimizer", "a non-empty string"),
    )


def parse_table(data: Any, source: str = "reference table") -> ReferenceTable:
    """Build a table from parsed JSON, checking structure and types (not the hash, not values).

    Raises one NtngError naming every missing, mistyped or unknown field. Use it to turn a
    hand-written mapping into a table, then ``write_table`` to store it with its hash.
    """
    if not isinstance(data, dict):
        raise NtngError(f"{source}: expected a JSON object at the top, got {type(data).__name__}")
    problems: list[str] = []
    reader = _Reader(data, "", problems)
    reader.refuse_unknown(_TABLE_FIELDS)
    version = reader.take("schema_version", "a positive integer")
    if version is not None and version != SCHEMA_VERSION:
        problems.append(
            f"schema_version = {version}: this version of ntng_ray reads {SCHEMA_VERSION}"
        )
    fields = {
        "name": reader.take("name", "a non-empty string"),
        "preset": reader.take("preset", "a non-empty string"),
        "description": reader.take("description", "a string"),
        "note": reader.take("note", "a string", optional=True),
        "machine": reader.take("machine", "a JSON object"),
        "software": reader.take("software", "a JSON object"),
        "train_seconds": reader.seconds("train_seconds", layer_keys=True, optional=False),
        "forward_seconds": reader.seconds("forward_seconds", layer_keys=True),
        "optimizer_step_seconds": reader.seconds("optimizer_step_seconds", layer_keys=False),
        "full_unit_seconds_by_optimizer": reader.seconds(
            "full_unit_seconds_by_optimizer", layer_keys=False
        ),
        "hessian_seconds": reader.take("hessian_seconds", "a number", optional=True),
    }
    raw_unit = reader.take("unit", "a JSON object")
    unit = _parse_unit(raw_unit, problems) if raw_unit is not None else None
    if problems:
        raise NtngError(f"{source} is malformed:\n  " + "\n  ".join(problems))
    return ReferenceTable(unit=unit, **fields)


# ---------------------------------------------------------------------------------------------
# Loading and writing


def _shipped_root() -> Any:
    return resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_FOLDER)


def shipped_table_names() -> list[str]:
    """Names of the tables that ship inside the package."""
    names = (p.name for p in _shipped_root().iterdir() if p.name.endswith(".json"))
    return sorted(name.removesuffix(".json") for name in names)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON allows a key twice and keeps the last silently; in a table that hides an edit."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def _read_text(name_or_path: str | os.PathLike[str]) -> tuple[str, str]:
    """The text of a table file or a shipped table, with a label for messages."""
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8"), repr(str(path))
    text = str(name_or_path)
    if path.suffix == ".json" or os.sep in text or "/" in text:
        raise NtngError(f"reference table file {text!r} does not exist")
    shipped = _shipped_root().joinpath(f"{text}.json")
    if not shipped.is_file():
        known = ", ".join(shipped_table_names())
        raise NtngError(
            f"unknown reference table {text!r}: not a file, and no shipped table of that name "
            f"(shipped: {known}); give a shipped name or a path to a JSON table"
        )
    return shipped.read_text(encoding="utf-8"), repr(text)


def load_table(name_or_path: str | os.PathLike[str]) -> ReferenceTable:
    """Load a shipped table by name, or a table file by path, and check its stored sha256."""
    text, label = _read_text(name_or_path)
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except ValueError as exc:
        raise NtngError(f"reference table {label} is not valid JSON: {exc}") from None
    stored = data.pop("sha256", None) if isinstance(data, dict) else None
    table = parse_table(data, f"reference table {label}")
    if stored is None:
        raise NtngError(
            f"reference table {label}: sha256 is required but missing; "
            "store the table with ntng_ray.rst.write_table, which adds it"
        )
    if stored != table.content_hash:
        raise NtngError(
            f"reference table {label}: stored sha256 {stored!r} does not match its content "
            f"({table.content_hash}): the table was edited after it was hashed. If the edit is "
            "intended, write the table again with ntng_ray.rst.write_table to store its new hash"
        )
    return table


def list_shipped_tables() -> list[ReferenceTable]:
    """Every shipped table, loaded and hash-checked, sorted by name."""
    return [load_table(name) for name in shipped_table_names()]


def write_table(table: ReferenceTable, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` with its sha256, atomically: a reader never sees half a table."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**table.to_dict(), "sha256": table.content_hash}, indent=2) + "\n"
    write_text_atomic(target, text)
    return target


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line of train seconds in the number of layers."""

    slope: float
    intercept: float

    def at(self, layers: float) -> float:
        return self.intercept + self.slope * layers


@dataclass(frozen=True)
class TableReport:
    """What validation found; ``overridden`` records that an invalid table was used anyway."""

    table_id: str
    content_hash: str
    problems: list[str]
    fit: LinearFit
    worst_abs_residual: float
    worst_abs_residual_layer: int
    worst_rel_residual: float
    worst_rel_residual_layer: int
    max_relative_residual: float
    overridden: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """A few lines for the console and the run record."""
        verdict = "ok" if self.ok else "INVALID"
        if self.overridden:
            verdict += " (used anyway: allow_invalid_table)"
        lines = [
            f"reference table {self.table_id} (sha256 {self.content_hash[:12]}): {verdict}",
            f"  linear fit: {self.fit.slope:.6g} s/layer + {self.fit.intercept:.6g} s",
            f"  worst residual {self.worst_abs_residual:.4g} s at layer "
            f"{self.worst_abs_residual_layer}; worst relative {self.worst_rel_residual:.1%} "
            f"at layer {self.worst_rel_residual_layer}",
        ]
        return "\n".join(lines + [f"  problem: {p}" for p in self.problems])

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON data for the run's record (MLflow params or a JSON file)."""
        return {**asdict(self), "ok": self.ok}


def _fit_line(points: dict[int, float]) -> LinearFit:
    """Ordinary least squares; a single point gives a flat line through it."""
    xs, ys = list(points), list(points.values())
    mean_x, mean_y = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    spread = math.fsum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return LinearFit(0.0, mean_y)
    slope = math.fsum((x - mean_x) * (y - mean_y) for x, y in points.items()) / spread
    return LinearFit(slope, mean_y - slope * mean_x)


def _relative(residual: float, observed: float) -> float:
    """Residual relative to the entry itself (a non-positive entry is already a problem)."""
    return abs(residual) / observed if observed > 0 else math.inf


def _positive_problems(table: ReferenceTable) -> list[str]:
    """Every cost must be a positive, finite number of seconds."""
    entries = [(f"train_seconds.{k}", v) for k, v in table.train_seconds.items()]
    entries += [(f"forward_seconds.{k}", v) for k, v in table.forward_seconds.items()]
    entries += [(f"optimizer_step_seconds.{k}", v) for k, v in table.optimizer_step_seconds.items()]
    entries += [
        (f"full_unit_seconds_by_optimizer.{k}", v)
        for k, v in table.full_unit_seconds_by_optimizer.items()
    ]
    if table.hessian_seconds is not None:
        entries.append(("hessian_seconds", table.hessian_seconds))
    return [
        f"{name} = {value!r}: must be a positive, finite number of seconds"
        for name, value in entries
        if not (math.isfinite(value) and value > 0)
    ]


def _coverage_problems(table: ReferenceTable) -> list[str]:
    """train_seconds must cover 1..L, and L must be the bound preset's depth when it is known."""
    depth = table.num_layers
    problems = []
    missing = [k for k in range(1, depth + 1) if k not in table.train_seconds]
    if missing:
        problems.append(
            f"train_seconds: missing layer counts {', '.join(map(str, missing))}; "
            f"entries must cover every layer count 1..{depth} with no gaps"
        )
    preset = PRESETS.get(table.preset)
    if preset is not None and preset.num_layers != depth:
        problems.append(
            f"train_seconds: covers 1..{depth} layers, but preset {table.preset!r} has "
            f"{preset.num_layers} layers per stack"
        )
    extra = [k for k in table.forward_seconds if k > depth]
    if extra:
        problems.append(
            f"forward_seconds: layer counts {', '.join(map(str, extra))} exceed the table's "
            f"depth {depth}"
        )
    return problems


def _monotone_problems(name: str, values: dict[int, float]) -> list[str]:
    """Cost must rise with every added layer; a drop is most likely a typo in the table."""
    layers = sorted(values)
    return [
        f"{name}: layer {k} ({values[k]!r} s) is not above layer {prev} ({values[prev]!r} s); "
        "cost must rise with every added layer"
        for prev, k in itertools.pairwise(layers)
        if values[k] <= values[prev]
    ]


def _consistency_problems(table: ReferenceTable) -> list[str]:
    """Optimizer entries must match whether the unit already includes the optimizer."""
    problems = []
    full = table.full_unit_seconds_by_optimizer
    if table.unit.includes_optimizer and table.optimizer_step_seconds:
        problems.append(
            "optimizer_step_seconds: the unit already includes the optimizer; give "
            "full_unit_seconds_by_optimizer instead"
        )
    if not table.unit.includes_optimizer and full:
        problems.append(
            "full_unit_seconds_by_optimizer: the unit excludes the optimizer; give "
            "optimizer_step_seconds instead"
        )
    if full and table.unit.reference_optimizer not in full:
        problems.append(
            f"full_unit_seconds_by_optimizer: needs the reference optimizer "
            f"{table.unit.reference_optimizer!r}, which the other entries are relative to"
        )
    problems += [
        f"forward_seconds.{k} = {v!r}: a forward pass must cost less than forward+backward "
        f"(train_seconds.{k} = {table.train_seconds[k]!r})"
        for k, v in table.forward_seconds.items()
        if k in table.train_seconds and v >= table.train_seconds[k]
    ]
    return problems


def validate_table(
    table: ReferenceTable, max_relative_residual: float = MAX_RELATIVE_RESIDUAL
) -> TableReport:
    """Check a table's values; a report with problems means the table must not be used unflagged.

    Cost per unit should be close to linear in the number of layers (each block costs the same),
    so the worst residual of a least-squares line is reported, and a relative residual above
    ``max_relative_residual`` (relative to the entry) is a problem naming the layer.
    """
    fit = _fit_line(table.train_seconds)
    residuals = {k: v - fit.at(k) for k, v in table.train_seconds.items()}
    relative = {k: _relative(r, table.train_seconds[k]) for k, r in residuals.items()}
    worst_abs = max(residuals, key=lambda k: abs(residuals[k]))
    worst_rel = max(relative, key=relative.__getitem__)
    problems = (
        _positive_problems(table)
        + _coverage_problems(table)
        + _monotone_problems("train_seconds", table.train_seconds)
        + _monotone_problems("forward_seconds", table.forward_seconds)
        + _consistency_problems(table)
    )
    if relative[worst_rel] > max_relative_residual:
        problems.append(
            f"train_seconds: layer {worst_rel} ({table.train_seconds[worst_rel]!r} s) is "
            f"{relative[worst_rel]:.0%} off the linear fit ({fit.at(worst_rel):.4g} s); "
            f"at most {max_relative_residual:.0%} is allowed"
        )
    return TableReport(
        table_id=table.table_id,
        content_hash=table.content_hash,
        problems=problems,
        fit=fit,
        worst_abs_residual=abs(residuals[worst_abs]),
        worst_abs_residual_layer=worst_abs,
        worst_rel_residual=relative[worst_rel],
        worst_rel_residual_layer=worst_rel,
        max_relative_residual=max_relative_residual,
    )


def resolve_table(
    name_or_path: str | os.PathLike[str], preset: str, allow_invalid: bool = False
) -> tuple[ReferenceTable, TableReport]:
    """The table a run will charge from: bound to the run's preset and valid, or explicitly allowed.

    A table timed on another architecture is always refused: its costs would mean nothing.
    An invalid one is refused unless ``allow_invalid``; then the report says it was overridden.
    """
    table = load_table(name_or_path)
    if table.preset != preset:
        raise NtngError(
            f"reference table {table.table_id!r} is bound to preset {table.preset!r}, but the "
            f"run's model.preset is {preset!r}; use a table measured on {preset!r} (or calibrate "
            "one)"
        )
    report = validate_table(table)
    if report.ok:
        return table, report
    if not allow_invalid:
        raise NtngError(
            f"reference table {table.table_id!r} failed validation:\n  "
            + "\n  ".join(report.problems)
            + "\nfix the table, or set rst.allow_invalid_table=true to use it anyway "
            "(recorded on the run)"
        )
    return table, replace(report, overridden=True)
