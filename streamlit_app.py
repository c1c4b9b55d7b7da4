"""ASAP Explorer app: ``streamlit run streamlit_app.py`` (``ASAP_BUNDLE=/path/to/bundle`` to open one).

Public server: ``ASAP_HOSTED=1 ASAP_BUNDLE_ROOT=/srv/bundles [ASAP_BUNDLE=name] [ASAP_MODEL_ALLOWLIST=id,...]
[ASAP_RELEVANCE_BUDGET=200]``: visitors pick bundles by name, type no paths (see ``asap_core.hosting``).

Runs on every page: reads the link once, then runs the page chosen in the navigation (each page opens
the bundle through the cache and draws the shared sidebar with ``glue.sidebar.page_start()``), and finally
mirrors the selection into the URL.
"""
from __future__ import annotations

import streamlit as st

from app_pages.glue import keys, state
from app_pages.glue.budget import hosted
from app_pages.glue.errors import guarded
from app_pages.glue.quiz import student_mode
from asap_core.views.pages import BY_SLUG, DEFAULT_PAGE
from asap_core.views.pages import PAGES as REGISTRY

st.set_page_config(page_title="ASAP Explorer", page_icon=":material/image_search:", layout="wide")
if hosted():  # visitors: no exception details, no developer menu (also set by `python -m asap_core serve`)
    st.set_option("client.showErrorDetails", "none")
    st.set_option("client.toolbarMode", "minimal")

guarded(state.init_from_link)

PAGES = {p.slug: st.Page(p.file, title=p.title, icon=p.icon, default=p.slug == DEFAULT_PAGE, url_path=p.url_path)
         for p in REGISTRY}  # the one list of pages: asap_core.views.pages
if student_mode():  # a quiz link: the student's view, only the quiz (no navigation, the link left as opened)
    st.session_state.pop(keys.K_PENDING_PAGE, None)
    quiz = BY_SLUG["quiz"]
    home = st.Page(quiz.file, title=quiz.title, icon=quiz.icon, default=True, url_path="play")
    guarded(st.navigation([home, PAGES["quiz"]], position="hidden").run, label="page quiz")  # a link to / or /quiz
    st.stop()
page = st.navigation(list(PAGES.values()), position="sidebar")
slug = next((s for s, p in PAGES.items() if p.title == page.title), DEFAULT_PAGE)

pending = st.session_state.pop(keys.K_PENDING_PAGE, None)
if pending and pending != slug and pending in PAGES:
    st.switch_page(PAGES[pending])

guarded(lambda: state.write_link(slug))
try:
    guarded(page.run, label=f"page {slug}")
finally:  # also when the page stops early (st.stop): a bundle opened during the run must reach the address bar
    guarded(lambda: state.write_link(slug))
