"""Attention page: for each picked image, the fake-logit map and the 16 dimension maps as overlays,
dimensions ordered by their contribution z_i * w2_i to the prediction."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import checks as G
from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import work as W
from app_pages.glue.errors import guarded_fragment
from app_pages.glue.sidebar import page_start
from asap_core.views import attention as va
from asap_core.views import checks as vc
from asap_core.views.glossary import GLOSSARY
from asap_core.views.text import as_text, as_texts

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
names = D.dimension_names(b)

st.subheader("Attention view", help=GLOSSARY["relevance map"])
ids = list(ss[K.K_IMAGES])
if not ids:
    st.info("No image picked: drag a box over images in the Image view (or pick top images on the "
            "Dimensions page).")
    st.page_link(K.PAGE_FILES["images"], label="Go to the image view", icon=":material/grid_view:")
    st.stop()

c1, c2, c3 = st.columns([2, 2, 3])
ss.setdefault(K.W_METHOD, ss[K.K_METHOD])
method = c1.segmented_control("Method", va.RELEVANCE_METHODS, key=K.W_METHOD, wrap=True,
                              help="how the relevance maps are computed. " + GLOSSARY["relevance map"]
                              ) or ss[K.K_METHOD]
ss[K.K_METHOD] = method
alpha = c2.slider("Overlay opacity", 0.2, 0.9, 0.5, 0.05, key=K.W_ALPHA)
shown = ids[:va.MAX_ATTENTION_IMAGES]
c3.caption(f"{len(ids)} image{'s' if len(ids) > 1 else ''} picked"
           + (f"; showing the first {len(shown)}" if len(shown) < len(ids) else "")
           + ". Each tile: map over the image (red = high relevance), with the dimension's contribution "
             "z_i·w2_i to the fake logit; dimensions sorted by support for the prediction.")

maps = W.maps_for(b, shown, method)
if maps is None:
    st.stop()
rows = D.attention_tiles(path, stamp, tuple(shown), method, float(alpha), names)
targets = vc.attention_check_targets(rows)


def _checked_tiles() -> None:
    """The tiles and the check toggle: turning the checks on or off reruns this part only."""
    check = st.toggle("Check these maps: faithfulness to this model (deletion, occlusion) and the sanity check",
                      key=K.W_ATT_CHECKS, help=GLOSSARY["map checks"])
    checks = G.checks_for(b, shown, method, targets) if check else G.cached_checks_for(b, shown, method, targets)
    per_image, flagged = (checks[0].per_image, vc.flagged_targets(checks[1].summary)) if checks else (None, set())
    if checks:  # names inside are escaped by views.checks (as_text)
        with st.container(border=True):
            for line in vc.summary_lines(checks[0].summary, checks[1].summary, targets, names):
                st.markdown(line)
    for r in rows:
        with st.container(border=True):
            truth = r["label"] or "unlabelled"
            verdict = "" if r["label"] is None else (" ✓ right" if r["label"] == r["pred"] else " ✗ wrong")
            st.markdown(f"**{as_text(r['file'])}** · label {as_text(truth)} · predicted {as_text(r['pred'])}"
                        f"{verdict} · p_fake {r['p_fake']:.3f}", help=GLOSSARY["p_fake"])
            # JPEG bytes at the width shown (D.attention_tiles): sent as they are, rendered once for everyone
            st.image([t.image for t in r["tiles"]], caption=as_texts(vc.tile_captions(r, per_image, flagged)),
                     width=va.TILE_PX)



guarded_fragment(_checked_tiles)()
st.markdown("**Contributions to the fake logit** (z_i · w2_i per image)")
st.vega_lite_chart(spec=D.contribution_spec(path, stamp, tuple(shown), names), theme=None, width="stretch")
