"""The wings of docs/architecture.md, checked by reading every import in the project.

- the core (utils.core) imports nothing of the adapters, the edge (utils.cli),
  the app, training, benchmarks or tests;
- an adapter (utils.adapters) never imports the edges, the app or training;
- the app (app.py, ui/, pages/) never imports training, benchmarks, tests or Ray;
- nothing outside tests/ imports tests;
- benchmarks never import the CLI or the app; scripts never import the app, training or
  benchmarks; fixtures/ (shared by tests and benchmarks) imports only the core;
- the one-off studies (training.studies) are imported only by other studies and by tests;
- no two project modules import each other, directly or around a loop;
- no function in app.py, pages/, utils/, ui/ or training/ is longer than 60 lines or takes more than
  6 parameters,
  except those pyproject.toml names, each with its reason.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("utils", "ui", "training", "benchmarks", "tests", "scripts", "fixtures")
MAX_FUNCTION_LINES, MAX_PARAMETERS = 60, 6


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> list[Path]:
    files = [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]
    for package in PACKAGES:
        files += sorted((REPO / package).rglob("*.py"))
    return files


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (at the top or inside a function)."""
    found: set[str] = set()
    name = module_name(path) if path.is_relative_to(REPO) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = {module_name(p): p for p in project_files()}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def offending_imports(importer_prefixes: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in project_files():
        name = module_name(path)
        if under(name, *importer_prefixes):
            found += [f"{name} imports {m}" for m in sorted(imported_modules(path)) if under(m, *forbidden)]
    return found


def test_the_core_imports_no_adapter_edge_app_or_training():
    assert not offending_imports(("utils.core",), ("utils.adapters", "utils.cli", "ui", "app",
                                                   "training", "benchmarks", "tests"))


def test_adapters_never_import_the_edges_the_app_or_training():
    assert not offending_imports(("utils.adapters",), ("utils.cli", "ui", "app", "training",
                                                       "benchmarks", "tests"))


def test_the_app_never_imports_training_benchmarks_tests_or_ray():
    assert not offending_imports(("app", "ui", "pages"), ("training", "benchmarks", "tests", "ray",
                                                          "utils.adapters.ray_batch"))


def test_nothing_outside_tests_imports_tests():
    assert not offending_imports(("app", "ui", "pages", "utils", "training", "benchmarks", "scripts", "fixtures"),
                                 ("tests",))


def test_benchmarks_measure_through_the_core_adapters_and_training_never_the_cli_or_the_app():
    assert not offending_imports(("benchmarks",), ("utils.cli", "app", "ui", "pages", "tests"))


def test_scripts_never_import_the_app_training_or_tests():
    assert not offending_imports(("scripts",), ("app", "ui", "pages", "training", "tests", "benchmarks"))


def test_the_shared_fixtures_import_only_the_core():
    """Tests and benchmarks both import fixtures/, so it may import neither, nor anything that
    would drag training or the app into a benchmark."""
    assert not offending_imports(("fixtures",), ("tests", "benchmarks", "training", "app", "ui", "pages",
                                                 "utils.adapters", "utils.cli"))


def test_studies_are_imported_only_by_studies_and_tests():
    """One-off studies stay leaves: no pipeline step, release check, benchmark or app relies on them."""
    importers = [f"{name} imports {m}" for name, targets in import_graph().items()
                 for m in sorted(targets) if under(m, "training.studies") and not under(name, "training.studies", "tests")]
    assert not importers


def test_the_project_has_no_import_loop():
    assert import_loops(import_graph()) == []


def test_the_loop_finder_finds_loops():
    """Guards the test above: a loop of three and a pair are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(import_loops(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert import_loops({"a": {"b"}, "b": {"c"}}) == []


def test_the_rules_see_imports_inside_functions(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from utils.cli import main\n    import ray.data\n")
    assert {"utils.cli", "utils.cli.main", "ray.data"} <= imported_modules(source)


def function_sizes(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, lines, parameters without self/cls) of every function in the file."""
    sizes = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
            count = len(names) - (1 if names and names[0] in ("self", "cls") else 0)
            sizes.append((f"{path.relative_to(REPO)}:{node.name}", node.end_lineno - node.lineno + 1, count))
    return sizes


def named_exceptions() -> dict[str, str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return config["tool"]["bone-xray"]["function-size-exceptions"]


def test_functions_are_short_and_take_few_parameters():
    exceptions = named_exceptions()
    files = [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]
    files += [path for folder in ("utils", "ui", "training") for path in sorted((REPO / folder).rglob("*.py"))]
    too_big = [f"{name}: {lines} lines, {params} parameters"
               for path in files for name, lines, params in function_sizes(path)
               if (lines > MAX_FUNCTION_LINES or params > MAX_PARAMETERS) and name not in exceptions]
    assert not too_big, too_big


@pytest.mark.parametrize("name", sorted(named_exceptions()))
def test_each_exception_still_exists_and_says_why(name):
    path, function = name.split(":")
    assert any(n.endswith(":" + function) for n, _, _ in function_sizes(REPO / path)), f"{name} is gone: drop it"
    assert len(named_exceptions()[name].split()) >= 4, f"{name} needs a reason"


def test_no_code_outside_tests_patches_project_code():
    """Studies and benchmarks vary the core through its arguments (a decoder, a contrast
    stretch: utils.core.classifier.Preparation), never by patching it at run time."""
    patching = [str(path.relative_to(REPO)) for path in project_files() if not under(module_name(path), "tests")
                and ("unittest import mock" in path.read_text() or "mock.patch" in path.read_text())]
    assert not patching, patching
