"""RHO-loss: train on the examples that are learnable, worth learning and not yet learnt.

What it does: an irreducible-loss (IL) model of the same preset is trained on a held-out part
of the training rows (``ntng rho-prepare``), and its loss on every other training row is
stored. The main run trains only on those other rows; for each microbatch it draws a
mega-batch of ``mega_batch_factor`` microbatches, scores each example's training loss with a
no-grad forward, and trains on the microbatch with the highest reducible loss (training loss
minus IL). Paper: Mindermann et al., "Prioritized Training on Points that are Learnable,
Worth Learning, and Not Yet Learnt" (ICML 2022); the settings are those of Kaddour et al.,
"No Train No Gain" (NeurIPS 2023), §3.

The IL split is ``il_fraction`` of the training rows, drawn by ``data.split_seed``: never
validation rows, and the validation split is the same as every other strategy's. IL values are
per example under one fixed mask (MLM masks and T5 spans are drawn afresh for every training
draw), so the reducible loss of a draw is an approximation: the training loss is under that
draw's mask, the IL under the stored one.

Parameters (``strategy.<param>=…``):
- ``il_dir`` (required for training): the folder ``ntng rho-prepare`` wrote. One made for
  another preset, corpus, tokenizer, masking, split seed or IL fraction is refused, naming
  what differs, as is one without a value for every training row.
- ``mega_batch_factor`` (2): microbatches scored per microbatch trained on.
- ``free_scoring`` (false): ablation; scoring forwards cost nothing and the summary says so.
- ``il_fraction`` (0.2): the share of training rows held out for the IL model (rho-prepare
  uses it; training checks that the IL folder used the same).
- ``il_budget_rst_seconds`` (default: the run's budget): the IL model's own RST budget; read
  by rho-prepare only, the run reports what the IL folder actually spent.

RST: each optimizer step as the baseline's, plus, unless ``free_scoring``, the forward-only
cost of the whole mega-batch (kind ``forward``), summed over data-parallel workers. The IL
model's training and the forward pass that computed the IL values are a separate cost, never
charged to this run's budget and never hidden: ``rho_il_rst_seconds`` in the summary's
``strategy_summary`` and in every train record.

Works with the torch and DeepSpeed engines, in one process and on Ray Train workers (each
worker selects from its own draw; every worker reads the IL folder, so on a cluster it must be
on storage all nodes see). Nothing is refused beyond a missing or mismatched ``il_dir``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from ntng_ray.atomic import write_json_atomic
from ntng_ray.config import RunConfig, validate_mapping
from ntng_ray.data.prepare import PreparedData, prepare_data
from ntng_ray.engines.device import pick_device
from ntng_ray.engines.engine import Engine
from ntng_ray.errors import NtngError
from ntng_ray.models.export import MODEL_FOLDER, load_exported_model
from ntng_ray.rst.clock import forward_cost
from ntng_ray.rst.table import resolve_table
from ntng_ray.strategies.base import (
    Candidates,
    Cost,
    Examples,
    Preparation,
    Strategy,
    StrategyContext,
    StrategyParams,
)
from ntng_ray.strategies.examples import POSITIONS
from ntng_ray.strategies.scoring import (
    ScoringParams,
    derived_seed,
    example_losses,
    score_examples,
    scoring_cost,
    scoring_note,
)

METADATA_FILE = "metadata.json"
VALUES_FILE = "irreducible_losses.npz"
IL_MODEL_FOLDER = "il_model"
SCHEMA_VERSION = 1
IL_SPLIT_STREAM = 0x1C  # separates the IL split's draw from the validation split's
IL_MASK_STREAM = 0x1D  # and the IL values' masks from evaluation's
IL_MASK_NOTE = (
    "one fixed mask (MLM) or span draw (T5) per example, from a generator seeded by "
    "data.split_seed, rows scored in id order; training draws fresh masks, so training loss "
    "minus IL is an approximation per example"
)
# What to change when an identity field differs, for refusal messages.
IDENTITY_SETTINGS = {
    "preset": "model.preset",
    "corpus_fingerprint": "the corpus (data.source, data.files, data.synthetic, ...)",
    "tokenizer_hash": "the tokenizer (tokenizer.*, the corpus)",
    "split_seed": "data.split_seed",
    "il_fraction": "strategy.il_fraction",
    "row_length": "the row length (model.preset, data.noise_density, ...)",
    "mlm_probability": "data.mlm_probability",
    "noise_density": "data.noise_density",
    "mean_noise_span_length": "data.mean_noise_span_length",
}


def il_split(train_ids: np.ndarray, fraction: float, split_seed: int) -> np.ndarray:
    """The training rows held out for the IL model: sorted, deterministic, never validation."""
    count = round(fraction * len(train_ids))
    if not 0 < count < len(train_ids):
        raise NtngError(
            f"strategy.il_fraction = {fraction}: holds out {count} of {len(train_ids)} training "
            "rows; the IL model and the main run each need at least one"
        )
    rng = np.random.default_rng([split_seed, IL_SPLIT_STREAM])
    return np.sort(rng.choice(np.sort(train_ids), size=count, replace=False))


def select_by_reducible_loss(
    train_losses: torch.Tensor, il_losses: torch.Tensor, keep: int
) -> torch.Tensor:
    """Positions of the ``keep`` examples with the highest training loss minus IL."""
    return (train_losses - il_losses).topk(keep).indices


def il_identity(cfg: RunConfig, data: PreparedData, fraction: float) -> dict[str, Any]:
    """What IL values depend on: a run may use an IL folder only if all of it matches."""
    identity: dict[str, Any] = {
        "preset": cfg.model.preset,
        "corpus_fingerprint": data.corpus_fingerprint,
        "tokenizer_hash": data.tokenizer.content_hash,
        "split_seed": cfg.data.split_seed,
        "il_fraction": fraction,
        "row_length": data.row_length,
    }
    if data.family == "bert":
        return identity | {"mlm_probability": cfg.data.mlm_probability}
    return identity | {
        "noise_density": cfg.data.noise_density,
        "mean_noise_span_length": cfg.data.mean_noise_span_length,
    }


def run_data(context: StrategyContext) -> PreparedData:
    """The run's prepared data: the loop's (``extras["data"]``), else loaded from the cache."""
    if "data" in context.extras:
        return context.extras["data"]
    return prepare_data(context.cfg)


@dataclass
class ILStore:
    """An IL folder's values (sorted by example id), its IL split and its metadata."""

    folder: Path
    ids: np.ndarray
    losses: np.ndarray
    il_ids: np.ndarray
    metadata: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> ILStore:
        where = f"strategy.il_dir = {str(folder)!r}"
        hint = "make one with `ntng rho-prepare <config> output_dir=DIR`"
        if not folder.is_dir():
            raise NtngError(f"{where}: no such folder; {hint}")
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text())
            with np.load(folder / VALUES_FILE) as values:
                ids, losses, il_ids = values["ids"], values["losses"], values["il_ids"]
        except (OSError, ValueError, KeyError) as exc:
            raise NtngError(f"{where} is not a complete IL folder ({exc}); {hint}") from None
        if metadata.get("schema_version") != SCHEMA_VERSION:
            raise NtngError(
                f"{where}: schema version {metadata.get('schema_version')!r}, this version reads "
                f"{SCHEMA_VERSION}; {hint}"
            )
        order = np.argsort(ids)
        return cls(folder, ids[order], losses[order], il_ids, metadata)

    def check_identity(self, expected: dict[str, Any]) -> None:
        """Refuse a folder made for another run, naming every field that differs."""
        stored = self.metadata["identity"]
        differ = [
            f"{IDENTITY_SETTINGS.get(key, key)} is {stored.get(key)!r} there, "
            f"{expected.get(key)!r} here"
            for key in sorted(stored.keys() | expected.keys())
            if stored.get(key) != expected.get(key)
        ]
        if differ:
            raise NtngError(
                f"strategy.il_dir = {str(self.folder)!r} was made for another run: "
                f"{'; '.join(differ)}. Rerun `ntng rho-prepare` with this run's config"
            )

    def has(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` have a stored IL value."""
        if len(self.ids) == 0:
            return np.zeros(len(ids), dtype=bool)
        positions = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return self.ids[positions] == ids

    def lookup(self, ids: np.ndarray) -> torch.Tensor:
        """The stored IL values of ``ids`` (every one must have one)."""
        if not self.has(ids).all():
            raise NtngError(f"strategy.il_dir = {str(self.folder)!r} has no IL value for some ids")
        return torch.from_numpy(self.losses[np.searchsorted(self.ids, ids)]).float()

    @property
    def il_rst_seconds(self) -> float:
        return float(self.metadata["rho_il_rst_seconds"])


class RhoParams(ScoringParams):
    il_dir: str | None = Field(None, description="The folder `ntng rho-prepare` wrote.")
    mega_batch_factor: int = Field(2, ge=2, description="Microbatches scored per one trained.")
    il_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of training rows held out for the IL model."
    )
    il_budget_rst_seconds: float | None = Field(
        None, gt=0.0, description="The IL model's RST budget (rho-prepare); default: the run's."
    )

    @field_validator("il_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a folder")
        return None if value is None else str(Path(value).expanduser().resolve())


class RhoILModel(Strategy):
    """Internal to rho-prepare: the baseline recipe, trained on the IL split only."""

    name = "rho_il_model"
    listed = False

    class Params(StrategyParams):
        il_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    params: Params

    def training_rows(self, train_ids: np.ndarray) -> np.ndarray:
        return il_split(train_ids, self.params.il_fraction, self.context.cfg.data.split_seed)


class RhoPreparation(Preparation):
    """The IL model (the baseline recipe on the IL split, under its own budget), then each
    remaining training row's loss under it, stored with what the values depend on."""

    label = "irreducible-loss model"
    folder_setting = "il_dir"
    command = "rho-prepare"
    params: RhoParams

    def budget_rst_seconds(self) -> float:
        chosen = self.params.il_budget_rst_seconds
        return self.cfg.budget.seconds if chosen is None else chosen

    def run_config(self, folder: Path) -> RunConfig:
        """The run turned into the IL model's run: same recipe, IL split only, its own budget."""
        cfg = self.cfg
        data = cfg.model_dump(mode="json") | {
            "name": f"{cfg.name}-il-model",
            "output_dir": str(folder / IL_MODEL_FOLDER),
            "overwrite": False,
            "strategy": {"name": RhoILModel.name, "il_fraction": self.params.il_fraction},
            "budget": {"rst_seconds": self.budget_rst_seconds()},
        }
        return validate_mapping(data, RunConfig, "the IL model's config")

    def finish(self, run_cfg: RunConfig, summary: dict[str, Any], folder: Path) -> dict[str, Any]:
        """Score every training row outside the IL split; store the values and the metadata."""
        cfg, fraction = self.cfg, self.params.il_fraction
        data = prepare_data(run_cfg)
        table = resolve_table(cfg.rst.table, cfg.model.preset, cfg.rst.allow_invalid_table)[0]
        il_ids = il_split(data.train_ids, fraction, cfg.data.split_seed)
        ids = np.setdiff1d(data.train_ids, il_ids, assume_unique=True)
        model = load_exported_model(folder / IL_MODEL_FOLDER / MODEL_FOLDER)
        losses = irreducible_losses(model, cfg, data, ids)
        scoring = forward_cost(table, cfg.preset.num_layers, len(ids))
        total = summary["rst_seconds"] + scoring
        metadata = {
            "schema_version": SCHEMA_VERSION,
            "identity": il_identity(cfg, data, fraction),
            "il_split_rows": len(il_ids),
            "scored_rows": len(ids),
            "il_mask": IL_MASK_NOTE,
            "il_model_budget_rst_seconds": run_cfg.budget.seconds,
            "il_model_rst_seconds": summary["rst_seconds"],
            "il_scoring_rst_seconds": scoring,
            "rho_il_rst_seconds": total,
            "preparation_rst_seconds": total,
            "reference_table": {"id": table.table_id, "sha256": table.content_hash},
            "il_model_summary": summary,
        }
        np.savez(folder / VALUES_FILE, ids=ids, losses=losses.astype(np.float32), il_ids=il_ids)
        write_json_atomic(folder / METADATA_FILE, metadata)
        return metadata

    def describe(self, metadata: dict[str, Any], folder: Path) -> str:
        return (
            f"wrote IL values for {metadata['scored_rows']} training rows to {folder} (IL split "
            f"{metadata['il_split_rows']} rows; IL model {metadata['il_model_rst_seconds']:.2f} "
            f"RST s, validation loss "
            f"{metadata['il_model_summary']['final_validation_loss']:.4f}; with the IL forwards "
            f"{metadata['rho_il_rst_seconds']:.2f} RST s, reported apart from the run's budget)"
        )


class RhoLoss(Strategy):
    """RHO-loss; the module docstring is its card."""

    name = "rho_loss"
    Params = RhoParams
    params: RhoParams
    preparation = RhoPreparation

    def __init__(self, params: RhoParams, context: StrategyContext) -> None:
        super().__init__(params, context)
        assert params.il_dir is not None
        self.store = ILStore.load(Path(params.il_dir))
        self.store.check_identity(il_identity(context.cfg, run_data(context), params.il_fraction))
        self.scored = 0
        self.last_selected_reducible_loss = float("nan")

    @classmethod
    def check_supported(cls, cfg: RunConfig, params: RhoParams) -> None:
        if params.il_dir is None:
            raise NtngError(
                "strategy.il_dir is missing: rho_loss trains against stored irreducible losses; "
                "make them with `ntng rho-prepare <config> output_dir=DIR` and pass "
                "strategy.il_dir=DIR"
            )

    def training_rows(self, train_ids: np.ndarray) -> np.ndarray:
        """The training rows outside the IL split, every one with a stored IL value."""
        where = f"strategy.il_dir = {str(self.store.folder)!r}"
        held_out = il_split(train_ids, self.params.il_fraction, self.context.cfg.data.split_seed)
        if not np.array_equal(held_out, self.store.il_ids):
            raise NtngError(
                f"{where}: its IL split ({len(self.store.il_ids)} rows) is not this run's "
                f"({len(held_out)} rows), so the training rows differ (data.validation_fraction, "
                "data.max_validation_sequences?); rerun `ntng rho-prepare` with this run's config"
            )
        rows = np.setdiff1d(train_ids, held_out, assume_unique=True)
        missing = rows[~self.store.has(rows)]
        if len(missing):
            raise NtngError(
                f"{where}: {len(missing)} of this run's {len(rows)} training rows have no IL "
                f"value (ids {missing[:5].tolist()}...); rerun `ntng rho-prepare`"
            )
        return rows

    def max_extra_cost(self, active_layers: int) -> Cost:
        train = self.context.cfg.train
        most = self.params.mega_batch_factor * train.microbatch_size * train.grad_accum
        return scoring_cost(self.context.table, active_layers, most, self.params.free_scoring)

    def select(self, candidates: Candidates, engine: Engine) -> tuple[Examples, Cost]:
        size = candidates.microbatch
        mega = candidates.draw(self.params.mega_batch_factor * size)
        losses = score_examples(engine, mega, size)
        il_losses = self.store.lookup(mega.ids)
        chosen = select_by_reducible_loss(losses, il_losses, size)
        self.scored += len(mega)
        self.last_selected_reducible_loss = float((losses - il_losses)[chosen].mean())
        depth = len(engine.active_layers())
        return mega.take(chosen), scoring_cost(
            self.context.table, depth, len(mega), self.params.free_scoring
        )

    def metrics(self) -> dict[str, float]:
        return {
            "selection_ratio": 1.0 / self.params.mega_batch_factor,
            "scored_examples": float(self.scored),
            "selected_reducible_loss": self.last_selected_reducible_loss,
            "rho_il_rst_seconds": self.store.il_rst_seconds,
        }

    def summary_fields(self) -> dict[str, Any]:
        meta = self.store.metadata
        return {
            "scoring": scoring_note(self.params.free_scoring),
            "selection_ratio": 1.0 / self.params.mega_batch_factor,
            "scored_examples": self.scored,
            "rho_il_rst_seconds": self.store.il_rst_seconds,
            "il_cost_note": "a separate cost: not part of this run's rst_seconds",
            "il_model_rst_seconds": meta["il_model_rst_seconds"],
            "il_scoring_rst_seconds": meta["il_scoring_rst_seconds"],
            "il_model_budget_rst_seconds": meta["il_model_budget_rst_seconds"],
            "il_model_final_validation_loss": meta["il_model_summary"]["final_validation_loss"],
            "il_dir": str(self.store.folder),
            "il_fraction": meta["identity"]["il_fraction"],
            "il_split_rows": len(self.store.il_ids),
            "il_mask": meta["il_mask"],
        }

    def preparation_rst_seconds(self) -> float:
        return self.store.il_rst_seconds

    def state_dict(self) -> dict[str, Any]:
        return {"scored": self.scored}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scored = int(state["scored"])


@torch.no_grad()
def irreducible_losses(
    model: nn.Module, cfg: RunConfig, data: PreparedData, ids: np.ndarray
) -> np.ndarray:
    """Each row's mean token loss under ``model``, with one fixed, seeded mask per row."""
    device = pick_device(cfg.train.device)
    model.to(device)
    collator = data.collator()
    generator = torch.Generator().manual_seed(derived_seed(cfg.data.split_seed, IL_MASK_STREAM))
    chunk = cfg.eval.microbatch_size or cfg.train.microbatch_size
    parts = []
    for start in range(0, len(ids), chunk):
        rows = torch.from_numpy(data.rows[ids[start : start + chunk]]).long()
        batch = {k: v.to(device) for k, v in collator(rows, generator).items()}
        low_precision = cfg.train.precision != "fp32"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
            output = model(**batch)
        parts.append(example_losses(output.logits, batch["labels"], batch.get(POSITIONS)))
    return torch.cat(parts).numpy()
