"""BERT and T5 presets, builders, and the active-layer interface strategies use."""
