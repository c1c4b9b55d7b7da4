"""Dimensions page (ASAP): per dimension the real vs fake distribution, classifier weight, single-dimension
AUC; for one dimension its highest and lowest images, their mean relevance map and concept crops, the nearest
words of an editable vocabulary, and its name (given here locally; read-only in hosted mode)."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import budget
from app_pages.glue import checks as G
from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import work as W
from app_pages.glue.errors import AsapError, show_error, visible
from app_pages.glue.sidebar import page_start
from asap_core.views import checks as vc
from asap_core.views import dimensions as vd
from asap_core.views import state as vs
from asap_core.views.dimensions import dimension_label
from asap_core.views.glossary import GLOSSARY
from asap_core.views.text import as_text, as_texts

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)
method = ss[K.K_METHOD]
names = D.dimension_names(b)


def naming_panel(dim: int, where) -> None:
    """The dimension's name: a text input and Save locally; in hosted mode only shown (the operator names)."""
    try:
        _ = b.dimension_names  # a names file broken since the bundle opened: say so (names read as "")
    except AsapError as exc:
        show_error(exc, where)
    current = names[dim]
    if budget.hosted():
        where.caption(f"Name: **{as_text(current)}**" if current else "This dimension has no name yet.")
        return
    c1, c2 = where.columns([4, 1], vertical_alignment="bottom")
    text = c1.text_input("Name this dimension", value=current, key=K.dimension_name_input(dim),
                         max_chars=vd.MAX_DIMENSION_NAME, placeholder="e.g. smooth skin",
                         help="Shown wherever this dimension appears (captions, tooltips, the quiz, exports), "
                              "after its index. Empty + Save removes the name.")
    if c2.button("Save name", key=K.W_DIM_SAVE, icon=":material/label:"):
        try:
            b.set_dimension_name(dim, text)
        except AsapError as exc:
            show_error(exc, where)
            return
        st.rerun()


def image_rows(dim: int, k: int) -> tuple[list[str], list[str]]:
    """The ``k`` highest and ``k`` lowest images of ``dim``, each row with its z values; returns their ids."""
    rows = []
    for title, highest in (("Highest", True), ("Lowest", False)):
        top = vd.top_images(b.images, dim, k, highest)
        st.caption(f"{title} {as_text(dimension_label(dim, names))}")
        st.image(D.thumbs(b, top["image_id"].tolist(), 84), caption=[f"z{dim} = {v:+.3f}" for v in top[f"z{dim}"]],
                 width=84)
        rows.append(top["image_id"].tolist())
    return rows[0], rows[1]


def nearest_words(dim: int) -> None:
    """The vocabulary's words nearest each end of ``dim`` (text embeddings through the same projection and
    distiller as the images), with the vocabulary to edit."""
    problem = D.text_tower_problem(D.encoder_model(b))
    if problem:
        st.caption(f"Nearest words: not available for this bundle's CLIP ({as_text(visible(problem))}). A full CLIP "
                   "checkpoint with its tokenizer (e.g. openai/clip-vit-base-patch32) ranks words.")
        return
    with st.expander("Nearest words", icon=":material/translate:"):
        text = st.text_area("Vocabulary (one word or phrase per line)", D.vocabulary_text(), height=160,
                            key=K.W_VOCAB)
        words = D.vocabulary_words(text)
        if not words or not st.toggle("Rank the vocabulary", key=K.W_DIM_WORDS):
            return
        scores = W.word_scores_for(b, words)
        if scores is None:
            return
        high, low = scores.ends(dim)
        c1, c2 = st.columns(2)
        c1.markdown("**High end:** " + ", ".join(f"{as_text(w)} ({z:+.2f})" for w, z in high))
        c2.markdown("**Low end:** " + ", ".join(f"{as_text(w)} ({z:+.2f})" for w, z in low))
        st.caption("Words are embedded by CLIP's text tower and mapped like images; compare them with each other, "
                   "not with the images' values.")


