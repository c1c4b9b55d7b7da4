"""Overview page: the representation view (a pie glyph per cell), filters, grid size, cell selection."""
from __future__ import annotations

import math

import streamlit as st

from asap_core.views import generators as vgen
from asap_core.views import overview as ov
from asap_core.views import state as vs
from app_pages import common as C

b = C.page_start()
ss = st.session_state
path, stamp = C.ref(b)

st.subheader("Representation overview")
caption = st.empty()  # filled once the colouring is known

# ---- controls (widget keys are re-seeded from the plain state keys on every visit)
filters: ov.Filters = ss[C.K_FILTERS]
ss.setdefault("w_grid", int(ss[C.K_GRID]))
ss.setdefault("w_label", filters.label)
ss.setdefault("w_outcome", filters.outcome)
ss.setdefault("w_gens", list(filters.generators))
gen_choices = ov.generators(b.images)
ss["w_gens"] = [g for g in ss["w_gens"] if g in gen_choices]  # picks from another bundle
gen_data = C.generator_data(path, stamp)  # (predictions, names) when the distiller has a generator head
if gen_data is not None:
    ss.setdefault("w_color", ss.get(C.K_COLOR_BY, "label"))
    c1, c2, c3, c4, c5 = st.columns([1.2, 1.4, 2, 1.4, 1.8])
    color_by = c5.segmented_control("Colour by", vgen.COLOR_BY, key="w_color",
                                    help="predicted generator: the generator head's guess (blue: predicted real)")
    ss[C.K_COLOR_BY] = color_by = color_by or "label"
else:
    c1, c2, c3, c4 = st.columns([1.2, 1.4, 2, 1.4])
    color_by = "label"
grid = c1.select_slider("Grid (cells per side)", options=sorted(set(range(6, 61, 2)) | {int(ss["w_grid"])}),
                        key="w_grid")
label = c2.segmented_control("Label", ov.LABEL_CHOICES, key="w_label") or "all"
gens = c3.multiselect("Generator", gen_choices, key="w_gens", placeholder="all generators")
outcome = c4.segmented_control("Prediction", ov.OUTCOME_CHOICES, key="w_outcome") or "all"
new_filters = ov.Filters(label=label, generators=tuple(sorted(gens)), outcome=outcome)
if int(grid) != int(ss[C.K_GRID]):
    ss[C.K_GRID] = int(grid)
    ss[C.K_CELLS] = []  # cell ids mean other places on another grid
ss[C.K_FILTERS] = new_filters
grid = int(grid)

cells = C.filtered_cells(path, stamp, grid, new_filters)
if cells.empty:
    st.warning("No image passes these filters.")
    st.stop()



@st.cache_data(max_entries=32, show_spinner=False)
def generator_spec(path: str, stamp: int, grid: int, filters: ov.Filters, value: tuple[int, ...]) -> dict:
    """Vega-Lite spec of the overview with slices coloured by predicted generator."""
    images, _ = C.gridded(path, stamp, grid)
    pred, names = C.generator_data(path, stamp)
    counts = vgen.attribution_cells(images, pred.set_index("image_id")["attribution"], grid, filters)
    slices = vgen.generator_slices(ov.filtered_cells(images, grid, filters), counts, names)
    return vgen.generator_overview_chart(slices, grid, names, list(value)).to_dict()


by_gen = color_by == "predicted generator"
caption.caption("One pie per cell of similar images (position: 2-D map of the 16 dimensions). Area = number of "
                "images; " + ("slices = the generator head's guess for images the detector calls fake, blue = "
                              "predicted real; " if by_gen else "blue = real, orange = fake; solid = predicted "
                              "right, pale = predicted wrong; ")
                + "opacity = mean confidence. Click a cell to select it, shift-click to add, double-click to clear.")
left, right = st.columns([3, 2], gap="large")
chart_key = f"ov_{grid}_{vs.short_hash(repr(new_filters) + ('gen' if by_gen else ''))}"
if C.fresh_chart(chart_key):
    ss[f"_value_{chart_key}"] = tuple(c for c in ss[C.K_CELLS] if c in set(cells["cell"]))
spec = (generator_spec if by_gen else C.overview_spec)(path, stamp, grid, new_filters,
                                                       ss.get(f"_value_{chart_key}", ()))
with left:
    event = st.vega_lite_chart(spec=spec, key=chart_key, on_select="rerun", selection_mode="cell",
                               theme=None, width="content")
    st.image(vgen.generator_legend_svg(gen_data[1]) if by_gen else ov.legend_svg())
ss[C.K_CELLS] = C.consume_event(chart_key, event, ss[C.K_CELLS], vs.cells_from_event)
selected = [c for c in ss[C.K_CELLS] if c in set(cells["cell"])]

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
        images, _ = C.gridded(path, stamp, grid)
        members = images[images["cell"].isin(selected)]
        if new_filters.active():
            members = members[ov.filter_mask(members, new_filters)]
        if by_gen:
            att = gen_data[0].set_index("image_id")["attribution"].reindex(members["image_id"]).value_counts()
            st.caption("predicted: " + " · ".join(f"{k} {v}" for k, v in att.items()))
        preview = members.head(12)
        st.image(C.thumbs(b, preview["image_id"].tolist()), width=64)
        b1, b2 = st.columns(2)
        if b1.button("Open image grid", type="primary", key="ov_open", icon=":material/grid_view:"):
            st.switch_page(C.PAGE_FILES["images"])
        if b2.button("Clear selection", key="ov_clear"):
            ss[C.K_CELLS] = []
            ss.pop(chart_key, None)
            st.rerun()
    else:
        st.markdown("**No cell selected.** Click a pie on the map.")
    st.markdown("**Cells near the decision boundary** (mixed labels, low confidence)")
    bnd = ov.boundary_cells(cells, k=5)
    for r in bnd.itertuples():
        label_txt = (f"cell {r.cell}: {r.n} images, {r.share_fake:.0%} fake, accuracy {r.accuracy:.0%}, "
                     f"confidence {r.mean_conf:.2f}")
        if st.button(label_txt, key=f"ov_bnd_{r.cell}", type="tertiary"):
            ss[C.K_CELLS] = [int(r.cell)]
            ss.pop(chart_key, None)
            st.rerun()
