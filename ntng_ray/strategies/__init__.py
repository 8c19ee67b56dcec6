"""Training strategies: the baseline and the efficient-training methods, one module each.

Every module in this package that defines a ``Strategy`` subclass with a ``name`` is found and
registered on first use, so adding a method is one new file (and its tests). Strategies from
elsewhere (a plug-in, a test) call ``register``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ntng_ray.config import RunConfig, StrategyConfig
from ntng_ray.engines.factory import optimizer_access_refusal
from ntng_ray.errors import NtngError
from ntng_ray.strategies.base import Preparation, Strategy, StrategyContext, StrategyParams

_REGISTRY: dict[str, type[Strategy]] = {}
_DISCOVERED = False
_INFRASTRUCTURE = {"base", "scoring", "optimizer_method"}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Make ``cls`` selectable as ``strategy.name=<cls.name>`` (usable as a decorator)."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"strategy name {cls.name!r} is taken by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for module in pkgutil.iter_modules(__path__):
        if module.name in _INFRASTRUCTURE:
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(loaded).values():
            if (
                isinstance(value, type)
                and issubclass(value, Strategy)
                and value.__module__ == loaded.__name__
                and "name" in vars(value)
            ):
                register(value)


def strategy_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def strategy_preparing_for(command: str) -> str:
    """The strategy whose preparation names ``command`` as its own (``rho-prepare``)."""
    _discover()
    for name, cls in sorted(_REGISTRY.items()):
        if cls.preparation is not None and cls.preparation.command == command:
            return name
    raise ValueError(f"no strategy's preparation is run by {command!r}")


def strategy_class(name: str) -> type[Strategy]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy; allowed: {', '.join(sorted(_REGISTRY))}") from None


@dataclass(frozen=True)
class ResolvedStrategy:
    """A run's strategy class with its parameters, validated once and carried on the run plan."""

    cls: type[Strategy]
    params: StrategyParams

    @property
    def name(self) -> str:
        return self.cls.name

    def params_json(self) -> dict[str, Any]:
        """The parameters as validation resolved them (e.g. RHO-loss's il_dir made absolute)."""
        return self.params.model_dump(mode="json")


def parse_params(name: str, values: dict) -> StrategyParams:
    """Validate ``strategy.<param>`` values for strategy ``name``; errors name each field."""
    try:
        cls = strategy_class(name)
    except ValueError as exc:
        raise NtngError(f"strategy.name = {name!r}: {exc}") from None
    try:
        return cls.Params.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            allowed = ", ".join(cls.Params.model_fields) or "none"
            detail = (
                f"not a parameter of {name}; allowed: {allowed}"
                if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, ")
            )
            shown = "" if err["type"] == "missing" else f" = {err.get('input')!r}"
            problems.append(f"strategy.{field}{shown}: {detail}")
        raise NtngError("invalid strategy parameters:\n  " + "\n  ".join(problems)) from None


def resolve_strategy(cfg: RunConfig) -> ResolvedStrategy:
    """The config's strategy and its validated parameters (NtngError naming each bad field)."""
    params = parse_params(cfg.strategy.name, cfg.strategy.param_values())
    return ResolvedStrategy(strategy_class(cfg.strategy.name), params)


def with_resolved_params(cfg: RunConfig, strategy: ResolvedStrategy) -> RunConfig:
    """``cfg`` with its strategy section holding the resolved parameters, for other processes
    (Ray workers re-validate the config where relative paths mean something else)."""
    section = {"name": strategy.name, **strategy.params_json()}
    return cfg.model_copy(update={"strategy": StrategyConfig.model_validate(section)})


def check_strategy_supported(cfg: RunConfig, strategy: ResolvedStrategy, engine: str) -> None:
    """Refuse, before any work, a strategy that cannot run with this model, precision or engine.

    The strategy's declared facts are checked here, once: its model families, its precisions,
    and what it needs of the optimizer under the resolved ``engine``; then its own checks.
    """
    cls, family = strategy.cls, cfg.preset.family
    if family not in cls.families:
        raise NtngError(
            f"strategy.name = {cls.name!r} runs on {', '.join(sorted(cls.families))} models; "
            f"model.preset = {cfg.model.preset!r} is {family}"
        )
    if cfg.train.precision not in cls.precisions:
        raise NtngError(
            f"train.precision = {cfg.train.precision!r}: strategy {cls.name} runs in "
            f"{' or '.join(sorted(cls.precisions))} only{cls.precision_note}"
        )
    refusal = optimizer_access_refusal(engine, cfg, cls.optimizer_access)
    if refusal is not None:
        raise NtngError(f"strategy.name = {cls.name!r}: {refusal}")
    try:
        cls.check_supported(cfg, strategy.params)
    except ValueError as exc:
        raise NtngError(str(exc)) from None


def build_strategy(context: StrategyContext, strategy: ResolvedStrategy) -> Strategy:
    """The run's strategy object (its support was checked when the run was planned)."""
    return strategy.cls(strategy.params, context)


__all__ = [
    "Preparation",
    "ResolvedStrategy",
    "Strategy",
    "StrategyContext",
    "StrategyParams",
    "build_strategy",
    "check_strategy_supported",
    "parse_params",
    "register",
    "resolve_strategy",
    "strategy_class",
    "strategy_names",
    "strategy_preparing_for",
    "with_resolved_params",
]
