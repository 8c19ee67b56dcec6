"""Sweeps: per-strategy tuning and seeded final runs under a shared RST budget, and their report."""
