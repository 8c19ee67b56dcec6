"""Training strategies: the baseline and the efficient-training methods, one module each.

Every module in this package that defines a ``Strategy`` subclass with a ``name`` is found and
registered on first use, so adding a method is one new file (and its tests). Strategies from
elsewhere (a plug-in, a test) call ``register``.
"""

from __future__ import annotations

import importlib
import pkgutil

from pydantic import ValidationError

from ntng_ray.config import RunConfig
from ntng_ray.errors import NtngError
from ntng_ray.strategies.base import Strategy, StrategyContext, StrategyParams

_REGISTRY: dict[str, type[Strategy]] = {}
_DISCOVERED = False
_INFRASTRUCTURE = {"base", "scoring"}


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


def strategy_class(name: str) -> type[Strategy]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy; allowed: {', '.join(sorted(_REGISTRY))}") from None


def parse_params(name: str, values: dict) -> StrategyParams:
    """Validate ``strategy.<param>`` values for strategy ``name``; errors name each field."""
    try:
        cls = strategy_class(name)
    except ValueError as exc:
        raise ValueError(f"strategy.name = {name!r}: {exc}") from None
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
        raise ValueError("; ".join(problems)) from None


def check_strategy_supported(cfg: RunConfig) -> None:
    """Refuse, before any work, a strategy that cannot run with this engine, precision or model."""
    try:
        strategy_class(cfg.strategy.name).check_supported(cfg, cfg.strategy.params())
    except ValueError as exc:
        raise NtngError(str(exc)) from None


def build_strategy(context: StrategyContext) -> Strategy:
    """The run's strategy, checked against the run's engine, precision and model."""
    cfg = context.cfg
    check_strategy_supported(cfg)
    return strategy_class(cfg.strategy.name)(cfg.strategy.params(), context)


__all__ = [
    "Strategy",
    "StrategyContext",
    "StrategyParams",
    "build_strategy",
    "check_strategy_supported",
    "parse_params",
    "register",
    "strategy_class",
    "strategy_names",
]
