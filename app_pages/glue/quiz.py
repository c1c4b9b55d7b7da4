"""Glue of the quiz: the student's view (a quiz link opens only the quiz), the maps a class shares, class rounds.

Student view: a session whose first link carries a valid ``quiz=`` (and no other page) is a student's for its
whole life (``student_mode``): the entry script shows only the quiz page, without the sidebar, the guide, the
toolbar or the link rewriting; ``quiz_start`` replaces ``sidebar.page_start`` there.

Maps: ``quiz_maps`` computes a quiz image's map once per server process however many students ask at the same
moment (a lock per bundle and method): the first is charged, the others wait and read the stored map.

Class rounds (``storage.class_rounds`` in the state store): the teacher starts one (``start_round``), students'
answers are recorded anonymously with a per-session token (``record_answer``), the teacher's view reads them.
"""
from __future__ import annotations

import threading

import numpy as np
import streamlit as st

from asap_core.errors import AsapError
from asap_core.storage.bundle import Bundle
from asap_core.storage.class_rounds import ROUND_HOURS as ROUND_HOURS  # the quiz page says how long a round lasts
from asap_core.storage.class_rounds import ClassRounds, Round, clean_code, new_player
from asap_core.storage.state_store import StateStore
from asap_core.views import quiz as vq
from asap_core.views import state as vs
from asap_core.views.trust import trust_notices

from . import budget, state, work
from .errors import show_error
from .keys import K_BUNDLE, K_PLAYER, K_ROUND, K_STUDENT, QUIZ_AI, QUIZ_NEXT, QUIZ_REAL, css_class
from .sidebar import page_start

_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_BIG_BUTTONS = ", ".join(f"{css_class(k)} button" for k in (QUIZ_REAL, QUIZ_AI, QUIZ_NEXT))
#: the student's view: no toolbar, header or sidebar; the page starts at the top; big answer buttons
STUDENT_CSS = f"""<style>
[data-testid="stToolbar"], [data-testid="stHeader"], [data-testid="stSidebar"],
[data-testid="stSidebarCollapsedControl"], [data-testid="stAppDeployButton"], [data-testid="stMainMenu"],
[data-testid="stDecoration"] {{display: none !important;}}
[data-testid="stMainBlockContainer"], .block-container {{padding-top: 1rem !important;
  padding-bottom: 1rem !important;}}
{_BIG_BUTTONS} {{min-height: 3.25rem; font-size: 1.2rem;}}
</style>"""


def student_mode() -> bool:
    """Whether this session is a student's: decided on its first run from the link (a valid ``quiz`` and no
    page other than the quiz), kept for the session; the link's ``round`` code is kept with it."""
    ss = st.session_state
    if K_STUDENT not in ss:
        params = st.query_params.to_dict()
        link = vs.parse_query(params)
        ss[K_STUDENT] = bool(link.quiz) and link.page in (None, "quiz")
        ss[K_ROUND] = clean_code(params.get("round")) if ss[K_STUDENT] else None
    return bool(ss[K_STUDENT])


def quiz_start() -> Bundle:
    """First call of the quiz page: ``sidebar.page_start`` for a teacher; for a student the bundle only (no
    sidebar, guide or notices: the reveal says when the model is untrained), ``st.stop()`` without one."""
    if not student_mode():
        return page_start()
    st.html(STUDENT_CSS)
    state.init_from_link()
    try:
        budget.hosted_policy()
    except AsapError as exc:
        show_error(exc)
        st.stop()
    b = state.current_bundle()
    if b is None:
        st.error("This quiz cannot be opened: its images are not on this server any more.")
        st.caption("Ask your teacher for a new link.")
        st.stop()
    return b


def trusted(b: Bundle) -> bool:
    """Whether the bundle's guesses may be explained: not a random model, not a chance-level detector."""
    return not trust_notices(b)


def link_bundle(b: Bundle) -> str | None:
    """The open bundle as a link names it now (its name in hosted mode): never a stale query value."""
    return state._link_bundle(st.session_state.get(K_BUNDLE) or str(b.path))


def _lock(key: tuple[str, str]) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def quiz_maps(b: Bundle, ids: list[str], method: str) -> np.ndarray | None:
    """``work.maps_for`` with one computation per bundle and method at a time in this process: a class opening
    one quiz computes (and is charged for) each map once; the others read it from the bundle's store."""
    with _lock((str(b.path), method)):
        return work.maps_for(b, ids, method)


def rounds() -> ClassRounds | None:
    """The class rounds of this server's state store; None (the reason shown) when it cannot be reached."""
    try:
        return ClassRounds(StateStore.from_url())
    except AsapError as exc:
        show_error(exc)
        return None


def start_round(b: Bundle, spec: vq.QuizSpec, ids: list[str]) -> Round | None:
    """Start a class round of ``spec`` (images ``ids``); None with the reason shown when it cannot start."""
    store = rounds()
    if store is None:
        return None
    try:
        return store.start(link_bundle(b) or "", spec.to_param(), ids, owner=budget.client_id())
    except AsapError as exc:
        show_error(exc)
        return None


def open_round(code: str) -> Round | None:
    """The open round ``code``; None when it has closed or the store cannot be read (the reason shown)."""
    store = rounds()
    try:
        return store.get(code) if store is not None else None
    except AsapError as exc:
        show_error(exc)
        return None


def student_round(spec: vq.QuizSpec, ids: list[str]) -> Round | None:
    """The open round this student's link names, when it is for this very quiz (same spec, same images)."""
    code = st.session_state.get(K_ROUND)
    store = rounds() if code else None
    try:
        rnd = store.get(code) if store is not None else None
    except AsapError:
        return None
    return rnd if rnd is not None and rnd.quiz == spec.to_param() and list(rnd.ids) == list(ids) else None


def record_answer(rnd: Round, position: int, said: str, right: bool) -> bool:
    """Record this session's answer (anonymous token) in ``rnd``; False when it was not recorded."""
    ss = st.session_state
    player = ss.setdefault(K_PLAYER, new_player())
    store = rounds()
    try:
        return store is not None and store.record(rnd.code, player, position, said, right)
    except AsapError:
        return False


def class_results(b: Bundle, rnd: Round) -> vq.ClassResults | None:
    """The teacher's summary of ``rnd`` (answers read now); None when the store cannot be read."""
    store = rounds()
    if store is None:
        return None
    try:
        answers = store.answers(rnd.code)
    except AsapError as exc:
        show_error(exc)
        return None
    rows = vq.play_order(b.images, list(rnd.ids))
    return vq.class_results(answers, list(rnd.ids), rows["label"].tolist(), rows["pred"].tolist())
