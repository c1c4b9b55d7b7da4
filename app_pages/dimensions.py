"""Dimensions page (ASAP): per dimension the real vs fake distribution, classifier weight, single-dimension
AUC, top images and their mean relevance map."""
from __future__ import annotations

import streamlit as st

from asap_core.method.relevance_store import missing_maps
from asap_core.views import dimensions as vd
from asap_core.views.glossary import GLOSSARY
from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue.sidebar import page_start

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
method = ss[K.K_METHOD]

st.subheader("Dimension view", help=GLOSSARY["dimension"])
table, dist = D.dimension_data(path, stamp)
st.caption("Each of the 16 dimensions: distribution over real (blue) and fake (orange) images, the "
           "classifier weight w2 and the AUC of the dimension alone (0.5 = no signal; below 0.5: higher "
           "values mean real).")
order = vd.dimension_order(table)
st.altair_chart(vd.weight_chart(table), theme=None)
st.altair_chart(vd.distribution_chart(dist, table, order=order), theme=None)

st.markdown("**One dimension in detail**")
c1, c2, c3 = st.columns([2, 2, 2])
dim = c1.selectbox("Dimension", order, format_func=lambda d: vd.panel_titles(table)[d], key="w_dim",
                   help=GLOSSARY["dimension"])
k = c2.slider("Top images", 4, 24, 8, key="w_topk")
highest = c3.segmented_control("Direction", ["highest", "lowest"], default="highest", key="w_dir",
                                wrap=True) != "lowest"
top = vd.top_images(b.images, dim, k, highest)
ids = top["image_id"].tolist()
st.image(D.thumbs(b, ids), caption=[f"z{dim} = {v:+.3f}" for v in top[f"z{dim}"]], width=84)

col_a, col_b = st.columns([1, 1])
if col_a.button("Send these images to the attention view", key="dim_send", icon=":material/visibility:"):
    ss[K.K_IMAGES] = ids
    st.switch_page(K.PAGE_FILES["attention"])
missing = missing_maps(b, ids, method)
if missing and not col_b.toggle(f"Compute mean {method} map ({len(missing)} images need maps)", key="w_dim_maps",
                                help=GLOSSARY["relevance map"]):
    st.stop()
maps = D.maps_for(b, ids, method)
if maps is None:
    st.stop()
tiles, captions, note = vd.mean_map_tiles(maps, dim, b.thumbnails(ids[:1])[0])
st.image(tiles, caption=captions, width=160)
st.caption(note)
