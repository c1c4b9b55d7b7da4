"""The one way a page shows an error: what went wrong, then the fix; and the error boundary of hosted mode.

Messages and fixes are shown as text (``views.text.as_text``: names in them never render as Markdown). In
hosted mode (``ASAP_HOSTED=1``) every message is passed through ``hosting.public_text`` first (server
paths cut to names) and ``model.hints.hosted_words`` (no operator settings, no exception names), and an
unexpected exception becomes a plain sentence with an error id; the server log holds the traceback under that
id. Locally, unexpected exceptions are raised as usual (Streamlit shows them).

Partial reruns go through here too: ``guarded_fragment`` makes a part of a page an ``st.fragment`` (a click in
it reruns it alone) inside the same boundary, and ``rerun_fragment`` reruns it. With ``ASAP_LOG_RUNS=1`` every
labelled run (each page's, each fragment's own rerun) writes its wall and CPU seconds to the server log.

``AsapError`` is the library's error as the pages catch it (a page imports it from here, not from
``asap_core.errors``).
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException
from streamlit.runtime.scriptrunner import get_script_run_ctx

from asap_core.errors import AsapError
from asap_core.hosting import error_id, public_text
from asap_core.model.hints import hint_for, hosted_words
from asap_core.settings import settings
from asap_core.views.text import as_text

LOG = logging.getLogger("asap_explorer")
#: a hosted visitor's message when all of it was about the server's settings
SERVER_PROBLEM = "This explorer's server is not set up for this."


def visible(text: str, empty: str | None = None) -> str:
    """``text`` as this server may show it: unchanged locally; in hosted mode without server paths, advice
    about operator settings (``ASAP_*``) or a library's exception details (``model.hints.hosted_words``;
    ``empty`` when nothing is left). Plain text: pass it through ``as_text`` before Markdown shows it."""
    s = settings()
    if not s.hosted:
        return text
    words = public_text(text, s.bundle_root)
    return hosted_words(words) if empty is None else hosted_words(words, empty)


def hint_place() -> str:
    """How fixes are worded here (``asap_core.model.hints.WHERES``): "hosted" on a public explorer, else "app"."""
    return "hosted" if settings().hosted else "app"


def show_error(exc: AsapError, where=st) -> None:
    """``exc.message`` as an error box and its hint (worded for the app) as a "Fix:" caption, in ``where``
    (page or sidebar)."""
    where.error(as_text(visible(exc.message, SERVER_PROBLEM)))
    hint = hint_for(exc, hint_place())
    if hint:
        where.caption(f"Fix: {as_text(visible(hint))}")


def show_warning(message: str, hint: str = "", where=st) -> None:
    """A warning with its fix (something that limits a view without stopping it); both shown as text (they
    carry names of files, bundles, models)."""
    where.warning(as_text(visible(message, SERVER_PROBLEM)))
    if hint:
        where.caption(f"Fix: {as_text(visible(hint))}")


def show_unexpected(exc: BaseException, where=st) -> str:
    """Hosted mode's answer to an exception nobody expected: a plain sentence and an error id on the page, the
    traceback in the server log under that id. Returns the id."""
    eid = error_id()
    LOG.error("error id %s: %s", eid, exc, exc_info=(type(exc), exc, exc.__traceback__))
    where.error(f"Something went wrong while drawing this view (error id {eid}). The rest of the explorer "
                "still works.")
    where.caption("Fix: pick another view or bundle, or reload the page; if it happens again, give the "
                  "explorer's operator the error id.")
    return eid


#: one line per page run or fragment rerun when ``ASAP_LOG_RUNS=1`` (``guarded(..., label=...)``)
RUN_LOG = logging.getLogger("asap_explorer.runs")
_RUN_HANDLER = logging.StreamHandler()  # the server's standard error: its log
_RUN_HANDLER.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))


def _run_log() -> logging.Logger | None:
    """``RUN_LOG`` (to the server's standard error, at INFO) when ``ASAP_LOG_RUNS`` is on; else None."""
    if not settings().log_runs:
        return None
    if _RUN_HANDLER not in RUN_LOG.handlers:
        RUN_LOG.addHandler(_RUN_HANDLER)
        RUN_LOG.setLevel(logging.INFO)
        RUN_LOG.propagate = False
    return RUN_LOG


def guarded(run, label: str | None = None) -> None:
    """``_guarded(run)``; with a ``label`` and ``ASAP_LOG_RUNS=1``, one line in the server log:
    ``run <label> <how it ended>: <wall> s wall, <cpu> s CPU`` (CPU of the script's thread; ended: ``done``,
    ``StopException``, ``RerunException`` or an exception's class name)."""
    log = _run_log() if label else None
    if log is None:
        _guarded(run)
        return
    t0, c0, ended = time.perf_counter(), time.thread_time(), "done"
    try:
        _guarded(run)
    except BaseException as exc:
        ended = type(exc).__name__
        raise
    finally:
        log.info("run %s %s: %.4f s wall, %.4f s CPU", label, ended, time.perf_counter() - t0,
                 time.thread_time() - c0)


def _guarded(run) -> None:
    """Run ``run()``; in hosted mode an exception that is not Streamlit's own control flow (stop, rerun,
    page switch) is shown by ``show_unexpected`` instead of a traceback."""
    if not settings().hosted:
        run()
        return
    try:
        run()
    except AsapError as exc:  # an expected error that a page forgot to catch: still the message and fix
        show_error(exc)
    except Exception as exc:
        show_unexpected(exc)


def guarded_fragment(run: Callable[..., None]) -> Callable[..., None]:
    """``run`` as an ``st.fragment`` (a widget inside it reruns it alone, with the arguments of its last full
    run) that runs through ``guarded``: Streamlit shows an exception raised in a fragment itself, past the guard
    the entry script puts around the page."""
    code = getattr(run, "__code__", None)  # a page's functions run in "__main__": named by their page's file
    label = f"fragment {Path(code.co_filename).stem if code else run.__module__}.{run.__name__}"

    @st.fragment
    @functools.wraps(run)  # the fragment's id comes from the function's module and name: run's own
    def fragment(*args: Any, **kwargs: Any) -> None:
        ctx = get_script_run_ctx()  # its own rerun is logged; inside a page's run, the page's line counts it
        guarded(lambda: run(*args, **kwargs), label if ctx is not None and ctx.fragment_ids_this_run else None)

    return fragment


def rerun_fragment() -> None:
    """Rerun the fragment this is called from when this run is that fragment's own (a click inside it); in a
    full-app run (where Streamlit refuses a fragment-scoped rerun: AppTest's clicks, a click merged into a
    full rerun) the app."""
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()
