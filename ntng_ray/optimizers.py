"""The optimizer methods' optimizers (Lion, Sophia-G) and what their two strategies share.

Lion comes from ``lion-pytorch`` (Phil Wang's maintained package, the implementation the study
itself vendored); its update is the paper's, with decoupled weight decay. Sophia-G is written
here because no maintained package provides its Gauss-Newton-Bartlett variant: ``SophiaG``
follows the official implementation's update, and ``gnb_gradient_sums`` computes the estimator's
gradients so the loop, the strategy and ``ntng calibrate`` all run (and time) the same code.

Both strategies take the peak learning rate, weight decay and gradient clipping from the run's
``optimizer`` section when it is set up for AdamW (so a sweep tunes the same knob for every
strategy), and the study's settings for the model family when it is tuned for another optimizer
(T5's RMS-scaled AdamW); the optimizer's own hyper-parameters (betas, Sophia's rho) are strategy
parameters. ``OptimizerMethod`` holds what the two share: the optimizer section check, the
reference-table entry check, and the resolved settings in the run's summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import AfterValidator
from torch import nn

from ntng_ray.errors import NtngError
from ntng_ray.rst.table import ReferenceTable
from ntng_ray.strategies.base import Strategy, StrategyContext, StrategyParams
from ntng_ray.train.engine import Batch
from ntng_ray.train.optim import parameter_groups

if TYPE_CHECKING:
    from lion_pytorch import Lion

LION_BETAS = (0.9, 0.99)
SOPHIA_BETAS = (0.965, 0.99)
SOPHIA_RHO = 0.01
SOPHIA_EPS = 1e-15
IGNORE = -100

# The study's settings (No Train No Gain, appendix C), per model family: what to set
# optimizer.lr and optimizer.weight_decay to when reproducing it.
STUDY_SETTINGS: dict[str, dict[str, dict[str, float]]] = {
    "lion": {"bert": {"lr": 7e-4, "weight_decay": 0.1}, "t5": {"lr": 7.5e-4, "weight_decay": 0.0}},
    "sophia": {"bert": {"lr": 4e-4, "weight_decay": 0.015}, "t5": {"lr": 1e-3}},
}


def _check_betas(value: tuple[float, float]) -> tuple[float, float]:
    if not all(0.0 <= beta < 1.0 for beta in value):
        raise ValueError("each beta must be in [0, 1)")
    return value


Betas = Annotated[tuple[float, float], AfterValidator(_check_betas)]
"""A strategy parameter holding two EMA coefficients, each in [0, 1)."""


def build_lion(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = LION_BETAS
) -> Lion:
    """Lion over ``model``, decaying weight matrices only (as the baselines do).

    Imported here, so a machine without ``lion-pytorch`` still runs every other strategy.
    """
    try:
        from lion_pytorch import Lion
    except ImportError:
        raise NtngError(
            "strategy lion needs the lion-pytorch package: pip install lion-pytorch"
        ) from None
    return Lion(parameter_groups(model, weight_decay), lr=lr, betas=betas)


def build_sophia(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = SOPHIA_BETAS,
    rho: float = SOPHIA_RHO,
) -> SophiaG:
    """Sophia-G over ``model``, decaying weight matrices only (as the baselines do)."""
    return SophiaG(parameter_groups(model, weight_decay), lr=lr, betas=betas, rho=rho)


@dataclass
class GradientSums:
    """Summed gradients of the GNB loss over ``positions`` labelled positions.

    Kept as sums (not means) so workers can add theirs exactly before the estimate is formed.
    """

    params: list[nn.Parameter]
    sums: list[torch.Tensor]
    positions: int

    def all_reduce(self) -> GradientSums:
        """The data-parallel group's total, identical on every worker (one flat all-reduce)."""
        import torch.distributed as dist

        flat = torch.cat([s.reshape(-1) for s in self.sums])
        count = torch.tensor([self.positions], dtype=torch.int64, device=flat.device)
        dist.all_reduce(flat)
        dist.all_reduce(count)
        parts = flat.split([s.numel() for s in self.sums])
        sums = [part.view_as(s) for part, s in zip(parts, self.sums, strict=True)]
        return GradientSums(self.params, sums, int(count.item()))