def trust_panel(dim: int, ids: list[str]) -> None:
    """How far to trust ``dim``'s maps: checked here on the first of ``ids`` (on request, cached), and the
    figures ``analyze --faithfulness N`` stored for every dimension."""
    st.markdown("**Can you trust this dimension's maps?**", help=GLOSSARY["map checks"])
    sample, targets = ids[:vc.CHECK_IMAGES], vc.check_targets_for(dim)
    found = G.cached_checks_for(b, sample, method, targets)
    if found is None and st.toggle(f"Check the maps of {as_text(dimension_label(dim, names))} on {len(sample)} of "
                                   "these images (deletion against random, occlusion, sanity check)",
                                   key=K.W_DIM_CHECKS):
        found = G.checks_for(b, sample, method, targets)
    stored = G.stored_checks(path, stamp)
    if found is not None:
        for line in vc.trust_lines(dim, found[0].summary, found[1].summary, names):
            st.markdown(line)
        c1, c2 = st.columns(2)
        c1.altair_chart(vc.curves_chart(found[0].curves, dim, names, width=360), theme=None, width="content")
        c2.altair_chart(vc.cascade_chart(found[1].cascade, dim, names, width=360), theme=None, width="content")
    elif stored is not None:
        for line in vc.trust_lines(dim, *stored, names):
            st.markdown(line + " *(checked when the bundle was analysed)*")
    if stored is not None:
        with st.expander("Every dimension, checked when the bundle was analysed"):
            st.dataframe(vc.checks_table(*stored, names), hide_index=True)


st.subheader("Dimension view", help=GLOSSARY["dimension"])
table, dist = D.dimension_data(path, stamp, names)
st.caption("Each of the 16 dimensions: distribution over real (blue) and fake (orange) images, the "
           "classifier weight w2 and the AUC of the dimension alone (0.5 = no signal; below 0.5: higher "
           "values mean real).")
order = vd.dimension_order(table)
titles = vd.panel_titles(table, names)
st.altair_chart(vd.weight_chart(table), theme=None)
st.altair_chart(vd.distribution_chart(dist, table, order=order, names=names), theme=None)

st.markdown("**One dimension in detail**")
c1, c2, c3 = st.columns([2, 2, 2])
dim_key = K.dimension_picker(vs.short_hash(repr(names)))
if ss.get(K.K_DIM) in order:
    ss.setdefault(dim_key, ss[K.K_DIM])  # a link's or an earlier visit's dimension
picked = c1.selectbox("Dimension", order, format_func=lambda d: titles.get(d, str(d)), key=dim_key,
                      help=GLOSSARY["dimension"])
dim = order[0] if picked is None else int(picked)  # a select box with options always holds one
ss[K.K_DIM] = dim
k = c2.slider("Images per end", 4, 24, 8, key=K.W_TOPK)
highest = c3.segmented_control("Maps and crops of", ["highest", "lowest"], default="highest", key=K.W_DIR,
                                wrap=True) != "lowest"
naming_panel(dim, st)
high_ids, low_ids = image_rows(dim, k)
ids = high_ids if highest else low_ids
nearest_words(dim)

col_a, col_b = st.columns([1, 1])
if col_a.button(f"Send the {'highest' if highest else 'lowest'} images to the attention view", key=K.DIM_SEND,
                icon=":material/visibility:"):
    ss[K.K_IMAGES] = ids
    st.switch_page(K.PAGE_FILES["attention"])
trust_panel(dim, ids)
n_missing = D.n_missing_maps(b, ids, method)
if n_missing and not col_b.toggle(f"Compute mean {method} map and concept crops ({n_missing} images need maps)",
                                  key=K.W_DIM_MAPS, help=GLOSSARY["relevance map"]):
    st.stop()
maps = W.maps_for(b, ids, method)
if maps is None:
    st.stop()
tiles, captions, note = vd.mean_map_tiles(maps, dim, b.thumbnails(ids[:1])[0], names=names)
st.image(tiles, caption=as_texts(captions), width=160)
st.caption(as_text(note))
st.caption("Concept crops: each image cut to the quarter of its patches that "
           f"{as_text(dimension_label(dim, names))}'s map ranks highest.")
st.image(D.dimension_crops(b, ids, maps, dim), width=84)
