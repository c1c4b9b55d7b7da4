"""The layers of ARCHITECTURE.md hold: `lint-imports` keeps the contracts in pyproject.toml, fails on an import
against them, and no module takes part in an import cycle (imports inside functions count)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports")


def _lint_imports(root: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree at ``root`` (one contract by id, else all)."""
    assert LINT_IMPORTS, "lint-imports is missing: pip install -e '.[dev]'"
    only = ["--contract", contract] if contract else []
    return subprocess.run([LINT_IMPORTS, "--no-cache", *only], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)})


def test_the_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(("importer", "line", "contract"), [
    ("asap_core/storage/cache.py", "from asap_core.views import trust", "library-layers"),
    ("asap_core/method/layout.py", "import streamlit", "library-without-streamlit"),
    ("app_pages/overview.py", "from asap_core.storage import schema", "pages-through-glue-and-views"),
])
def test_an_import_against_the_table_breaks_its_contract(tmp_path: Path, importer: str, line: str,
                                                         contract: str) -> None:
    for part in ("asap_core", "app_pages"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "demo_data"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path, contract).returncode == 0  # the copy keeps it before the edit
    target = tmp_path / importer
    target.write_text(target.read_text() + f"\n\ndef _against_the_layers():\n    {line}  # noqa\n")
    result = _lint_imports(tmp_path, contract)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and importer.removesuffix(".py").replace("/", ".") in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_module_is_in_an_import_cycle() -> None:
    graph = grimp.build_graph("asap_core", "app_pages", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.b", imported="p.c")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_architecture_md_states_the_contracted_layers() -> None:
    """The layers contract's order, lowest first, is written in its name and in ARCHITECTURE.md."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["id"] == "library-layers")["layers"]
    chain = " <- ".join(layers[::-1][:-1])  # without __main__, the entry point
    contract = next(c for c in config if c["id"] == "library-layers")
    assert contract["name"] == f"asap_core: {chain}"
    assert f"`{chain}`" in (REPO / "ARCHITECTURE.md").read_text()
