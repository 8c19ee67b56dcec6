"""The typed run configuration: YAML plus ``key=value`` overrides, validated before any work starts.

Every field that a user can get wrong is checked here, so a bad value fails with the field's
dotted name, the value given and what is allowed, before data, models or output folders exist.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ntng_ray.config.presets import PRESETS, Preset
from ntng_ray.errors import NtngError

SHIPPED_CONFIGS = "ntng_ray.configs"


def _check_betas(value: tuple[float, float]) -> tuple[float, float]:
    if not all(0.0 <= beta < 1.0 for beta in value):
        raise ValueError("each beta must be in [0, 1)")
    return value


Betas = Annotated[tuple[float, float], AfterValidator(_check_betas)]
"""Two EMA coefficients, each in [0, 1): AdamW's, and the optimizer methods' own."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    preset: str = Field(description="Model preset name (see `ntng presets`).")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset; allowed: {', '.join(PRESETS)}")
        return value


class SyntheticConfig(Section):
    num_documents: int = Field(3000, ge=10, description="Documents the grammar generates.")
    seed: int = Field(0, description="Seed of the generator: same seed, same corpus.")


class DataConfig(Section):
    source: Literal["synthetic", "files", "hub"] = "synthetic"
    files: list[str] = Field(default_factory=list, description="Paths or globs, for source=files.")
    format: Literal["auto", "text", "json", "parquet"] = "auto"
    text_field: str = Field("text", description="Column holding the text (json, parquet, hub).")
    hub_name: str | None = Field(None, description="Dataset name on the HF hub, for source=hub.")
    hub_config: str | None = None
    hub_split: str = "train"
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    validation_fraction: float = Field(0.05, gt=0.0, le=0.5)
    max_validation_sequences: int = Field(256, ge=1, description="Cap on the held-out sequences.")
    split_seed: int = Field(1234, description="Fixes the validation split (one per sweep).")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)
    mean_noise_span_length: float = Field(3.0, ge=1.0)
    cache_dir: str | None = Field(
        None, description="Default: $NTNG_CACHE_DIR or ~/.cache/ntng_ray."
    )

    @model_validator(mode="after")
    def _source_fields(self) -> DataConfig:
        if self.source == "files" and not self.files:
            raise ValueError("data.files: source=files needs at least one path or glob")
        if self.source == "hub" and not self.hub_name:
            raise ValueError("data.hub_name: source=hub needs a dataset name")
        return self

    def resolved_cache_dir(self) -> Path:
        """Where tokenizers and packed sequences are cached."""
        root = self.cache_dir or os.environ.get("NTNG_CACHE_DIR") or "~/.cache/ntng_ray"
        return Path(root).expanduser()


class TokenizerConfig(Section):
    vocab_size: int | None = Field(
        None, ge=512, le=1_000_000, description="Default: the preset's; at least 512."
    )
    lowercase: bool = Field(
        True, description="Lower-case text (BERT's WordPiece, as in the study); T5 is cased."
    )


