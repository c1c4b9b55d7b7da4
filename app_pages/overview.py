"""Overview page: the representation view (a pie glyph per cell), filters, grid size, cell selection."""
from __future__ import annotations

import math

import streamlit as st

from asap_core.views import generators as vgen
from asap_core.views import overview as ov
from asap_core.views import state as vs
from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import state as S
from app_pages.glue.sidebar import page_start
from app_pages.glue.widgets import next_or_clear

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)

st.subheader("Representation overview")
caption = st.empty()  # filled once the colouring is known

# ---- controls (widget keys are re-seeded from the plain state keys on every visit)
filters: ov.Filters = ss[K.K_FILTERS]
ss.setdefault("w_grid", int(ss[K.K_GRID]))
ss.setdefault("w_label", filters.label)
ss.setdefault("w_outcome", filters.outcome)
ss.setdefault("w_gens", list(filters.generators))
gen_choices = ov.generators(b.images)
ss["w_gens"] = [g for g in ss["w_gens"] if g in gen_choices]  # picks from another bundle
gen_data = D.generator_data(path, stamp)  # (predictions, names) when the distiller has a generator head
if gen_data is not None:
    ss.setdefault("w_color", ss.get(K.K_COLOR_BY, "label"))
    c1, c2, c3, c4, c5 = st.columns([1.2, 1.4, 2, 1.4, 1.8])
    color_by = c5.segmented_control("Colour by", vgen.COLOR_BY, key="w_color",
                                    help="predicted generator: the generator head's guess (blue: predicted real)")
    ss[K.K_COLOR_BY] = color_by = color_by or "label"
else:
    c1, c2, c3, c4 = st.columns([1.2, 1.4, 2, 1.4])
    color_by = "label"
grid = c1.select_slider("Grid (cells per side)", options=sorted(set(range(6, 61, 2)) | {int(ss["w_grid"])}),
                        key="w_grid")
label = c2.segmented_control("Label", ov.LABEL_CHOICES, key="w_label") or "all"
gens = c3.multiselect("Generator", gen_choices, key="w_gens", placeholder="all generators")
outcome = c4.segmented_control("Prediction", ov.OUTCOME_CHOICES, key="w_outcome") or "all"
new_filters = ov.Filters(label=label, generators=tuple(sorted(gens)), outcome=outcome)
if int(grid) != int(ss[K.K_GRID]):
    ss[K.K_GRID] = int(grid)
    ss[K.K_CELLS] = []  # cell ids mean other places on another grid
ss[K.K_FILTERS] = new_filters
grid = int(grid)

cells = D.filtered_cells(path, stamp, grid, new_filters)
if cells.empty:
    st.warning("No image passes these filters.")
    st.stop()

by_gen = color_by == "predicted generator"
caption.caption("One pie per cell of similar images (position: 2-D map of the 16 dimensions). Area = number of "
                "images; " + ("slices = the generator head's guess for images the detector calls fake, blue = "
                              "predicted real; " if by_gen else "blue = real, orange = fake; solid = predicted "
                              "right, pale = predicted wrong; ")
                + "opacity = mean confidence. Click a cell to select it, shift-click to add, double-click to clear.")
left, right = st.columns([3, 2], gap="large")
chart_key = f"ov_{grid}_{vs.short_hash(repr(new_filters) + ('gen' if by_gen else ''))}"
if S.fresh_chart(chart_key):
    ss[f"_value_{chart_key}"] = tuple(c for c in ss[K.K_CELLS] if c in set(cells["cell"]))
spec = D.overview_spec(path, stamp, grid, new_filters, ss.get(f"_value_{chart_key}", ()), by_gen)
with left:
    event = st.vega_lite_chart(spec=spec, key=chart_key, on_select="rerun", selection_mode="cell",
                               theme=None, width="content")
    st.image(vgen.generator_legend_svg(gen_data[1]) if by_gen else ov.legend_svg())
ss[K.K_CELLS] = S.consume_event(chart_key, event, ss[K.K_CELLS], vs.cells_from_event)
selected = [c for c in ss[K.K_CELLS] if c in set(cells["cell"])]

with right:
    if selected:
        s = ov.selected_summary(cells, selected)
        st.markdown(f"**Selected cell{'s' if len(selected) > 1 else ''}:** "
                    + ", ".join(str(c) for c in selected))
        m1, m2, m3 = st.columns(3)
        m1.metric("images", f"{s['n']:,}")
        m2.metric("accuracy", "n/a" if math.isnan(s["accuracy"]) else f"{s['accuracy']:.0%}")
        m3.metric("mean confidence", "n/a" if math.isnan(s["mean_conf"]) else f"{s['mean_conf']:.2f}")
        st.caption(f"real: {s['n_real_ok']} right, {s['n_real_wrong']} wrong · fake: {s['n_fake_ok']} right, "
                   f"{s['n_fake_wrong']} wrong" + (f" · {s['n_unlabelled']} unlabelled" if s["n_unlabelled"] else "")
                   + (f" · dominant generator: {s['dominant_generator']}" if s["dominant_generator"] else ""))
        members = ov.selected_members(D.gridded(path, stamp, grid)[0], selected, new_filters)
        if by_gen:
            st.caption(vgen.attribution_caption(gen_data[0], members["image_id"].tolist()))
        st.image(D.thumbs(b, members["image_id"].head(12).tolist()), width=64)
        next_or_clear("Open image grid", "images", ":material/grid_view:", K.K_CELLS, chart_key,
                      ("ov_open", "ov_clear"), "Clear selection")
    else:
        st.markdown("**No cell selected.** Click a pie on the map.")
    st.markdown("**Cells near the decision boundary** (mixed labels, low confidence)")
    for r in ov.boundary_cells(cells, k=5).itertuples():
        label_txt = (f"cell {r.cell}: {r.n} images, {r.share_fake:.0%} fake, accuracy {r.accuracy:.0%}, "
                     f"confidence {r.mean_conf:.2f}")
        if st.button(label_txt, key=f"ov_bnd_{r.cell}", type="tertiary"):
            ss[K.K_CELLS] = [int(r.cell)]
            ss.pop(chart_key, None)
            st.rerun()
