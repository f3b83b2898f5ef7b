"""The package's shape, checked from its source: no import cycles, building blocks never import stages,
no module-level __getattr__ re-exports, no private names imported across modules, modules of a few hundred lines.

Imports inside functions count: a lazy import is still a dependency (and a lazy cycle still couples two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "data_prep")
STAGES = "pipeline.stages"
ENTRY_POINTS = {"pipeline", "pipeline.cli", STAGES}  # the API and the CLI import stages by design
MAX_LINES = 650


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of the file, resolved to known modules."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            found += [(m, []) for m in submodules]
            rest = [n for n in names if f"{base}.{n}" not in known]
            if rest or not submodules:
                found.append((base, rest))
    return [(m, names) for m, names in found if m in known]


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m, _ in imports(path, set(mods))} - {name} for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_building_blocks_never_import_stages():
    offenders = {m: sorted(d for d in deps if d == STAGES or d.startswith(STAGES + "."))
                 for m, deps in import_graph().items() if m not in ENTRY_POINTS and not m.startswith(STAGES + ".")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_stages_live_in_their_package_and_do_not_shadow_it():
    """`from pipeline import train` is the function; `pipeline.stages.train` is the module."""
    import pipeline
    import pipeline.stages.train

    assert callable(pipeline.train) and pipeline.stages.train.train is pipeline.train
    for stage in ("preprocess", "train", "evaluate", "export", "predict", "demo"):
        assert (ROOT / "pipeline" / "stages" / f"{stage}.py").is_file()
        assert not (ROOT / "pipeline" / f"{stage}.py").exists()


def test_no_module_getattr_and_no_private_imports():
    mods = modules()
    problems = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
            problems.append(f"{name}: module-level __getattr__")
        for target, names in imports(path, set(mods)):
            problems += [f"{name}: imports private {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert problems == []


def test_modules_are_a_few_hundred_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert max(n for name, n in sizes.items() if name.startswith("pipeline.deploy")) <= 450
