"""Single-image page: upload one image (uploads only: a URL is never fetched) and see its p_fake, its nearest
images and cell in the open bundle, and its 17 relevance maps. Nothing of the upload is written to disk."""
from __future__ import annotations

import streamlit as st

from asap_core.errors import AsapError
from asap_core.inputs.imageio import sha1_hex
from asap_core.analyses.single_image import analyse_upload, decode_upload
from asap_core.views import single as vsi
from app_pages import common as C

MAX_KEPT = 4  # results of recent uploads kept in this session

b = C.page_start()
ss = st.session_state
path, stamp = C.ref(b)
method = ss[C.K_METHOD]

st.subheader("Single image")
st.caption("Upload one image file: the bundle's CLIP and distiller give its p_fake, its nearest bundle images in "
           "the 16 dimensions (and so its cell) and its relevance maps. Only uploaded files are accepted; "
           "nothing is fetched from a URL and nothing of the upload is stored.")
c1, c2 = st.columns([3, 1])
up = c1.file_uploader("Image file", type=vsi.UPLOAD_TYPES, key="w_upload")
k = c2.slider("Neighbours (k)", 1, 24, 8, key="w_single_k")
if up is None:
    st.info("No image uploaded yet.")
    st.stop()

data = up.getvalue()
policy = C.hosted_policy()
try:
    decode_upload(up.name, data, policy)  # type, size and decoding checks before any model work
except AsapError as exc:
    C.show_error(exc)
    st.stop()

model = C.encoder_model(b)
digest = sha1_hex(data)
key = (str(b.path), digest, int(k), method, model)
kept: dict = ss.setdefault("_single_results", {})
res = kept.get(key)
if res is None:
    charged = ss.setdefault("_single_charged", set())
    if (str(b.path), digest, method, model) not in charged:  # one map computation per upload and method
        if not C.charge_relevance(1):
            st.stop()
        charged.add((str(b.path), digest, method, model))
    encoder = C.encoder_for(model, "Uploads")
    if encoder is None:
        st.stop()
    bar = st.progress(0.0, text=f"Embedding {up.name} and computing its {method} maps ...")
    try:
        res = analyse_upload(b, up.name, data, encoder=encoder, k_neighbours=int(k), method=method, policy=policy)
    except AsapError as exc:
        bar.empty()
        C.show_error(exc)
        st.stop()
    bar.progress(1.0, text="Done")
    bar.empty()
    kept[key] = res
    while len(kept) > MAX_KEPT:
        kept.pop(next(iter(kept)))

left, right = st.columns([1, 3], gap="large")
with left:
    st.image(res.image, width=220)
with right:
    st.markdown(vsi.verdict_line(res))
    m1, m2, m3 = st.columns(3)
    m1.metric("p_fake", f"{res.p_fake:.3f}")
    m2.metric("prediction", res.pred)
    m3.metric("confidence", f"{res.confidence:.2f}")
    b1, b2, b3 = st.columns(3)
    if res.cell is not None and b1.button(f"Cell {res.cell} on the overview", key="single_cell",
                                          icon=":material/bubble_chart:"):
        ss[C.K_CELLS] = [int(res.cell)]
        st.switch_page(C.PAGE_FILES["overview"])
    if res.cell is not None and b2.button("The cell's images", key="single_grid", icon=":material/grid_view:"):
        ss[C.K_CELLS] = [int(res.cell)]
        st.switch_page(C.PAGE_FILES["images"])
    if b3.button("Neighbours' maps", key="single_attn", icon=":material/visibility:"):
        ss[C.K_IMAGES] = res.neighbours["image_id"].tolist()
        st.switch_page(C.PAGE_FILES["attention"])

nb = res.neighbours
st.markdown(f"**{len(nb)} nearest bundle images** (Euclidean distance in the 16 dimensions)")
st.caption(vsi.neighbour_summary(nb))
st.image(C.thumbs(b, nb["image_id"].tolist()), caption=vsi.neighbour_captions(nb), width=96)
with st.expander("Neighbour table"):
    st.dataframe(vsi.neighbours_display(nb), hide_index=True, key="single_nb")

st.markdown(f"**Relevance maps** ({method}): the fake logit, then the 16 dimensions ordered by support for the "
            "prediction (contribution z_i·w2_i)")
tiles = vsi.map_tiles(res, C.head_weights(path, stamp))
st.image([t.image for t in tiles], caption=[t.caption for t in tiles], width=92)
