"""Engines (plain torch, DeepSpeed), the optimizers they step, and the device a run uses.

``factory.build_engine`` is the short dispatch from a run config to an engine; ``optimizers``
is the one home of every optimizer; ``factory.optimizer_access_refusal`` says what an engine
hides from a strategy.
"""
