"""ASAP Explorer app: ``streamlit run streamlit_app.py`` (``ASAP_BUNDLE=/path/to/bundle`` to open one).

Public server: ``ASAP_HOSTED=1 ASAP_BUNDLE_ROOT=/srv/bundles [ASAP_BUNDLE=name] [ASAP_MODEL_ALLOWLIST=id,...]
[ASAP_RELEVANCE_BUDGET=200]``: visitors pick bundles by name, type no paths (see ``asap_core.hosting``).

Runs on every page: reads the link once, then runs the page chosen in the navigation (each page opens
the bundle through the cache and draws the shared sidebar with ``common.page_start()``), and finally
mirrors the selection into the URL.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app_pages import common  # noqa: E402

st.set_page_config(page_title="ASAP Explorer", page_icon=":material/image_search:", layout="wide")

common.init_from_link()

PAGES = {
    "overview": st.Page("app_pages/overview.py", title="Overview", icon=":material/bubble_chart:", default=True),
    "images": st.Page("app_pages/images.py", title="Images", icon=":material/grid_view:", url_path="images"),
    "attention": st.Page("app_pages/attention.py", title="Attention", icon=":material/visibility:",
                         url_path="attention"),
    "dimensions": st.Page("app_pages/dimensions.py", title="Dimensions", icon=":material/bar_chart:",
                          url_path="dimensions"),
    "patterns": st.Page("app_pages/patterns.py", title="Patterns", icon=":material/bookmarks:", url_path="patterns"),
    "generators": st.Page("app_pages/generators.py", title="Generators", icon=":material/factory:",
                          url_path="generators"),
    "robustness": st.Page("app_pages/robustness.py", title="Robustness", icon=":material/compress:",
                          url_path="robustness"),
    "single": st.Page("app_pages/single_image.py", title="Single image", icon=":material/upload:", url_path="single"),
}
page = st.navigation(list(PAGES.values()), position="sidebar")
slug = next((s for s, p in PAGES.items() if p.title == page.title), "overview")

pending = st.session_state.pop(common.K_PENDING_PAGE, None)
if pending and pending != slug and pending in PAGES:
    st.switch_page(PAGES[pending])

common.write_link(slug)
page.run()
common.write_link(slug)
