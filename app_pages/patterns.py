"""Pattern view (ASAP; docs/design.md §3.12): the bundle's saved patterns, their impact on the detector (mean drop of
p_fake with the pattern's regions masked, against an area-matched random mask; flipped predictions), the
ranking, each pattern's images, and export (zip of JSON + CSV + PNG contact sheets)."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import patterns as P
from app_pages.glue.errors import AsapError, show_error
from app_pages.glue.sidebar import page_start
from asap_core.views import patterns as vp
from asap_core.views.glossary import GLOSSARY
from asap_core.views.text import as_text

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
method = ss[K.K_METHOD]

st.subheader("Pattern view", help=GLOSSARY["pattern"])
patterns = P.saved(b)
if not patterns:
    st.info("No pattern saved yet. Pick images on the Images page (or open its concept view) and use "
            "“Save … as pattern”.")
    st.page_link(K.PAGE_FILES["images"], label="Go to the image view", icon=":material/grid_view:")
    st.stop()

st.caption("Impact of a pattern: its regions are painted in the CLIP mean colour and each image is re-encoded; "
           "impact = mean drop of p_fake (positive: the regions made the images look fake; negative: masking "
           "them raises p_fake), next to the same "
           f"drop for a random mask of the same area ({vp.N_RANDOM} draws). Excess = impact − random impact "
           f"ranks the patterns; flipped = predictions that cross 0.5. Selection patterns use each image's top "
           f"patches by fake-logit relevance ({method} maps).")
st.dataframe(vp.pattern_frame(patterns), hide_index=True, key=K.PAT_LIST)

cached = P.impacts_cached(b, patterns, method)
todo = [p for p, ok in zip(patterns, cached) if not ok]
if todo:
    st.markdown(f"**{len(todo)} of {len(patterns)} pattern{'s' if len(patterns) > 1 else ''} without impact yet** "
                f"({sum(len(p.image_ids) for p in todo):,} images to re-encode "
                f"{2 + vp.N_RANDOM} times each).")
if todo and st.button("Compute impact", key=K.PAT_IMPACT, type="primary", icon=":material/calculate:"):
    if not P.compute_impacts(b, todo, method):
        st.stop()
    st.rerun()

ready = [p for p, ok in zip(patterns, cached) if ok]
if not ready:
    st.stop()


try:
    ranked = D.pattern_ranking(path, stamp, tuple(p.name for p in ready), tuple(p.content_key() for p in ready),
                               method)
except AsapError as exc:
    show_error(exc)
    st.stop()
st.markdown("**Ranking** (by excess impact over the random mask)")
st.dataframe(vp.ranking_display(ranked), hide_index=True, key=K.PAT_RANK,
             column_config={c: st.column_config.NumberColumn(format="%+.3f")
                            for c in vp.SIGNED_TITLES})
st.altair_chart(vp.impact_chart(ranked), theme=None, width="content")

st.markdown("**One pattern**")
by_name = {p.name: p for p in ready}
name = st.selectbox("Pattern", ranked["name"].tolist(), key=K.W_PAT_PICK, help=GLOSSARY["pattern"])
pat = by_name[name]
res = P.impact(b, pat, method)  # cached: no encoder needed
st.markdown(as_text(vp.impact_line(res)))
if pat.note:
    st.caption(f"Note: {as_text(pat.note)}")
c1, c2 = st.columns([2, 3], gap="large")
with c1:
    st.altair_chart(vp.per_image_chart(res["table"], b.images), theme=None, width="content")
with c2:
    st.image(vp.contact_sheet_png(b, pat), caption=f"{as_text(pat.name)}: regions outlined, the rest dimmed"
             if pat.masks is not None else f"{as_text(pat.name)}: its images")
d1, d2 = st.columns([1, 1])
if d1.button("Send these images to the attention view", key=K.PAT_ATTN, icon=":material/visibility:"):
    ss[K.K_IMAGES] = list(pat.image_ids)
    st.switch_page(K.PAGE_FILES["attention"])
if d2.button(f"Delete pattern '{as_text(pat.name)}'", key=K.PAT_DELETE, icon=":material/delete:"):
    P.delete(b, pat.name)
    st.rerun()

st.markdown("**Export**")
st.caption("One zip: patterns.json (patterns with regions and impact), patterns.csv (one row per pattern), "
           "pattern_images.csv (one row per pattern and image) and a PNG contact sheet per pattern"
           + (" (without impact until every pattern has one)." if todo else "."))
if st.button("Prepare export", key=K.PAT_EXPORT, icon=":material/archive:"):
    try:
        with st.spinner("Writing the export ..."):
            ss[K.K_PAT_ZIP] = (str(b.path), vp.export_zip(b, patterns, with_impact=not todo, method=method))
    except AsapError as exc:
        show_error(exc)
zip_path, zip_bytes = ss.get(K.K_PAT_ZIP) or (None, None)
if zip_bytes and zip_path == str(b.path):
    st.download_button("Download patterns.zip", zip_bytes, file_name=f"{b.path.name}-patterns.zip",
                       mime="application/zip", key=K.PAT_DOWNLOAD, icon=":material/download:")
