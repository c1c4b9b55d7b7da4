"""Single-image page: upload one image (uploads only: a URL is never fetched) and see its p_fake, its nearest
images and cell in the open bundle, and its 17 relevance maps. Nothing of the upload is written to disk."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import budget
from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import work as W
from app_pages.glue.sidebar import page_start
from asap_core.views import single as vsi
from asap_core.views.text import as_text, as_texts

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
method = ss[K.K_METHOD]

st.subheader("Single image")
st.caption("Upload one image file: the bundle's CLIP and distiller give its p_fake, its nearest bundle images in "
           "the 16 dimensions (and so its cell) and its relevance maps. Only uploaded files are accepted; "
           "nothing is fetched from a URL and nothing of the upload is stored.")
c1, c2 = st.columns([3, 1])
up = c1.file_uploader("Image file", type=vsi.UPLOAD_TYPES, key=K.W_UPLOAD,  # hosted: the browser says the limit
                      max_upload_size=budget.upload_limit())
k = c2.slider("Neighbours (k)", 1, 24, 8, key=K.W_SINGLE_K)
if up is None:
    st.info("No image uploaded yet.")
    st.stop()
res = W.upload_result(b, up.name, up.getvalue(), int(k), method)  # checked, charged once, kept for a few reruns
if res is None:
    st.stop()

left, right = st.columns([1, 3], gap="large")
with left:
    st.image(res.image, width=220)
with right:
    far = vsi.far_notice(float(res.neighbours["distance"].iloc[0]), D.nearest_distance_limit(path, stamp)) \
        if len(res.neighbours) else None
    if far:  # before the verdict: an image unlike the bundle's gets a guess, not a finding
        st.warning(far, icon=":material/explore_off:")
    st.markdown(vsi.verdict_line(res))
    m1, m2, m3 = st.columns(3)
    m1.metric("p_fake", f"{res.p_fake:.3f}")
    m2.metric("prediction", res.pred)
    m3.metric("confidence", f"{res.confidence:.2f}")
    b1, b2, b3 = st.columns(3)
    if res.cell is not None and b1.button(f"Cell {res.cell} on the overview", key=K.SINGLE_CELL,
                                          icon=":material/bubble_chart:"):
        ss[K.K_CELLS] = [int(res.cell)]
        st.switch_page(K.PAGE_FILES["overview"])
    if res.cell is not None and b2.button("The cell's images", key=K.SINGLE_GRID, icon=":material/grid_view:"):
        ss[K.K_CELLS] = [int(res.cell)]
        st.switch_page(K.PAGE_FILES["images"])
    if b3.button("Neighbours' maps", key=K.SINGLE_ATTN, icon=":material/visibility:"):
        ss[K.K_IMAGES] = res.neighbours["image_id"].tolist()
        st.switch_page(K.PAGE_FILES["attention"])

nb = res.neighbours
st.markdown(f"**{len(nb)} nearest bundle images** (Euclidean distance in the 16 dimensions)")
st.caption(as_text(vsi.neighbour_summary(nb)))
st.image(D.thumbs(b, nb["image_id"].tolist(), 96), caption=as_texts(vsi.neighbour_captions(nb)), width=96)
with st.expander("Neighbour table"):
    st.dataframe(vsi.neighbours_display(nb), hide_index=True, key=K.SINGLE_NB)

st.markdown(f"**Relevance maps** ({method}): the fake logit, then the 16 dimensions ordered by support for the "
            "prediction (contribution z_i·w2_i)")
tiles = vsi.map_tiles(res, D.head_weights(path, stamp), names=D.dimension_names(b))
st.image([t.image for t in tiles], caption=as_texts(t.caption for t in tiles), width=92)