def flat_logits_and_targets(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits as rows [N, V], and for each row whether it is a labelled position.

    BERT's sparse head returns only the labelled rows ([n, V]); T5 returns [B, T, V] for
    labels [B, T], where -100 marks padding.
    """
    if logits.dim() == 2:
        return logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1) != IGNORE


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per row drawn from softmax(logits), by inverse CDF: one uniform per row.

    ``torch.multinomial`` draws one exponential per vocabulary entry, single-threaded on CPU,
    which cost more than the forward pass of a tiny model.
    """
    cdf = logits.softmax(-1).cumsum_(-1)
    uniform = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)
    drawn = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
    return drawn.squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def gnb_gradient_sums(
    model: nn.Module, batches: Iterable[Batch], generator: torch.Generator, precision: str
) -> GradientSums:
    """Gradients of the Gauss-Newton-Bartlett loss, summed over the labelled positions.

    Per labelled position, a label is sampled from the model's own predicted distribution and
    the cross-entropy against it is summed (Liu et al. 2023, Algorithm 2; the official code
    samples with ``torch.distributions.Categorical``, the same distribution). Gradients come
    from ``torch.autograd.grad`` on the bare module, so ``.grad`` and any DDP or DeepSpeed hooks
    are left untouched: the training step's gradients cannot mix with these.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    sums = [torch.zeros_like(p) for p in params]
    positions = 0
    model.train()
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device, precision):
            logits = model(**batch).logits
        rows, labelled = flat_logits_and_targets(logits.float(), batch["labels"])
        sampled = sample_labels(rows.detach(), generator).masked_fill_(~labelled, IGNORE)
        loss = F.cross_entropy(rows, sampled, ignore_index=IGNORE, reduction="sum")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for total, grad in zip(sums, grads, strict=True):
            if grad is not None:
                total.add_(grad)
        positions += int(labelled.sum())
    return GradientSums(params, sums, positions)


class SophiaG(torch.optim.Optimizer):
    """Sophia-G (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer").

    Per parameter, each step: ``p *= 1 - lr * wd`` (decoupled weight decay);
    ``m = b1 * m + (1 - b1) * g``; ``p -= lr * sign(m) * min(|m| / (rho * h + eps), 1)``.
    ``h`` is the EMA (b2) of the GNB estimates ``h_hat = B * g_hat**2`` fed to
    ``update_hessian`` every k steps, where ``g_hat`` is the mean gradient over the B labelled
    positions. The official SophiaG keeps the EMA of ``g_hat**2`` and multiplies by the batch's
    token count at each step (``rho * bs * hess``); folding B into the estimate is the paper's
    form, equal to it when the Hessian batch is the training batch and still right when not.
    The official training script also clips the estimate's gradient at the run's clipping
    norm; it is not clipped here, as that would bias the estimate whenever it triggered.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: tuple[float, float] = SOPHIA_BETAS,
        rho: float = SOPHIA_RHO,
        weight_decay: float = 0.0,
        eps: float = SOPHIA_EPS,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "rho": rho, "weight_decay": weight_decay, "eps": eps}
        super().__init__(params, defaults)

    def _state(self, param: nn.Parameter) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            state["exp_avg"] = torch.zeros_like(param)
            state["hessian"] = torch.zeros_like(param)
        return state

    @torch.no_grad()
    def update_hessian(self, gradients: GradientSums) -> None:
        """Fold one GNB estimate ``h_hat = sum**2 / B`` into the Hessian EMA."""
        if gradients.positions == 0:
            return
        estimates = dict(zip(gradients.params, gradients.sums, strict=True))
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for param in group["params"]:
                total = estimates.get(param)
                if total is None:
                    continue
                h_hat = total.square().div_(gradients.positions)
                self._state(param)["hessian"].mul_(beta2).add_(h_hat, alpha=1.0 - beta2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1 = group["betas"][0]
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._state(param)
                exp_avg = state["exp_avg"]
                param.mul_(1.0 - lr * group["weight_decay"])
                exp_avg.mul_(beta1).add_(param.grad, alpha=1.0 - beta1)
                ratio = (exp_avg.abs() / (rho * state["hessian"] + eps)).clamp_(max=1.0)
                param.addcmul_(exp_avg.sign(), ratio, value=-lr)
        return loss


class OptimizerMethod(Strategy):
    """A method that changes only the optimizer: full depth, every example, its own table entry.

    Subclasses set ``name`` (also the reference-table optimizer entry), ``Params`` with ``betas``,
    and ``make_optimizer``.
    """

    optimizer_label: ClassVar[str]

    def __init__(self, params: StrategyParams, context: StrategyContext) -> None:
        super().__init__(params, context)
        check_table_entry(context.table, self.name)

    def settings(self) -> tuple[float, float, str]:
        """(peak lr, weight decay, where they came from).

        The optimizer section's when it is set up for AdamW (``optimizer.name=adamw``), so a
        sweep tunes the same knob for every strategy; when it is tuned for another optimizer
        (T5's RMS-scaled AdamW at 2e-2 would be far too large for these methods), the study's
        settings for this method and model family.
        """
        section = self.context.cfg.optimizer
        if section.name == "adamw":
            return section.lr, section.weight_decay, "optimizer section"
        family = self.context.cfg.preset.family
        study = STUDY_SETTINGS[self.name][family]
        source = f"the study's {family} settings (optimizer.name = {section.name!r})"
        return study["lr"], study.get("weight_decay", 0.0), source

    def peak_lr(self) -> float:
        return self.settings()[0]

    def make_optimizer(
        self, model: nn.Module, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        lr, weight_decay, _ = self.settings()
        return self.make_optimizer(model, lr, weight_decay)

    def table_optimizer(self) -> str:
        return self.name

    def summary_fields(self) -> dict[str, Any]:
        """The settings the optimizer really ran with, wherever each came from."""
        lr, weight_decay, source = self.settings()
        return {
            "optimizer": self.optimizer_label,
            "peak_lr": lr,
            "weight_decay": weight_decay,
            "settings_from": source,
            "grad_clip": self.context.cfg.optimizer.grad_clip,
            **self.params.model_dump(mode="json"),
        }


def check_table_entry(table: ReferenceTable, optimizer: str) -> None:
    """Refuse a table that prices some optimizers' steps but not ``optimizer``'s.

    ``step_cost`` charges nothing for an optimizer a table has no entry for (the study's BERT
    table prices none); on a table that prices AdamW, that would make this optimizer free.
    """
    for field in ("optimizer_step_seconds", "full_unit_seconds_by_optimizer"):
        entries = getattr(table, field)
        if entries and optimizer not in entries:
            raise NtngError(
                f"reference table {table.table_id!r} gives {field} for {', '.join(entries)} but "
                f"not for {optimizer!r}, so its steps would be charged unfairly; use a table "
                "that prices it (ntng calibrate measures adamw, lion and sophia)"
            )
