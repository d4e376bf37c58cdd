"""The package's layering: every sub-package imports only the layers below it, and no module imports itself back
through a cycle. Function-level imports count: one that dodges a cycle is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_finetune"

# Lowest first. Sub-packages on one rank are independent of each other.
LAYERS: list[tuple[str, ...]] = [
    ("config",),
    ("data",),
    ("backbones",),
    ("evaluation",),
    ("probing", "training"),
    ("recipe",),
    ("sharing",),
    ("pipeline",),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# The package root re-exports the public API and `python -m hf_finetune` starts the CLI: both sit above every layer.
ROOT_MODULES = {"hf_finetune", "hf_finetune.__main__"}
MAX_MODULE_LINES = 400
# Lines of a function body, its docstring left out.
MAX_FUNCTION_LINES = 80


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Every hf_finetune module `path` imports, at any depth (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import module` imports the module; `from module import name` the module itself.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "hf_finetune" or t.startswith("hf_finetune."))
    return found - {name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: imported_modules(path, name, set(paths)) for name, path in paths.items()}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imports in sorted(graph.items()):
        if module in ROOT_MODULES:
            continue
        layer = layer_of(module)
        if layer is None:
            problems.append(f"{module} is in no layer (put it in one of {sorted(RANK)})")
            continue
        for target in sorted(imports):
            target_layer = layer_of(target)
            if target_layer == layer:
                continue
            if target_layer is None or RANK[target_layer] >= RANK[layer]:
                problems.append(f"{module} ({layer}) imports {target} ({target_layer or 'the package root'})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    graph = {m: t for m, t in import_graph().items() if m not in ROOT_MODULES}
    assert cycles(graph) == []


def test_layers_import_only_downward():
    assert layer_violations(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    package = tmp_path / "hf_finetune"
    for sub in ("data", "training"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("def f():\n    from hf_finetune.training import b\n")
    (package / "training" / "b.py").write_text("from ..data import a\n")
    graph = import_graph(package)
    assert cycles(graph) == [["hf_finetune.data.a", "hf_finetune.training.b"]]
    assert layer_violations(graph) == [
        "hf_finetune.data.a (data) imports hf_finetune.training.b (training)"
    ]


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = module_name(path)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert too_long == []
