"""The package reads one way: data → model → train → parallel → decode → evaluate → bench → serve → cli.

A static scan of every import in `dist_s2s` (function-level ones included: a lazy import is still
a dependency), so a cycle or an upstream module reaching downstream fails here, not in review.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from dist_s2s.parallel.one_f_one_b import OneFOneBSteps
from dist_s2s.parallel.wavefront.steps import WavefrontSteps
from dist_s2s.train.step import SingleDeviceSteps, Steps

PACKAGE = Path(__file__).resolve().parents[1] / "dist_s2s"
LAYERS = ["(foundation)", "data", "model", "train", "parallel", "decode", "evaluate", "bench", "serve", "cli"]
"""Each module may import its own layer and those before it; config, errors, device, progress are foundation."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, modules: set[str]) -> set[str]:
    """The dist_s2s modules `path` imports (a `from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("dist_s2s")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dist_s2s"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): internal_imports(p, modules) for p in paths}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    top = "cli" if top == "__main__" else top  # `python -m dist_s2s` is the command line
    return LAYERS.index(top) if top in LAYERS else 0


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with a path stack)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return path[path.index(child):] + [child]
            if child not in state and (cycle := visit(child, [*path, child])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_back_through_others():
    assert find_cycle(import_graph()) is None, f"import cycle: {' → '.join(find_cycle(import_graph()))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_flow_from_data_to_the_command_line_never_back():
    upstream = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
                if layer_of(target) > layer_of(module)]
    assert upstream == []


def test_decoding_does_not_load_the_training_loop_or_parallelism():
    graph = import_graph()
    reached, todo = set(), ["dist_s2s.decode.translator"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += graph.get(module, ())
    assert not reached & {"dist_s2s.train.trainer", "dist_s2s.train.plots", "dist_s2s.train.tracking"}
    assert not any(module.startswith("dist_s2s.parallel") for module in reached)


@pytest.mark.parametrize("provider", [SingleDeviceSteps, OneFOneBSteps, WavefrontSteps])
def test_both_step_providers_satisfy_the_steps_contract(provider):
    methods = [name for name, value in vars(Steps).items() if callable(value) and not name.startswith("_")]
    assert {"ready", "train_step", "validation_nll", "checkpoint_state", "lost_contact", "close"} <= set(methods)
    for name in methods:
        expected = list(inspect.signature(getattr(Steps, name)).parameters)
        assert list(inspect.signature(getattr(provider, name)).parameters) == expected, name
    assert {"replica", "is_main", "device"} <= set(Steps.__annotations__)


def layout_lines() -> dict[str, str]:
    """README's layout block: each `dist_s2s/` entry (`name/` or `name.py`) and its description."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("```\ndist_s2s/", 1)[1].split("```", 1)[0]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines()[2:]:
        if line.startswith("  ") and not line.startswith("    "):
            current, _, text = line.strip().partition(" ")
            entries[current] = text.strip()
        elif line.startswith("    ") and current:
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_the_readmes_layout_names_every_module_and_only_modules_that_exist():
    import re

    entries = layout_lines()
    listed_files = {name for name in entries if name.endswith(".py")}
    assert listed_files | {"__main__.py"} == {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    for package, text in ((n, t) for n, t in entries.items() if n.endswith("/")):
        described = re.sub(r"\([^)]*\)", "", text).replace(" and ", ", ")
        named = {item.strip().split()[0] for item in described.split(",") if item.strip()}
        present = {p.stem for p in (PACKAGE / package).glob("*.py") if p.stem != "__init__"}
        assert named == present, f"README's layout for dist_s2s/{package}: lists {sorted(named - present)} that do "\
                                 f"not exist, leaves out {sorted(present - named)}"
    packages = {f"{p.parent.relative_to(PACKAGE)}/" for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    assert packages == {n for n in entries if n.endswith("/")}
