"""The packages form layers without cycles: each imports only from the layers below it.

Read from the source, not by importing: every ``import``/``from ... import`` of a project
module, wherever it sits. core is the bottom (config, io, errors, seeds, the engine and
search protocols) and imports nothing above it; the ``rest-react`` CLI is the top. A
project import inside a function is allowed only for a module that pulls in a heavy
optional dependency when imported (``LATE_OK``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: bottom to top; a module may import its own layer's modules and every layer below
LAYERS = ("core", "prompts", "agent", "learner", "actors", "evals", "toyworld", "rest", "benchmarks", "cli")
CLI = ("rest.cli", "rest.__main__")
#: project modules that may be imported late: bm25s pulls in numba/llvmlite (seconds per process)
LATE_OK = ("actors.search.bm25",)
#: modules that may import late: the CLI imports a command's stack when the command runs, so
#: ``--help`` loads no torch or Ray and vLLM's CPU workers (which re-import it) load nothing else
LATE_IMPORTERS = ("rest.cli",)


def _layer(module: str) -> str:
    return "cli" if module in CLI else module.split(".")[0]


def _modules() -> dict[str, Path]:
    out = {}
    for package in {_layer(m) for m in LAYERS if m != "cli"}:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported project module, at module level?, line) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]  # a name, or a submodule
        else:
            continue
        for name in names:
            if name.split(".")[0] in LAYERS and name.split(".")[0] != "cli":
                found.append((name, id(node) in top, node.lineno))
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import name refers to (``pkg.mod.Name`` -> ``pkg.mod``; a package's
    ``__init__`` is imported with each of its modules, so ``from pkg import mod`` is an edge to ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_every_import_goes_down_or_sideways_within_a_layer():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        rank = LAYERS.index(_layer(module))
        for name, _, line in _imports(path):
            target = _resolve(name, modules)
            if target and LAYERS.index(_layer(target)) > rank:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert not wrong, "imports that reach up a layer:\n" + "\n".join(sorted(set(wrong)))


def test_core_imports_nothing_of_the_project_above_it():
    modules = _modules()
    above = [f"{m} imports {_resolve(n, modules)}" for m, p in modules.items() if m.startswith("core")
             for n, _, _ in _imports(p) if not (_resolve(n, modules) or "core").startswith("core")]
    assert not above


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: {t for n, _, _ in _imports(p) if (t := _resolve(n, modules)) and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_project_imports_sit_at_the_top_of_modules():
    modules = _modules()
    late = [f"{p.relative_to(ROOT)}:{line} imports {name}" for m, p in modules.items() if m not in LATE_IMPORTERS
            for name, at_top, line in _imports(p)
            if not at_top and not (_resolve(name, modules) or "").startswith(LATE_OK)]
    assert not late, "project imports inside functions:\n" + "\n".join(late)


def test_the_layers_cover_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"
