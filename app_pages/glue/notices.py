"""The bundle's notices (``asap_core.views.trust``) at the top of every page's main area.

``page_start`` calls ``show_notices`` once the bundle is known, so a page opened from a copied link shows
them too: a bundle made with a random CLIP, a classifier close to chance.
"""
from __future__ import annotations

import streamlit as st

from asap_core.storage.bundle import Bundle
from asap_core.views.trust import trust_notices

from .errors import hint_place, visible

ICONS = {"warning": ":material/warning:", "caution": ":material/help:"}


def show_notices(b: Bundle) -> None:
    """Each notice of ``b`` as a warning box (bold text, then its fix), above the page's own content."""
    for notice in trust_notices(b, hint_place()):
        body = f"**{visible(notice.text)}**"
        if notice.fix:
            body += f"\n\nFix: {visible(notice.fix)}"
        st.warning(body, icon=ICONS.get(notice.level))
