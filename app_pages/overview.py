"""Overview page: the representation view (a pie glyph per cell), filters, grid size, cell selection."""
from __future__ import annotations

import math

import streamlit as st

from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import state as S
from app_pages.glue.errors import guarded_fragment
from app_pages.glue.sidebar import page_start
from app_pages.glue.widgets import next_or_clear
from asap_core.views import generators as vgen
from asap_core.views import overview as ov
from asap_core.views import state as vs
from asap_core.views.glossary import GLOSSARY
from asap_core.views.text import as_text

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)

st.subheader("Representation overview")
caption = st.empty()  # filled once the colouring is known

# ---- controls (widget keys are re-seeded from the plain state keys on every visit)
filters: ov.Filters = ss[K.K_FILTERS]
ss.setdefault(K.W_LABEL, filters.label)
ss.setdefault(K.W_OUTCOME, filters.outcome)
ss.setdefault(K.W_GENS, list(filters.generators))
gen_choices = D.generator_choices(path, stamp)
ss[K.W_GENS] = [g for g in ss[K.W_GENS] if g in gen_choices]  # picks from another bundle
gen_data = D.generator_data(path, stamp)  # (predictions, names) when the distiller has a generator head
# filters in one row that wraps rather than cuts a label; the map's own controls beside it, on the right
bar = st.container(horizontal=True, wrap=True, gap="medium", vertical_alignment="bottom")
label = bar.segmented_control("Label", ov.LABEL_CHOICES, key=K.W_LABEL, wrap=True) or "all"
outcome = bar.segmented_control("Prediction", ov.OUTCOME_CHOICES, key=K.W_OUTCOME, wrap=True,
                                help="correct / wrong: whether the detector's verdict matches the label") or "all"
if gen_data is not None:
    ss.setdefault(K.W_COLOR, ss.get(K.K_COLOR_BY, "label"))
    color_by = bar.segmented_control("Colour by", vgen.COLOR_BY, key=K.W_COLOR, wrap=True,
                                     help="predicted generator: the generator head's guess (blue: predicted real)")
    ss[K.K_COLOR_BY] = color_by = color_by or "label"
else:
    color_by = "label"
by_gen = color_by == "predicted generator" and gen_data is not None
caption.caption(ov.overview_caption(by_gen), help=GLOSSARY["overview pie"])


def _map_and_selection() -> None:
    """The map, its grid and generator controls and the selected cells' panel: a click on a pie, or a new grid
    or generator, reruns this part only (not the sidebar, the notices or the filters above)."""
    left, right = st.columns([5, 2], gap="medium")
    # the grid as `value` (the element's own default), not seeded into the widget's key: a front end that
    # mounts the slider from its default under load then still sends the link's grid, not the first option
    shown_grid = int(ss.get(K.W_GRID) or ss[K.K_GRID])
    grid = right.select_slider("Grid (cells per side)", options=ov.grid_choices(shown_grid), value=shown_grid,
                               key=K.W_GRID, help=GLOSSARY["grid"])
    gens = right.multiselect("Generator", gen_choices, key=K.W_GENS, placeholder="all generators")
    new_filters = ov.Filters(label=label, generators=tuple(sorted(gens)), outcome=outcome)
    if int(grid) != int(ss[K.K_GRID]):
        ss[K.K_GRID] = int(grid)
        ss[K.K_CELLS] = []  # cell ids mean other places on another grid
    ss[K.K_FILTERS] = new_filters
    grid = int(grid)

    cells = D.filtered_cells(path, stamp, grid, new_filters)
    if cells.empty:
        left.warning("No image passes these filters.")
        S.write_link("overview")
        return

    chart_key = K.overview_chart(grid, vs.short_hash(repr(new_filters) + ("gen" if by_gen else "")))
    if S.fresh_chart(chart_key):
        ss[K.chart_value(chart_key)] = tuple(c for c in ss[K.K_CELLS] if c in set(cells["cell"]))
    names = D.dimension_names(b)
    spec = D.overview_spec(path, stamp, grid, new_filters, ss.get(K.chart_value(chart_key), ()), by_gen, names)
    with left:
        event = st.vega_lite_chart(spec=spec, key=chart_key, on_select="rerun", selection_mode="cell",
                                   theme=None, width="stretch")
        st.image(vgen.generator_legend_svg(gen_data[1]) if gen_data is not None and by_gen else ov.legend_svg())
    before = list(ss[K.K_CELLS])
    ss[K.K_CELLS] = S.consume_event(chart_key, event, ss[K.K_CELLS], vs.cells_from_event)
    if list(ss[K.K_CELLS]) != before:
        ss[K.K_IMAGES] = []  # picks belong to the cells they were made in
    selected = [c for c in ss[K.K_CELLS] if c in set(cells["cell"])]

    with right:
        if selected:
            selection_panel(selected, grid, new_filters, chart_key, names)
        else:
            st.markdown("**No cell selected.** Click a pie on the map.")
        st.markdown("**Cells near the decision boundary** (mixed labels, low confidence)",
                    help=GLOSSARY["confidence"])
        for cell, text in D.boundary_list(path, stamp, grid, new_filters):
            # wrap: in a column Streamlit cuts a long button label ("confidence 0…") unless told to wrap it
            if st.button(f"cell {cell}: {text}", key=K.boundary_button(cell), type="tertiary", wrap=True):
                ss[K.K_CELLS], ss[K.K_IMAGES] = [cell], []
                ss.pop(chart_key, None)
                st.rerun()
    S.write_link("overview")  # a fragment's rerun does not reach the entry script, which mirrors the URL


def selection_panel(selected: list[int], grid: int, filters: ov.Filters, chart_key: str,
                    names: tuple[str, ...]) -> None:
    """What the selected cells hold: the way on, their counts, what pushes them and a few thumbnails."""
    facts = D.selection_facts(path, stamp, grid, filters, tuple(selected), names)
    s = facts.summary
    st.markdown(f"**Selected cell{'s' if len(selected) > 1 else ''}:** " + ", ".join(str(c) for c in selected))
    # the way on first (it must be visible at 1280x800), then metrics that wrap rather than cut their values
    next_or_clear("Open image grid", "images", ":material/grid_view:", K.K_CELLS, chart_key,
                  (K.OV_OPEN, K.OV_CLEAR), "Clear selection")
    row = st.container(horizontal=True, wrap=True, gap="medium")
    row.metric("images", f"{s['n']:,}", width="content")
    row.metric("accuracy", ov.percent(s["accuracy"]), width="content")
    row.metric("mean confidence", "n/a" if math.isnan(s["mean_conf"]) else f"{s['mean_conf']:.2f}",
               help=GLOSSARY["confidence"], width="content")
    st.caption(f"real: {s['n_real_ok']} right, {s['n_real_wrong']} wrong · fake: {s['n_fake_ok']} right, "
               f"{s['n_fake_wrong']} wrong" + (f" · {s['n_unlabelled']} unlabelled" if s["n_unlabelled"] else "")
               + (f" · dominant generator: {as_text(s['dominant_generator'])}" if s["dominant_generator"] else ""))
    if facts.driver is not None:
        st.caption(f"Pushes hardest: {as_text(facts.driver)}", help=GLOSSARY["dimension"])
    if gen_data is not None and by_gen:
        st.caption(as_text(vgen.attribution_caption(gen_data[0], list(facts.member_ids))))
    st.image(D.thumbs(b, list(facts.member_ids[:12]), 64), width=64)


guarded_fragment(_map_and_selection)()
