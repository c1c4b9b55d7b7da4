"""Images page: the selected cells' images on an IsoMatch grid (brush / shift-click picks images), or the
concept view of the cell (toggle, top right)."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import state as S
from app_pages.glue import work as W
from app_pages.glue.errors import guarded_fragment
from app_pages.glue.sidebar import page_start
from app_pages.glue.widgets import next_or_clear, save_concept_form, save_selection_form
from asap_core.views import concept as vc
from asap_core.views import state as vs
from asap_core.views.glossary import GLOSSARY
from asap_core.views.text import as_text

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
grid = int(ss[K.K_GRID])
filters = ss[K.K_FILTERS]
cells = list(ss[K.K_CELLS])
method = ss[K.K_METHOD]

head, toggle_col = st.columns([5, 1])
concept_on = toggle_col.toggle("Concept view", key=K.W_CONCEPTS,
                               help="Concepts shared by the cell's images. " + GLOSSARY["concept"])
if not cells:
    head.subheader("Image view")
    st.info("No cell selected: click a cell on the Overview first.")
    st.page_link(K.PAGE_FILES["overview"], label="Go to the overview", icon=":material/bubble_chart:")
    st.stop()

layout, n_rows, n_cols, n_members = D.grid_for(path, stamp, grid, tuple(cells), filters)
cell_txt = ", ".join(str(c) for c in cells)
head.subheader(f"Cell{'s' if len(cells) > 1 else ''} {cell_txt} · {n_members:,} images")
if n_members == 0:
    st.warning("These cells hold no image that passes the current filters.")
    st.stop()

if concept_on:
    ids = layout["image_id"].tolist()
    k = st.columns([1, 3])[0].slider("Concepts (k)", 2, 8, 3, key=K.W_K)
    result = W.concepts_for(b, ids, k, method)
    if result is None:
        st.stop()
    st.caption(f"{len(ids)} images, each cut to its top 10 % / 25 % / 50 % fake-logit regions "
               f"({method} maps); k-means over the segments in the 16 dimensions.")
    cards = vc.concept_cards(result)
    for card in cards:
        with st.container(border=True):
            st.markdown(f"**Concept {card['concept'] + 1}** · {as_text(vc.describe(card, D.dimension_names(b)))}",
                        help=GLOSSARY["concept"])
            if card["crops"]:
                st.image(card["crops"], width=96)
    save_concept_form(b, result, [card["concept"] for card in cards], base_name=f"cell {cell_txt} concept")
    st.stop()

st.caption("Frames: green = predicted right, red = predicted wrong. Hover for file, label and p_fake. "
           "Drag a box to pick images, shift-click to add single ones, double-click to clear."
           + (f" Showing a sample of {len(layout)} of {n_members:,} images." if len(layout) < n_members else ""),
           help=GLOSSARY["p_fake"])


def _grid_and_picks() -> None:
    """The grid and the picks under it: a brush or a click reruns this part only, not the page."""
    chart_key = K.grid_chart(grid, vs.short_hash(cell_txt + repr(filters)))
    S.fresh_chart(chart_key)
    event = st.vega_lite_chart(spec=D.grid_spec(path, stamp, grid, tuple(cells), filters), key=chart_key,
                               on_select="rerun", selection_mode=["brush", "pick"], theme=None, width="content")
    ss[K.K_IMAGES] = S.consume_event(chart_key, event, ss[K.K_IMAGES], lambda ev: vs.picked_ids(ev, layout))

    # picks belong to the cells they were made in: another cell's picks are dropped (here and for Attention)
    members = set(D.selection_facts(path, stamp, grid, filters, tuple(cells), D.dimension_names(b)).member_ids)
    ss[K.K_IMAGES] = picked = [i for i in ss[K.K_IMAGES] if i in members]
    if picked:
        st.markdown(f"**{len(picked)} image{'s' if len(picked) > 1 else ''} picked**")
        st.image(D.thumbs(b, picked[:24], 56), width=56)
        next_or_clear("Show attention maps", "attention", ":material/visibility:", K.K_IMAGES, chart_key,
                      (K.IMG_ATTN, K.IMG_CLEAR), "Clear picks")
        save_selection_form(b, picked, base_name=f"cell {cell_txt} selection")
    else:
        st.caption("No image picked yet.")
    S.write_link("images")  # a fragment's rerun does not reach the entry script, which mirrors the URL



guarded_fragment(_grid_and_picks)()
