"""One way a visitor's work is charged: ``glue.work.charged_work`` (check -> load -> charge -> slot -> run -> report)
is the only caller of ``budget.charge`` in the app, and ``byo.prepare_job`` the only one of ``budget.charge_upload``
(checked on the source); a visitor is not charged for work that cannot run (refused input, a model that cannot
load), checked on a hosted budget that the same work then fits exactly."""
from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from asap_core.settings import reload_settings
from tests.conftest_app import no_exception, tiny_bundle  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120
CHARGES = {"charge", "charge_upload"}


class _ChargeRefs(ast.NodeVisitor):
    """``(function, name)`` of every ``budget.charge`` / ``budget.charge_upload`` reference and of every import
    of those names, with the function they sit in ("<module>" at the top level)."""

    def __init__(self) -> None:
        self.stack = ["<module>"]
        self.found: list[tuple[str, str]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in CHARGES and isinstance(node.value, ast.Name) and node.value.id == "budget":
            self.found.append((self.stack[-1], node.attr))
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if (node.module or "").split(".")[-1] == "budget":
            self.found += [(self.stack[-1], f"import {a.name}") for a in node.names if a.name in CHARGES]


def test_budget_charge_is_called_only_in_charged_work():
    found = []
    for path in sorted([*(REPO / "app_pages").rglob("*.py"), REPO / "streamlit_app.py"]):
        refs = _ChargeRefs()
        refs.visit(ast.parse(path.read_text()))
        found += [(str(path.relative_to(REPO)), *ref) for ref in refs.found]
    assert sorted(found) == [("app_pages/glue/byo.py", "prepare_job", "charge_upload"),
                             ("app_pages/glue/work.py", "charged_work", "charge")]


@pytest.fixture
def hosted_tiny(tiny_bundle, tmp_path, monkeypatch) -> Iterator[Path]:  # noqa: F811
    """Hosted mode over a root holding a copy of the tiny bundle without stored maps, a budget of 2 map images."""
    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    monkeypatch.delenv("ASAP_STATE_URL", raising=False)
    monkeypatch.delenv("ASAP_MODEL_ALLOWLIST", raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "2")
    reload_settings()
    yield root / "tiny"
    reload_settings()


def _refused_then_paid() -> None:
    """AppTest script: work that cannot run (a JPEG quality of 0, a model that cannot load), then the same work
    that can, worth the whole budget (the laundered image's maps and the original's), then more."""
    import streamlit as st

    from app_pages.glue import data, work
    from asap_core.errors import ModelLoadError

    path = st.session_state["bundle"]
    b = data.load_bundle(path, data.stamp(path))
    first, second = b.images["image_id"].tolist()[:2]

    def no_model():
        raise ModelLoadError("no such model", "name another")

    st.session_state["refused"] = [
        work.laundered_for(b, first, 0, 0.5, "last-block") is None,                      # JPEG quality 0
        work.charged_work(b, "Tests", 2, lambda *_: 1, "Nothing", load=no_model) is None,  # no model
    ]
    st.session_state["paid"] = work.laundered_for(b, first, 75, 0.5, "last-block") is not None
    st.session_state["over"] = work.laundered_for(b, second, 75, 0.5, "last-block") is None


def test_a_visitor_is_not_charged_for_work_that_cannot_run(hosted_tiny):
    at = AppTest.from_function(_refused_then_paid, default_timeout=TIMEOUT)
    at.session_state["bundle"] = str(hosted_tiny)
    at.run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert at.session_state["refused"] == [True, True]
    assert any("JPEG quality 0" in e for e in errors) and any("no such model" in e for e in errors), errors
    assert at.session_state["paid"], errors                                  # both refusals were free
    assert at.session_state["over"] and any("used 2 of the 2" in e for e in errors), errors  # the budget holds
