"""Generators page (seed 003): which generator made a fake, as predicted by the distiller's generator head;
the confusion matrix (all fakes, or only those the distiller held out) and per-generator recall / precision."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue.sidebar import page_start
from asap_core.views import generators as vgen
from asap_core.views import grid as vg
from asap_core.views.glossary import GLOSSARY

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)

st.subheader("Generator attribution")
gen_data = D.generator_data(path, stamp)
if gen_data is None:
    st.info("This bundle's distiller has no generator head: the folder did not name at least two generators. "
            "Analyse a folder with one subfolder per generator (fake/<generator>/...) to get one.")
    st.stop()
pred, names = gen_data

c1, c2, c3 = st.columns([2, 1.4, 1.6])
scope = c1.segmented_control("Fakes counted", ["all", "held out"], default="all", key=K.W_GEN_SCOPE, wrap=True,
                             help="held out: the distiller's validation fakes, which its generator head never "
                                  "trained on (an honest estimate); all: includes its training fakes") or "all"
normalize = c2.toggle("Row shares", value=True, key=K.W_GEN_NORM, help="colour = share of the true generator's images")
with_real = c3.toggle("Add real images", value=False, key=K.W_GEN_REAL,
                      help="a 'real' row and column: real images, and fakes the detector calls real")
cm, fake_cm, val_ok = D.confusion(path, stamp, scope == "held out", with_real)
if scope == "held out" and not val_ok:
    st.warning("The distiller's validation split cannot be recovered for this bundle (distiller trained "
               "elsewhere, or an older bundle): counting all fakes instead.")
    scope = "all"

st.markdown(vgen.accuracy_line(fake_cm, len(names), "held-out" if scope == "held out" else "labelled"))
stored = b.metrics.get("generator_val_accuracy")
if stored is not None:
    st.caption(f"Validation accuracy stored at training time: {float(stored):.1%}. "
               + ("Counting all fakes includes the distiller's training fakes (in-sample)." if scope == "all" else ""))

left, right = st.columns([2, 3], gap="large")
with left:
    st.altair_chart(vgen.confusion_chart(cm, normalize=normalize), theme=None, width="content")
with right:
    st.markdown("**Per generator**")
    st.dataframe(vgen.per_generator_display(vgen.per_generator_table(fake_cm)), hide_index=True,
                 column_config={"recall": st.column_config.NumberColumn(format="%.2f"),
                                "precision": st.column_config.NumberColumn(format="%.2f")})
st.markdown("**Confusion matrix** (rows: true generator, columns: predicted)")
st.dataframe(cm, key=K.GEN_CM)

shown = pred[pred["label"] == "fake"].sort_values("probability", ascending=False)
with st.expander("Predictions per image"):
    st.dataframe(shown.assign(file=vg.image_names(b.images, shown["image_id"]), image_id=shown["image_id"].str[:10])[
        ["file", "image_id", "generator", "predicted_generator", "probability", "p_fake", "pred", "held_out"]],
        hide_index=True, column_config={"p_fake": st.column_config.NumberColumn(help=GLOSSARY["p_fake"])})
if st.button("Colour the overview by predicted generator", key=K.GEN_TO_OVERVIEW, icon=":material/bubble_chart:"):
    ss[K.K_COLOR_BY] = "predicted generator"
    ss.pop(K.W_COLOR, None)
    st.switch_page(K.PAGE_FILES["overview"])