class StrategyConfig(Section):
    """``name`` picks a strategy; its parameters sit beside it (``strategy.<param>=…``).

    Only the shape is checked here: the strategy and its parameters are resolved when a run is
    planned (``ntng_ray.strategies.resolve_strategy``), so validating a config imports neither
    torch nor any strategy module.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field("baseline", min_length=1, description="See `ntng strategies`.")

    def param_values(self) -> dict[str, Any]:
        """The ``strategy.<param>`` values as given, before the strategy validates them."""
        return dict(self.model_extra or {})


class OptimizerConfig(Section):
    name: Literal["adamw", "adamw_scale"] = Field(
        "adamw", description="adamw, or adamw_scale (nanoT5's AdamW with RMS-scaled LR, for T5)."
    )
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    betas: Betas = (0.9, 0.98)
    eps: float = Field(1e-12, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0, description="Not applied to biases and norms.")
    grad_clip: float | None = Field(0.5, gt=0.0, description="Max global gradient norm; null: off.")


class ScheduleConfig(Section):
    name: Literal["one_cycle", "warmup_linear", "warmup_cosine", "constant"] = "one_cycle"
    peak_at: float = Field(0.5, gt=0.0, lt=1.0, description="one_cycle: progress of the peak.")
    warmup: float = Field(0.0, ge=0.0, lt=1.0, description="warmup_*: warm-up fraction of budget.")
    start_factor: float = Field(0.0, ge=0.0, le=1.0, description="warmup_*: multiplier at p = 0.")
    floor: float = Field(0.0, ge=0.0, lt=1.0, description="warmup_cosine: multiplier at p = 1.")


class BudgetConfig(Section):
    rst_seconds: float | None = Field(None, gt=0.0)
    rst_hours: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetConfig:
        if (self.rst_seconds is None) == (self.rst_hours is None):
            raise ValueError("budget: give exactly one of rst_seconds or rst_hours")
        return self

    @property
    def seconds(self) -> float:
        """The budget in RST seconds."""
        return self.rst_seconds if self.rst_seconds is not None else self.rst_hours * 3600.0


class RSTConfig(Section):
    table: str = Field(description="Shipped table name (`ntng rst list`) or path to a JSON table.")
    allow_invalid_table: bool = Field(
        False, description="Use a table that fails validation; recorded on the run."
    )


class TrainConfig(Section):
    microbatch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1, description="Microbatches per optimizer step.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp16 needs the DeepSpeed engine (loss scaling)."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1, description="Optimizer steps between metric lines.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's.")
    compile: bool = Field(
        False,
        description="torch.compile each transformer block (compile time is reported, not charged).",
    )
    prefetch: int | None = Field(
        None,
        ge=0,
        description=(
            "Batches collated and copied to the device ahead of the step (0: in the step); "
            "default 2 on a GPU, 0 on a CPU, where the thread would compete with compute."
        ),
    )


class BackendConfig(Section):
    engine: Literal["auto", "torch", "deepspeed"] = Field(
        "auto", description="auto: DeepSpeed on GPU, plain torch on CPU."
    )
    zero_stage: Literal[0, 1, 2] = Field(0, description="DeepSpeed ZeRO stage.")
    workers: int = Field(1, ge=1, description="Data-parallel workers (Ray Train when > 1).")
    launcher: Literal["auto", "local", "ray"] = Field(
        "auto", description="auto: in-process for one CPU worker, Ray Train otherwise."
    )
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0.0)
    address: str | None = Field(None, description="Ray cluster address; default: $RAY_ADDRESS.")
    storage_path: str | None = Field(
        None, description="Where checkpoints and Ray results go (dir, s3://, NFS)."
    )
    checkpoint_points: list[float] = Field(
        default_factory=list, description="Progress points at which a checkpoint is written."
    )
    max_failures: int = Field(0, ge=-1, description="Worker failures to recover from (-1: any).")
    autoscaling: bool = Field(
        False,
        description="The cluster adds nodes on demand: skip the check that it holds the run now.",
    )

    @field_validator("checkpoint_points")
    @classmethod
    def _checkpoints_in_open_interval(cls, value: list[float]) -> list[float]:
        bad = [p for p in value if not 0.0 < p < 1.0]
        if bad:
            raise ValueError(f"checkpoint points must lie in (0, 1); got {bad}")
        return sorted(set(value))


class TrackingConfig(Section):
    enabled: bool = Field(True, description="Record the run in MLflow.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db.",
    )
    experiment: str = Field("ntng", min_length=1, description="MLflow experiment name.")
    run_name: str | None = Field(
        None, min_length=1, description="The run's name in MLflow; default: the run's `name`."
    )
    parent_run_id: str | None = Field(
        None,
        min_length=1,
        description="Make the run a child of this MLflow run (a sweep sets it for the runs it "
        "starts, e.g. a strategy's preparation).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Extra MLflow tags, set over the run's own."
    )


class EvalConfig(Section):
    points: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        description="Progress points of validation; 0 and 1 are always added.",
    )
    train_eval_sequences: int = Field(
        256, ge=1, description="Fixed training sample the full model is scored on."
    )
    microbatch_size: int | None = Field(None, ge=1, description="Default: train.microbatch_size.")

    @field_validator("points")
    @classmethod
    def _points_in_unit_interval(cls, value: list[float]) -> list[float]:
        bad = [p for p in value if not 0.0 <= p <= 1.0]
        if bad:
            raise ValueError(f"progress points must lie in [0, 1]; got {bad}")
        return sorted(set(value) | {0.0, 1.0})


class RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    budget: BudgetConfig
    rst: RSTConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    seed: int = 0
    output_dir: str | None = Field(None, description="Default: runs/<name>-<UTC time>.")
    overwrite: bool = Field(False, description="Allow writing into a non-empty output_dir.")

    @model_validator(mode="after")
    def _engine_supports_precision(self) -> RunConfig:
        if self.train.precision == "fp16" and self.backend.engine != "deepspeed":
            raise ValueError(
                "train.precision = 'fp16' needs backend.engine = 'deepspeed' (loss scaling); "
                "use bf16 or fp32 with the torch engine"
            )
        return self

    @property
    def preset(self) -> Preset:
        return PRESETS[self.model.preset]

    @property
    def vocab_size(self) -> int:
        """The tokenizer's (and the model's) vocabulary size."""
        return self.tokenizer.vocab_size or self.preset.vocab_size

    def to_yaml(self) -> str:
        """The resolved configuration, as written next to a run's outputs."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def shipped_config_names() -> list[str]:
    """Names of the run configs that ship inside the package."""
    root = resources.files(SHIPPED_CONFIGS)
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def read_yaml_mapping(
    source: str, kind: str, shipped_dir: Traversable
) -> tuple[dict[str, Any], str]:
    """Read a YAML mapping from a path or a name shipped in ``shipped_dir``; return it and its stem.

    Shared by run configs and sweep files so both fail the same way on a missing or malformed file.
    """
    path = Path(source)
    if not path.is_file():
        shipped = shipped_dir / f"{source}.yaml"
        if not shipped.is_file():
            found = shipped_dir.iterdir() if shipped_dir.is_dir() else []
            known = ", ".join(
                p.name.removesuffix(".yaml") for p in found if p.name.endswith(".yaml")
            )
            raise NtngError(
                f"{kind} {source!r}: no such file, and no shipped {kind} of that name ({known})"
            )
        text, stem = shipped.read_text(), source
    else:
        text, stem = path.read_text(), path.stem
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NtngError(f"{kind} {source!r} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise NtngError(
            f"{kind} {source!r} must be a YAML mapping of settings, got {type(data).__name__}"
        )
    return data, stem


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise NtngError(f"override {item!r}: expected key=value, e.g. budget.rst_seconds=60")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value, f"override {item!r}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key`` 'a.b.c', creating sections on the way."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise NtngError(f"{where}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: the dotted field, the value given, and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            msg = f"not a known setting; allowed here: {', '.join(allowed)}"
        elif err["type"] == "missing":
            msg = "required but missing"
        value = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(value, dict) else f" = {value!r}"
        if msg.startswith(f"{loc}."):
            lines.append(f"  {msg}")
            continue
        lines.append(f"  {loc}{shown}: {msg}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields of the section at ``loc``, for 'unknown key' messages."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(str(part)) if hasattr(current, "model_fields") else None
        if field is None or not hasattr(field.annotation, "model_fields"):
            return []
        current = field.annotation
    return list(current.model_fields)


def validate_mapping(data: dict[str, Any], model: type[BaseModel], what: str) -> Any:
    """Validate a mapping into ``model``, turning pydantic's errors into one clear NtngError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise NtngError(f"invalid {what}:\n{format_validation_error(exc, model)}") from None


def load_config(source: str, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a path or shipped name, apply overrides, and validate it."""
    data, stem = read_yaml_mapping(source, "config", resources.files(SHIPPED_CONFIGS))
    data.setdefault("name", stem)
    apply_overrides(data, list(overrides or []))
    return validate_mapping(data, RunConfig, f"config {source!r}")
