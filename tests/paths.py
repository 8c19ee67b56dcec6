"""Paths the tests share (a plain module: test files cannot import a conftest by name)."""

from __future__ import annotations

from pathlib import Path

# The project's shared real data; absent on users' machines, present in CI.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
