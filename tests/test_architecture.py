"""The one-home rules of the codebase (ARCHITECTURE.md), checked on the source: settings read in one module,
shared constants defined once, one encoder factory, one place that charges a visitor's budget, the README's
settings table in step with the code, and short functions."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from asap_core.settings import markdown_table

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "asap_core").rglob("*.py"), *(REPO / "app_pages").rglob("*.py"), REPO / "streamlit_app.py"])


def _files_matching(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {str(p.relative_to(REPO)) for p in SOURCES if rx.search(p.read_text())}


def test_the_environment_is_read_in_one_module():
    assert _files_matching(r"os\.environ|os\.getenv|getenv\(") == {"asap_core/settings.py"}


@pytest.mark.parametrize("name", ["N_DIMS", "N_TARGETS", "FAKE_LOGIT", "TARGET_NAMES", "RELEVANCE_METHODS",
                                  "DECISION_THRESHOLD", "DEFAULT_GRID", "THUMB_SIDE", "Z_COLUMNS", "CELL_COLUMNS"])
def test_shared_constants_are_defined_once(name):
    assert _files_matching(rf"(?m)^{name}\b[^=\n]*=") == {"asap_core/storage/schema.py"}


def test_one_encoder_factory_and_one_budget_charge():
    # the app, the CLI, relevance, concepts and laundering all load the model through model.factory
    assert _files_matching(r"ClipEncoder\.from_pretrained\(") == {"asap_core/model/factory.py"}
    assert _files_matching(r"ClipTextEncoder\.from_pretrained\(") == {"asap_core/model/factory.py"}  # text tower
    assert _files_matching(r"(?<!budget)\.charge_(relevance|upload)\(") == {"app_pages/glue/budget.py"}
    assert _files_matching(r"(?<!self)\.charge(_all)?\(\s*client\b") == {"asap_core/hosting.py"}  # the store
    assert _files_matching(r"budget\.charge\(") == {"app_pages/glue/work.py"}  # charged_work: tests/app/test_charges.py


def test_no_function_is_longer_than_a_screen():
    long = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long


def test_asap_core_never_imports_streamlit():
    assert not {f for f in _files_matching(r"(?m)^\s*(import|from) streamlit\b") if f.startswith("asap_core/")}


def test_readme_settings_table_is_the_generated_one():
    """README.md holds exactly ``python -m asap_core.settings --markdown``: the table is derived from the
    fields of ``Settings``, never edited by hand."""
    readme = (REPO / "README.md").read_text()
    header = "| variable | default | what it sets |\n"
    assert readme.count(header) == 1
    start = readme.index(header)
    block = readme[start:]
    end = block.find("\n\n")
    assert block[: end + 1 if end >= 0 else len(block)] == markdown_table()
