"""Baseline: the tuned, fully-decayed recipe every method is compared with.

What it does: trains the full model on every example with the configured optimizer (AdamW;
RMS-scaled AdamW for T5) and a schedule that decays to zero (or a floor) at the end of the
budget. Paper: Kaddour et al., "No Train No Gain" (NeurIPS 2023), §2. Parameters: none.
RST: each optimizer step at full depth, plus the table's optimizer-step entry if it has one.
"""

from __future__ import annotations

from ntng_ray.strategies.base import Strategy


class Baseline(Strategy):
    name = "baseline"
