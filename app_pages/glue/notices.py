"""The bundle's notices (``asap_core.views.trust``) at the top of every page's main area.

``page_start`` calls ``show_notices`` once the bundle is known, so a page opened from a copied link shows
them too: a bundle made with a random CLIP, a classifier close to chance.
"""
from __future__ import annotations

import streamlit as st

from asap_core.storage.bundle import Bundle
from asap_core.views.text import as_text
from asap_core.views.trust import trust_notices

from .errors import hint_place, visible

ICONS = {"warning": ":material/warning:", "caution": ":material/help:"}


def show_notices(b: Bundle) -> None:
    """Each notice of ``b`` as a warning box (bold text) above the page's own content, its fix folded in an
    expander under it (the fix is long; the warning must not push the page below the fold)."""
    for notice in trust_notices(b, hint_place()):
        st.warning(f"**{as_text(visible(notice.text))}**", icon=ICONS.get(notice.level))
        if notice.fix:
            with st.expander("How to fix this"):
                st.markdown(f"Fix: {as_text(visible(notice.fix))}")
