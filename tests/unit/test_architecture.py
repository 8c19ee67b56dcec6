"""The layering is a checked contract: import-linter's contracts hold, no cycle joins the
top-level parts of ``ntng_ray``, and validating a config loads neither torch nor a strategy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "ntng_ray"


def test_lint_imports_keeps_the_layers() -> None:
    """`lint-imports pyproject.toml` (the `--config` option is deprecated): every contract kept."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert command is not None, "lint-imports is missing: pip install -e '.[dev]'"
    done = subprocess.run(
        [command, "pyproject.toml", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def part_graph() -> dict[str, set[str]]:
    """Imports between top-level parts: ``ntng_ray.a.b -> ntng_ray.c.d`` counts as ``a -> c``."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = defaultdict(set)
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.startswith(f"{PACKAGE}.") and part(importer) != part(imported):
                edges[part(importer)].add(part(imported))
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as a path that starts and ends at the same node, or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_top_level_parts() -> None:
    edges = part_graph()
    assert edges, "grimp found no imports between ntng_ray's parts"
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between ntng_ray's parts: " + " -> ".join(cycle or [])


PROBE = """
import json, sys
from ntng_ray.config import load_config
load_config("bert-tiny-synthetic", ["strategy.name=sophia", "strategy.rho=0.05"])
print(json.dumps(sorted(sys.modules)))
"""


def test_validating_a_config_imports_neither_torch_nor_strategies() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "torch" not in loaded, "load_config imported torch"
    strategies = [
        m for m in loaded if m == f"{PACKAGE}.strategies" or m.startswith(f"{PACKAGE}.strategies.")
    ]
    assert not strategies, f"load_config imported strategy modules: {strategies}"
