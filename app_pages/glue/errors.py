"""The one way a page shows an error: what went wrong, then the fix; and the error boundary of hosted mode.

In hosted mode (``ASAP_HOSTED=1``) every message is passed through ``hosting.public_text`` first (server
paths cut to names), and an unexpected exception becomes a plain sentence with an error id; the server log
holds the traceback under that id. Locally, unexpected exceptions are raised as usual (Streamlit shows them).
"""
from __future__ import annotations

import logging

import streamlit as st

from asap_core.errors import AsapError
from asap_core.hosting import error_id, public_text
from asap_core.model.hints import hint_for
from asap_core.settings import settings

LOG = logging.getLogger("asap_explorer")


def visible(text: str) -> str:
    """``text`` as this server may show it: unchanged locally; without server paths in hosted mode."""
    s = settings()
    return public_text(text, s.bundle_root) if s.hosted else text


def hint_place() -> str:
    """How fixes are worded here (``asap_core.model.hints.WHERES``): "hosted" on a public explorer, else "app"."""
    return "hosted" if settings().hosted else "app"


def show_error(exc: AsapError, where=st) -> None:
    """``exc.message`` as an error box and its hint (worded for the app) as a "Fix:" caption, in ``where``
    (page or sidebar)."""
    where.error(visible(exc.message))
    hint = hint_for(exc, hint_place())
    if hint:
        where.caption(f"Fix: {visible(hint)}")


def show_warning(message: str, hint: str = "", where=st) -> None:
    """A warning with its fix (something that limits a view without stopping it)."""
    where.warning(visible(message))
    if hint:
        where.caption(f"Fix: {visible(hint)}")


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


def guarded(run) -> None:
    """Run ``run()``; in hosted mode an exception that is not Streamlit's own control flow (stop, rerun,
    page switch) is shown by ``show_unexpected`` instead of a traceback."""
    if not settings().hosted:
        run()
        return
    try:
        run()
    except AsapError as exc:  # an expected error that a page forgot to catch: still the message and fix
        show_error(exc)
    except Exception as exc:  # noqa: BLE001 - the boundary: visitors never see a traceback
        show_unexpected(exc)
