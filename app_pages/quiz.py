"""Quiz page ("Real or AI?"): a teacher makes a quiz and shares its link; a student answers real / AI one image
at a time, sees the truth, the model's p_fake, its fake-logit map and the two dimensions that pushed hardest,
and ends with their score next to the model's. Answers live only in this session (nothing is written)."""
from __future__ import annotations

import streamlit as st

from asap_core.analyses.patterns import PatternStore
from asap_core.errors import AsapError
from asap_core.views import overview as ov
from asap_core.views import quiz as vq
from asap_core.views.text import as_text, as_texts
from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue.errors import show_error
from app_pages.glue.sidebar import page_start

PLAY = "quiz_play"  # {"key", "ids", "answers", "sure", "revealed"}: this session's game, never stored
PICTURE_PX = 448
TILE_PX = 224
THUMB_PX = 96
END_THUMB_PX = 128

b = page_start()
ss = st.session_state
path, stamp = D.ref(b)


def saved_patterns() -> dict[str, list[str]]:
    return {p.name: p.image_ids for p in PatternStore(b).list()}


def prefill(current: vq.QuizSpec | None, cells: list[int], names: list[str], gens: list[str]) -> None:
    """The teacher's widgets start at the current quiz (or the defaults; the cell picked on the overview)."""
    picked = ss.get(K.K_CELLS) if ss.get(K.K_GRID) == b.grid else None
    for k, v in vq.widget_defaults(current, cells, names, gens, picked[0] if picked else None).items():
        ss.setdefault(f"quiz_w_{k}", v)


def source_value(source: str, col, cells: list[int], names: list[str], gens: list[str]) -> str | None:
    """The widgets of one source -> the spec's value (None when there is nothing to pick)."""
    if source == "cell":
        return str(col.selectbox("Cell", cells, key="quiz_w_cell"))
    if source == "pattern":
        if not names:
            col.caption("No pattern saved yet (save one on the Images page).")
            return None
        return col.selectbox("Pattern", names, key="quiz_w_pattern")
    if source == "filter":
        c1, c2, c3 = col.columns(3)
        label = c1.selectbox("Truth", ["all", "real", "fake"], format_func=lambda x: vq.SAY.get(x, x), key="quiz_w_lab")
        outcome = c2.selectbox("The model was", list(ov.OUTCOME_CHOICES), key="quiz_w_out")
        gen = c3.selectbox("Generator", ["any", *gens], key="quiz_w_gen")
        return vq.filter_value(label, outcome, None if gen == "any" else gen)
    return ""


def teacher_panel(current: vq.QuizSpec | None) -> None:
    """Make a quiz: which images, how many, which seed; the link to share and a Start button."""
    cells, names, gens = vq.cell_choices(b.images), list(saved_patterns()), ov.generators(b.images)
    prefill(current, cells, names, gens)
    with st.expander("Make a quiz", expanded=current is None, icon=":material/school:"):
        c1, c2, c3 = st.columns([4, 1, 1])
        source = c1.segmented_control("Images from", list(vq.SOURCES), format_func=vq.SOURCES.get,
                                      key="quiz_w_source") or "all"
        n = int(c2.number_input("Images", 1, vq.MAX_QUIZ, key="quiz_w_n"))
        seed = int(c3.number_input("Seed", 0, vq.MAX_SEED, key="quiz_w_seed"))
        value = source_value(source, c1, cells, names, gens)
        if value is None:
            return
        spec = vq.QuizSpec(source, value, n, seed)
        available = len(vq.candidates(b.images, spec, saved_patterns()))
        st.caption(f"{as_text(vq.describe(spec))} · {available} labelled image{'s' if available != 1 else ''} to draw from. "
                   "Everyone who opens the link gets the same images in the same order; nothing about a player "
                   "is stored.")
        st.code(vq.quiz_link(st.context.url, st.query_params.get("bundle"), spec), language=None, wrap_lines=True)
        if st.button("Start", key="quiz_start", type="primary", icon=":material/play_arrow:", disabled=not available):
            ss[K.K_QUIZ] = spec.to_param()
            ss.pop(PLAY, None)
            st.rerun()


def new_play(spec: vq.QuizSpec) -> dict:
    ids = vq.quiz_images(b.images, spec, saved_patterns() if spec.source == "pattern" else None)
    return {"key": (str(b.path), spec.to_param()), "ids": ids, "answers": [], "sure": [], "revealed": False}


def answer(play: dict, said: str, sure: str | None) -> None:
    play["answers"].append(said)
    play["sure"].append(vq.SURENESS.get(sure) if sure else None)
    play["revealed"] = True
    st.rerun()


def show_picture(image_id: str, where) -> None:
    try:
        where.image(D.quiz_picture(path, stamp, image_id, PICTURE_PX), width=PICTURE_PX)
    except AsapError as exc:
        show_error(exc)
        st.stop()


