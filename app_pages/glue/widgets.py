"""Small widget groups more than one page uses: a progress bar for long work, the "save as pattern" forms,
"go on / clear" under a selection."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import streamlit as st

from asap_core.analyses.concepts import ConceptResult
from asap_core.analyses.patterns import Pattern, PatternStore, pattern_from_concept, pattern_from_selection
from asap_core.errors import AsapError
from asap_core.storage.bundle import Bundle
from asap_core.views.patterns import unique_name
from asap_core.views.text import as_text

from .budget import hosted
from .errors import show_error
from .keys import PAGE_FILES, PAT_CON, PAT_SEL, form_key


@contextmanager
def progress_bar(start: str, step: Callable[[int, int], str]) -> Iterator[Callable[[int, int], None]]:
    """A ``st.progress`` bar shown for the block; yields ``progress(done, total)``, whose text is
    ``step(done, total)``. The bar is removed when the block ends (also on an error)."""
    bar = st.progress(0.0, text=start)

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=step(done, total))

    try:
        yield progress
    finally:
        bar.empty()


def save_pattern_form(b: Bundle, make: Callable[..., Pattern], key: str, base_name: str, label: str = "Save as pattern",
                      choices: list | None = None, format_choice: Callable = str) -> None:
    """An expander with name + note (+ a pick among ``choices``) that saves ``make(name, note[, choice])``
    (a ``Pattern``) in the bundle's ``PatternStore``; errors (name taken, read-only bundle) with their fix.
    On a hosted explorer (every visitor sees the served bundle) a note instead."""
    if hosted():
        st.caption("Saving patterns is off on this hosted explorer; run ASAP Explorer locally to save your own.")
        return
    store = PatternStore(b)
    with st.expander(label, icon=":material/bookmark_add:"):
        choice = st.selectbox("Which", choices, format_func=format_choice, key=form_key(key, "choice")) \
            if choices else None
        name = st.text_input("Pattern name", value=unique_name(base_name, store.names()), key=form_key(key, "name"))
        note = st.text_input("Note", key=form_key(key, "note"), placeholder="what the regions show")
        if st.button("Save pattern", key=form_key(key, "save"), icon=":material/bookmark_add:"):
            try:
                store.add(make(name, note) if choices is None else make(name, note, choice))
            except AsapError as exc:
                show_error(exc)
                return
            st.success(f"Saved pattern '{as_text(name.strip())}'.")
            st.page_link(PAGE_FILES["patterns"], label="Open the pattern view", icon=":material/bookmarks:")


def save_selection_form(b: Bundle, picked: list[str], base_name: str) -> None:
    """"Save the picked images as pattern" (``analyses.patterns.pattern_from_selection``)."""
    save_pattern_form(b, lambda name, note: pattern_from_selection(name, picked, note), key=PAT_SEL,
                      base_name=base_name, label="Save the picked images as pattern")


def save_concept_form(b: Bundle, result: ConceptResult, concepts: list[int], base_name: str) -> None:
    """"Save a concept as pattern": one of ``concepts`` of ``result`` (``analyses.patterns.pattern_from_concept``)."""
    save_pattern_form(b, lambda name, note, c: pattern_from_concept(result, c, name, note), key=PAT_CON,
                      base_name=base_name, label="Save a concept as pattern", choices=concepts,
                      format_choice=lambda c: f"Concept {c + 1}")


def next_or_clear(next_label: str, next_page: str, icon: str, selection_key: str, chart_key: str,
                  keys: tuple[str, str], clear_label: str) -> None:
    """Two buttons under a selection: go on to ``next_page`` with it, or clear it (the chart's own event
    state too, so the chart draws without it)."""
    b1 = b2 = st.container(horizontal=True, wrap=True)  # labels whole: in a narrow column the buttons wrap
    if b1.button(next_label, type="primary", key=keys[0], icon=icon):
        st.switch_page(PAGE_FILES[next_page])
    if b2.button(clear_label, key=keys[1]):
        st.session_state[selection_key] = []
        st.session_state.pop(chart_key, None)
        st.rerun()
