"""ASAP Explorer app: ``streamlit run streamlit_app.py`` (``ASAP_BUNDLE=/path/to/bundle`` to open one).

Public server: ``ASAP_HOSTED=1 ASAP_BUNDLE_ROOT=/srv/bundles [ASAP_BUNDLE=name] [ASAP_MODEL_ALLOWLIST=id,...]
[ASAP_RELEVANCE_BUDGET=200]``: visitors pick bundles by name, type no paths (see ``asap_core.hosting``).

Runs on every page: reads the link once, then runs the page chosen in the navigation (each page opens
the bundle through the cache and draws the shared sidebar with ``glue.sidebar.page_start()``), and finally
mirrors the selection into the URL.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app_pages.glue import keys, state  # noqa: E402
from app_pages.glue.errors import guarded  # noqa: E402
from app_pages.glue.quiz import student_mode  # noqa: E402
from asap_core.settings import settings  # noqa: E402

st.set_page_config(page_title="ASAP Explorer", page_icon=":material/image_search:", layout="wide")
if settings().hosted:  # visitors: no exception details, no developer menu (also set by `python -m asap_core serve`)
    st.set_option("client.showErrorDetails", "none")
    st.set_option("client.toolbarMode", "minimal")

guarded(state.init_from_link)

NAV = {  # slug: (title, icon); files in keys.PAGE_FILES
    "overview": ("Overview", ":material/bubble_chart:"), "images": ("Images", ":material/grid_view:"),
    "attention": ("Attention", ":material/visibility:"), "dimensions": ("Dimensions", ":material/bar_chart:"),
    "patterns": ("Patterns", ":material/bookmarks:"), "generators": ("Generators", ":material/factory:"),
    "robustness": ("Robustness", ":material/compress:"), "single": ("Single image", ":material/upload:"),
    "quiz": ("Real or AI?", ":material/quiz:"),
}
PAGES = {slug: st.Page(keys.PAGE_FILES[slug], title=title, icon=icon, default=slug == "overview",
                       url_path=None if slug == "overview" else slug) for slug, (title, icon) in NAV.items()}
if student_mode():  # a quiz link: the student's view, only the quiz (no navigation, the link left as opened)
    st.session_state.pop(keys.K_PENDING_PAGE, None)
    home = st.Page(keys.PAGE_FILES["quiz"], title=NAV["quiz"][0], icon=NAV["quiz"][1], default=True,
                   url_path="play")
    guarded(st.navigation([home, PAGES["quiz"]], position="hidden").run)  # a link to / or to /quiz
    st.stop()
page = st.navigation(list(PAGES.values()), position="sidebar")
slug = next((s for s, p in PAGES.items() if p.title == page.title), "overview")

pending = st.session_state.pop(keys.K_PENDING_PAGE, None)
if pending and pending != slug and pending in PAGES:
    st.switch_page(PAGES[pending])

guarded(lambda: state.write_link(slug))
try:
    guarded(page.run)
finally:  # also when the page stops early (st.stop): a bundle opened during the run must reach the address bar
    guarded(lambda: state.write_link(slug))