def question(play: dict) -> None:
    """One image, the buttons Real / AI and the optional "how sure"."""
    i, n = len(play["answers"]), len(play["ids"])
    st.progress(i / n, text=f"Image {i + 1} of {n}")
    left, right = st.columns([3, 2])
    show_picture(play["ids"][i], left)
    right.markdown("#### Real photo, or made by AI?")
    sure = right.segmented_control("How sure are you? (optional)", list(vq.SURENESS), key=f"quiz_sure_{i}")
    c1, c2 = right.columns(2)
    if c1.button("Real", key="quiz_real", icon=":material/photo_camera:", width="stretch"):
        answer(play, "real", sure)
    if c2.button("AI", key="quiz_ai", icon=":material/smart_toy:", width="stretch"):
        answer(play, "fake", sure)


def reveal_dimensions(rv: vq.Reveal, where) -> None:
    where.markdown("**The two dimensions that pushed hardest**, each with the three images where it pushes most:")
    for d, c, ex in zip(rv.dims, rv.contributions, rv.exemplars):
        where.caption(as_text(vq.push_text(d, c, D.dimension_names(b))))
        where.image(D.thumbs(b, list(ex)), caption=as_texts(vq.captions(b.images, ex, with_p=False)), width=THUMB_PX)


def reveal_panel(play: dict) -> None:
    """The truth, the model's p_fake and map, its two strongest dimensions and one sentence; Next."""
    i, n = len(play["answers"]), len(play["ids"])
    image_id, said = play["ids"][i - 1], play["answers"][-1]
    rv = vq.reveal(b.images, b.z, D.head_weights(path, stamp), image_id, D.dimension_names(b))
    st.progress(i / n, text=f"Image {i} of {n}: the answer")
    left, right = st.columns([3, 2])
    maps = D.maps_for(b, [image_id], ss[K.K_METHOD])
    if maps is None:
        show_picture(image_id, left)
    else:
        tiles = vq.map_tiles(D.quiz_picture(path, stamp, image_id, PICTURE_PX), maps[0], rv.p_fake, TILE_PX)
        left.image([t.image for t in tiles], caption=["the image", "where the model saw “AI” (red = most)"],
                   width=TILE_PX)
    you_right = said == rv.truth
    right.markdown(f"#### It is {'AI-made' if rv.truth == 'fake' else 'a real photo'}.")
    right.markdown(f"You said **{vq.SAY[said]}**: {'right ✓' if you_right else 'wrong ✗'}")
    right.metric("The model's p_fake", f"{rv.p_fake:.2f}", help="its probability that the image is AI-made")
    right.info(as_text(rv.sentence))
    last = i == n
    if right.button("See my score" if last else "Next image", key="quiz_next", type="primary",
                    icon=":material/flag:" if last else ":material/arrow_forward:"):
        play["revealed"] = False
        st.rerun()
    reveal_dimensions(rv, left)


def fooled(title: str, ids: list[str]) -> None:
    st.markdown(f"**{title}** ({len(ids)})")
    if ids:
        st.image(D.thumbs(b, ids), caption=as_texts(vq.captions(b.images, ids)), width=END_THUMB_PX)
    else:
        st.caption("none")


def end_screen(play: dict) -> None:
    """Both scores on the same images, and the images that fooled the player, the model, or both."""
    rows = vq.play_order(b.images, play["ids"])
    s = vq.score(play["answers"], rows["label"].tolist(), rows["pred"].tolist(), play["ids"], play["sure"])
    st.markdown("#### Your score")
    c1, c2, c3 = st.columns([1, 1, 3])
    c1.metric("You", f"{s.student} / {s.n}")
    c2.metric("The model", f"{s.model} / {s.n}")
    c3.markdown(vq.score_text(s))
    c3.caption(vq.PUBLIC_RATE_TEXT)
    if s.sure_right is not None or s.sure_wrong is not None:
        fmt = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
        c3.caption(f"How sure you said you were: {fmt(s.sure_right)} when right, {fmt(s.sure_wrong)} when wrong.")
    fooled("Fooled you (the model got them right)", s.fooled_student)
    fooled("Fooled the model (you got them right)", s.fooled_model)
    fooled("Fooled both of you", s.fooled_both)
    if st.button("Play again", key="quiz_again", icon=":material/replay:"):
        ss.pop(PLAY, None)
        st.rerun()


st.subheader("Real or AI?")
spec = vq.QuizSpec.from_param(ss.get(K.K_QUIZ))
teacher_panel(spec)
if spec is None:
    st.info("Make a quiz above and share its link, or open a quiz link you were given.")
    st.stop()
if ss.get(PLAY, {}).get("key") != (str(b.path), spec.to_param()):
    ss[PLAY] = new_play(spec)
play = ss[PLAY]
st.caption(f"Quiz: {as_text(vq.describe(spec))}.")
if not play["ids"]:
    st.warning("This quiz has no labelled images in this bundle (a pattern that is not saved here, an empty cell "
               "or filter). Make another one above.")
elif play["revealed"]:
    reveal_panel(play)
elif len(play["answers"]) < len(play["ids"]):
    question(play)
else:
    end_screen(play)
