"""``ASAP_LOG_RUNS=1``: the server log gets one line per page run (and per fragment rerun) with its wall and CPU
seconds, the operator's figure of what a visitor's click costs; off by default."""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages.glue import errors as E
from asap_core.settings import reload_settings
from tests.conftest_app import local_app_env, no_exception, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
LINE = re.compile(r"^run (?P<label>.+) (?P<ended>\w+): (?P<wall>[\d.]+) s wall, (?P<cpu>[\d.]+) s CPU$")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def run_lines(monkeypatch, tmp_path):
    local_app_env(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("ASAP_LOG_RUNS", "1")
    reload_settings()
    handler = Lines()
    E.RUN_LOG.addHandler(handler)
    yield handler.lines
    E.RUN_LOG.removeHandler(handler)
    monkeypatch.delenv("ASAP_LOG_RUNS")
    reload_settings()


def _parsed(lines: list[str]) -> list[dict]:
    out = [LINE.match(line) for line in lines]
    assert all(out), lines
    return [m.groupdict() for m in out if m]


def test_a_labelled_run_logs_its_wall_and_cpu_seconds(run_lines):
    E.guarded(lambda: time.sleep(0.05), label="page test")
    E.guarded(lambda: sum(range(300_000)), label="fragment test.busy")
    E.guarded(lambda: None)                                       # no label: no line
    sleep, busy = _parsed(run_lines)
    assert (sleep["label"], sleep["ended"], busy["label"]) == ("page test", "done", "fragment test.busy")
    assert float(sleep["wall"]) >= 0.05 and float(sleep["cpu"]) < 0.04      # asleep: wall, not CPU
    assert float(busy["cpu"]) > 0 and float(busy["wall"]) >= float(busy["cpu"]) * 0.5


def test_how_a_run_ended_is_logged_and_the_exception_kept(run_lines):
    with pytest.raises(KeyError):
        E.guarded(lambda: {}["x"], label="page broken")            # locally an exception is raised as ever
    assert _parsed(run_lines)[0]["ended"] == "KeyError"


def test_off_by_default(monkeypatch, tmp_path):
    local_app_env(monkeypatch, tmp_path / "cache")
    handler = Lines()
    E.RUN_LOG.addHandler(handler)
    try:
        E.guarded(lambda: None, label="page test")
    finally:
        E.RUN_LOG.removeHandler(handler)
    assert handler.lines == []


def test_the_app_logs_the_page_it_ran(run_lines, tiny_bundle, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ASAP_BUNDLE", str(tiny_bundle))
    reload_settings()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    no_exception(at)
    pages = [p for p in _parsed(run_lines) if p["label"].startswith("page ")]
    assert pages and pages[-1]["label"] == "page overview" and pages[-1]["ended"] in ("done", "StopException")
