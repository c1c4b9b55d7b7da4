"""The session's selection: taken from a link once, mirrored back into the URL, changed by chart events and
by opening another bundle. (What a link carries, and how events become ids: ``asap_core.views.state``.)

Hosted mode: bundles only by name from the policy's root (the link's ``bundle`` is a name resolved through
the policy); no demo, no paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from asap_core.errors import AsapError
from asap_core.hosting import HostedPolicy
from asap_core.settings import settings
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import DEFAULT_METHOD
from asap_core.views import overview as ov
from asap_core.views import state as vs

from . import budget, data
from .errors import show_error
from .keys import (
    BUNDLE_WIDGETS,
    K_BUNDLE,
    K_CELLS,
    K_DEMO_NOTE,
    K_DIM,
    K_ERROR,
    K_FILTERS,
    K_GRID,
    K_IMAGES,
    K_INIT,
    K_METHOD,
    K_PENDING_IMAGES,
    K_PENDING_PAGE,
    K_QUIZ,
    K_WANT_DEMO,
    chart_signature,
)


def resolve_hosted(name: str, policy: HostedPolicy) -> str | None:
    """The folder of the visitor-given bundle ``name``; None with the refusal kept for the sidebar."""
    try:
        return str(policy.resolve_bundle(name))
    except AsapError as exc:
        st.session_state[K_ERROR] = exc
        return None


def _first_bundle(link: vs.LinkState) -> None:
    """The bundle a new session opens: the link's, else ``$ASAP_BUNDLE``, else (locally) the demo."""
    ss = st.session_state
    try:
        policy = budget.hosted_policy()
    except AsapError as exc:
        ss[K_ERROR], ss[K_BUNDLE], policy = exc, None, None
    if settings().hosted:
        if policy is not None and (link.bundle or not ss.get(K_BUNDLE)):
            # a broken bundle is skipped for the landing page (the picker lists it as unavailable)
            name = link.bundle or policy.first_usable(settings().bundle)
            ss[K_BUNDLE] = resolve_hosted(name, policy) if name else None
    elif link.bundle:
        ss[K_BUNDLE] = link.bundle
    elif not ss.get(K_BUNDLE):
        ss[K_BUNDLE] = settings().bundle
        ss[K_WANT_DEMO] = not ss[K_BUNDLE]


def init_from_link() -> None:
    """Once per session: take bundle, grid, cells, images and page from the URL, else ``$ASAP_BUNDLE``,
    else the demo. Values already in session state (e.g. injected by a test) are kept unless the link
    names its own."""
    ss = st.session_state
    if ss.get(K_INIT):
        return
    link = vs.parse_query(st.query_params.to_dict())
    _first_bundle(link)
    if link.grid:
        ss[K_GRID] = link.grid
    if link.cells:
        ss[K_CELLS] = link.cells
    if link.images:
        ss[K_PENDING_IMAGES] = link.images
    if link.page:
        ss[K_PENDING_PAGE] = link.page
    if link.quiz:
        ss[K_QUIZ] = link.quiz
    if link.dim is not None:
        ss[K_DIM] = link.dim
    ss.setdefault(K_CELLS, [])
    ss.setdefault(K_IMAGES, [])
    ss.setdefault(K_METHOD, DEFAULT_METHOD)
    ss.setdefault(K_FILTERS, ov.Filters())
    # marked done only now: a first run interrupted in here (a new rerun request reaches the script at any
    # Streamlit call, e.g. a cached function's spinner) reads the link again instead of dropping its grid
    ss[K_INIT] = True


def current_bundle() -> Bundle | None:
    """The bundle named in session state, opened through the resource cache; None (error kept) if it fails."""
    ss = st.session_state
    path = ss.get(K_BUNDLE)
    if not path:
        return None
    try:
        b = data.load_bundle(str(path), data.stamp(str(path)))
    except AsapError as exc:
        ss[K_ERROR] = exc
        return None
    ss.pop(K_ERROR, None)
    if not ss.get(K_GRID):
        ss[K_GRID] = b.grid
    pending = ss.pop(K_PENDING_IMAGES, None)
    if pending:
        ss[K_IMAGES] = vs.resolve_ids(pending, b.images["image_id"].tolist())
    return b


def open_bundle(path: str) -> bool:
    """Switch the session to another bundle (selection cleared); False with the error in the sidebar if it fails."""
    path = str(Path(path).expanduser())
    try:
        new = data.load_bundle(path, data.stamp(path))
    except AsapError as exc:
        show_error(exc, st.sidebar)
        return False
    ss = st.session_state
    ss[K_BUNDLE] = path
    ss[K_GRID] = new.grid
    for k in (K_ERROR, K_DEMO_NOTE, *BUNDLE_WIDGETS):
        ss.pop(k, None)
    ss[K_CELLS], ss[K_IMAGES], ss[K_FILTERS] = [], [], ov.Filters()
    return True


def _link_bundle(path: str | None) -> str | None:
    """The bundle as a link names it: its path; in hosted mode its name under the root (paths are refused)."""
    if not settings().hosted:
        return path
    try:
        policy = budget.hosted_policy()
    except AsapError:
        return None
    return budget.hosted_name(path, policy) if policy is not None else None


def write_link(page: str | None) -> None:
    """Mirror the selection into the URL so a copied link reopens the same view."""
    ss = st.session_state
    path = ss.get(K_BUNDLE)
    grid = ss.get(K_GRID)
    default_grid = None
    if path:
        try:
            default_grid = data.load_bundle(str(path), data.stamp(str(path))).grid
        except AsapError:
            default_grid = None
    link = vs.LinkState(bundle=_link_bundle(path), grid=grid if grid and grid != default_grid else None,
                        cells=list(ss.get(K_CELLS, [])), images=list(ss.get(K_IMAGES, [])), page=page,
                        quiz=ss.get(K_QUIZ) if page == "quiz" else None,
                        dim=ss.get(K_DIM) if page == "dimensions" else None)
    q = vs.to_query(link)
    if st.query_params.to_dict() != q:
        st.query_params.from_dict(q)


def consume_event(chart_key: str, event: Any, current: list, convert) -> list:
    """Apply a chart event to a selection (see ``views.state.reconcile``); remembers what was handled."""
    sig_key = chart_signature(chart_key)
    new, sig = vs.reconcile(event, st.session_state.get(sig_key), current, convert)
    st.session_state[sig_key] = sig
    return new


def fresh_chart(chart_key: str) -> bool:
    """True when the chart ``chart_key`` has no event state yet (first draw on this page visit)."""
    fresh = chart_key not in st.session_state
    if fresh:
        st.session_state.pop(chart_signature(chart_key), None)
    return fresh
