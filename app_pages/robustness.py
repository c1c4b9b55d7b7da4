"""Robustness page: launder a set of images (resize by s, then JPEG at quality q), rerun the detector, and see
how p_fake and the relevance maps move (CLIP-based detectors are reported to hold up well; check yours)."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import work as W
from app_pages.glue.sidebar import page_start
from asap_core.views import robustness as vr
from asap_core.views import state as vs
from asap_core.views.glossary import GLOSSARY
from asap_core.views.text import as_texts

MAX_KEPT = 8  # laundering tables kept in this session

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
method = ss[K.K_METHOD]
grid = int(ss[K.K_GRID])

st.subheader("Robustness to re-saving", help="Resizing an image and saving it again as JPEG (\"laundering\") "
             "wipes out fine traces; this page shows how the detector's score moves when that is done.")
st.caption("Each image is resized by s (bicubic), then re-encoded as JPEG at quality q, and the detector runs "
           "again. The images: those picked on the Images page, else the selected cells' images, else a "
           "balanced random sample.")

c1, c2, c3, c4 = st.columns([2, 2, 1.6, 1.6])
q = c1.slider("JPEG quality q", 10, 100, 75, 5, key=K.W_ROB_Q)
s = c2.slider("Resize factor s", 0.25, 1.0, 0.5, 0.05, key=K.W_ROB_S)
each = c3.toggle("Each step alone too", value=True, key=K.W_ROB_EACH,
                 help="also JPEG only (no resize) and resize only (no JPEG): which step moves p_fake")
with_maps = c4.toggle("Compare maps", value=False, key=K.W_ROB_MAPS,
                      help="also the correlation of the fake-logit relevance map before / after (slower). "
                           + GLOSSARY["relevance map"])
images, _ = D.gridded(path, stamp, grid)
n_sample = 16
if not ss[K.K_IMAGES] and not ss[K.K_CELLS]:
    n_sample = st.columns([2, 3])[0].slider("Sample size", 4, vr.MAX_IMAGES, 16, 4, key=K.W_ROB_N)
ids, source = vr.choose_images(images, ss[K.K_IMAGES], ss[K.K_CELLS], n_sample)
settings = vr.settings_for(q, s, each)
st.caption(f"Images: {source} · settings: " + "; ".join(vr.setting_label(*st_) for st_ in settings))

params = (str(b.path), tuple(ids), tuple(settings), bool(with_maps), method)
done: dict = ss.setdefault(K.K_ROB_TABLES, {})  # tables run in this session (also cached in the bundle)
ran = params in done
if st.button("Re-encode and predict", key=K.ROB_RUN, type="primary", icon=":material/play_arrow:") and not ran:
    table = W.laundering_run(b, ids, settings, with_maps, method)
    if table is None:
        st.stop()
    vs.keep_recent(done, params, table, MAX_KEPT)
    ran = True
if not ran:
    st.info("Set q and s, then press “Re-encode and predict”.")
    st.stop()

table = done[params]
summary = vr.summary_frame(table)
main = summary.iloc[0]
m1, m2, m3, m4 = st.columns(4)
m1.metric("mean Δ p_fake", f"{main['mean_delta']:+.3f}",
          help=f"{vr.setting_label(main['quality'], main['scale'])}. {GLOSSARY['p_fake']}")
m2.metric("flipped", f"{int(main['n_flipped'])} / {int(main['n'])}")
acc, acc0 = main["accuracy"], main["accuracy_original"]
m3.metric("accuracy", "n/a" if acc != acc else f"{acc:.0%}",
          delta=None if acc != acc or acc0 != acc0 else f"{acc - acc0:+.0%}")
m4.metric("accuracy before", "n/a" if acc0 != acc0 else f"{acc0:.0%}")

st.altair_chart(vr.shift_chart(table, images), theme=None, width="content")
st.markdown("**Per setting**")
st.dataframe(summary, hide_index=True, key=K.ROB_SUMMARY)
st.markdown(f"**Maps before and after** ({vr.setting_label(q, s)})")
pick = st.selectbox("Image", ids, key=K.W_ROB_IMG, format_func=vr.image_label(images, table))
view = W.laundered_for(b, pick, q, s, method)  # None: the reason is shown, the table still shows
if view is not None:
    tiles, captions = vr.view_tiles(view)
    st.image(tiles, caption=as_texts(captions), width=160)

st.markdown(f"**Per image and setting** ({len(table)} rows)")
st.dataframe(vr.display_table(table, images), hide_index=True, key=K.ROB_TABLE,
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in ("p_fake_original", "p_fake", "delta", "map_corr")})
