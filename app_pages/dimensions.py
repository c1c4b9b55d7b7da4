"""Dimensions page (ASAP): per dimension the real vs fake distribution, classifier weight, single-dimension
AUC, top images and their mean relevance map."""
from __future__ import annotations

import io

import numpy as np
import streamlit as st
from PIL import Image

from asap_core.method.relevance import colormap, overlay, upsample_map
from asap_core.views import attention as va
from asap_core.views import dimensions as vd
from app_pages import common as C

b = C.page_start()
ss = st.session_state
path, stamp = C.ref(b)

st.subheader("Dimension view")
table, dist = C.dimension_data(path, stamp)
st.caption("Each of the 16 dimensions: distribution over real (blue) and fake (orange) images, the "
           "classifier weight w2 and the AUC of the dimension alone (0.5 = no signal; below 0.5: higher "
           "values mean real).")
order = table.assign(key=(table["auc"] - 0.5).abs()).sort_values("key", ascending=False)["dim"].tolist()
st.altair_chart(vd.weight_chart(table), theme=None)
st.altair_chart(vd.distribution_chart(dist, table, order=order), theme=None)

st.markdown("**One dimension in detail**")
c1, c2, c3 = st.columns([2, 2, 2])
dim = c1.selectbox("Dimension", order, format_func=lambda d: vd.panel_titles(table)[d], key="w_dim")
k = c2.slider("Top images", 4, 24, 8, key="w_topk")
highest = c3.segmented_control("Direction", ["highest", "lowest"], default="highest", key="w_dir") != "lowest"
top = vd.top_images(b.images, dim, k, highest)
ids = top["image_id"].tolist()
st.image(C.thumbs(b, ids), caption=[f"z{dim} = {v:+.3f}" for v in top[f"z{dim}"]], width=84)

col_a, col_b = st.columns([1, 1])
if col_a.button("Send these images to the attention view", key="dim_send", icon=":material/visibility:"):
    ss[C.K_IMAGES] = ids
    st.switch_page(C.PAGE_FILES["attention"])
missing = va.missing_maps(b, ids, ss[C.K_METHOD])
if missing and not col_b.toggle(f"Compute mean {ss[C.K_METHOD]} map ({len(missing)} images need maps)",
                                key="w_dim_maps"):
    st.stop()
maps = C.maps_for(b, ids, ss[C.K_METHOD])
if maps is None:
    st.stop()
mean = vd.mean_map(maps, dim)
heat = Image.fromarray(colormap(upsample_map(mean, 128))).convert("RGB")
first = Image.open(io.BytesIO(C.thumbs(b, ids[:1])[0])).convert("RGB")
st.image([heat, overlay(first, mean, alpha=0.5)],
         caption=[f"mean relevance of dim {dim} over the top {len(ids)}", "over the first top image"], width=160)
st.caption(f"Mean of the per-image min-max-scaled maps; range before averaging "
           f"{float(np.min(maps[:, dim])):.3g} .. {float(np.max(maps[:, dim])):.3g}.")
