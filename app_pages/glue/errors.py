"""The one way a page shows an error: what went wrong, then the fix."""
from __future__ import annotations

import streamlit as st

from asap_core.errors import AsapError


def show_error(exc: AsapError, where=st) -> None:
    """``exc.message`` as an error box and ``exc.hint`` as a "Fix:" caption, in ``where`` (page or sidebar)."""
    where.error(exc.message)
    if exc.hint:
        where.caption(f"Fix: {exc.hint}")


def show_warning(message: str, hint: str = "", where=st) -> None:
    """A warning with its fix (something that limits a view without stopping it)."""
    where.warning(message)
    if hint:
        where.caption(f"Fix: {hint}")
