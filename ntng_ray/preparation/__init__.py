"""Commands that prepare what runs need and that sit above the training loop: a strategy's
preparation (``ntng prepare``, e.g. RHO-loss's irreducible-loss model) and ``ntng calibrate``."""
