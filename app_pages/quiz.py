"""Quiz page ("Real or AI?"): a teacher makes a quiz, shares its link and may start a class round; a student
(a session opened from a quiz link: only this page, no explorer) answers real / AI one image at a time, sees the
answer in plain words (the computer's guess and how sure, where it looked, the looks that pushed it, a tip), and
ends with their score next to the computer's. Answers stay in the session, except in a class round, where they
are recorded anonymously for the teacher's view (``glue.quiz``, ``storage.class_rounds``)."""
from __future__ import annotations

import streamlit as st

from app_pages.glue import data as D
from app_pages.glue import keys as K
from app_pages.glue import patterns as P
from app_pages.glue import quiz as QG
from app_pages.glue.errors import AsapError, guarded_fragment, rerun_fragment, show_error
from asap_core.views import overview as ov
from asap_core.views import quiz as vq
from asap_core.views.text import as_text, as_texts

PLAY = K.K_QUIZ_PLAY  # this session's game, never stored
PICTURE_PX = 448
TILE_PX = 224
THUMB_PX = 96
END_THUMB_PX = 128

b = QG.quiz_start()
ss = st.session_state
STUDENT = QG.student_mode()
TRUSTED = QG.trusted(b)
path, stamp = D.ref(b)


def saved_patterns() -> dict[str, list[str]]:
    return P.saved_ids(b)


def prefill(current: vq.QuizSpec | None, cells: list[int], names: list[str], gens: list[str]) -> None:
    """The teacher's widgets start at the current quiz (or the defaults; the cell picked on the overview)."""
    picked = ss.get(K.K_CELLS) if ss.get(K.K_GRID) == b.grid else None
    for k, v in vq.widget_defaults(current, cells, names, gens, picked[0] if picked else None).items():
        ss.setdefault(K.QUIZ_WIDGETS[k], v)


def source_value(source: str, col, cells: list[int], names: list[str], gens: list[str]) -> str | None:
    """The widgets of one source -> the spec's value (None when there is nothing to pick)."""
    if source == "cell":
        return str(col.selectbox("Cell", cells, key=K.QUIZ_WIDGETS["cell"]))
    if source == "pattern":
        if not names:
            col.caption("No pattern saved yet (save one on the Images page).")
            return None
        return col.selectbox("Pattern", names, key=K.QUIZ_WIDGETS["pattern"])
    if source == "filter":
        c1, c2, c3 = col.columns(3)
        label = c1.selectbox("Truth", ["all", "real", "fake"], format_func=lambda x: vq.SAY.get(x, x),
                             key=K.QUIZ_WIDGETS["lab"])
        outcome = c2.selectbox("The model was", list(ov.OUTCOME_CHOICES), key=K.QUIZ_WIDGETS["out"])
        gen = c3.selectbox("Generator", ["any", *gens], key=K.QUIZ_WIDGETS["gen"])
        return vq.filter_value(label, outcome, None if gen == "any" else gen)
    return ""


def teacher_panel(current: vq.QuizSpec | None) -> None:
    """Make a quiz: which images, how many, which seed; the link to share and a Start button."""
    cells, names, gens = vq.cell_choices(b.images), list(saved_patterns()), ov.generators(b.images)
    prefill(current, cells, names, gens)
    with st.expander("Make a quiz", expanded=current is None, icon=":material/school:"):
        c1, c2, c3 = st.columns([4, 1, 1])
        source = c1.segmented_control("Images from", list(vq.SOURCES), format_func=lambda s: vq.SOURCES.get(s, s),
                                      key=K.QUIZ_WIDGETS["source"]) or "all"
        n = int(c2.number_input("Images", 1, vq.MAX_QUIZ, key=K.QUIZ_WIDGETS["n"]))
        seed = int(c3.number_input("Seed", 0, vq.MAX_SEED, key=K.QUIZ_WIDGETS["seed"]))
        value = source_value(source, c1, cells, names, gens)
        if value is None:
            return
        spec = vq.QuizSpec(source, value, n, seed)
        available = len(vq.candidates(b.images, spec, saved_patterns()))
        st.caption(f"{as_text(vq.describe(spec))} · {available} labelled image{'s' if available != 1 else ''} to "
                   "draw from. Everyone who opens the link gets the same images in the same order, and sees only the "
                   "quiz. Nothing about a player is stored, except in a class round (anonymous answers).")
        st.code(vq.quiz_link(st.context.url, QG.link_bundle(b), spec), language=None, wrap_lines=True)
        if st.button("Start", key=K.QUIZ_START, type="primary", icon=":material/play_arrow:", disabled=not available):
            ss[K.K_QUIZ] = spec.to_param()
            ss.pop(PLAY, None)
            st.rerun()


def class_round_panel(spec: vq.QuizSpec, ids: list[str]) -> None:
    """Start a class round of the current quiz (a code and a link), then its results, updated live."""
    with st.expander("Class round: see your class's answers live", icon=":material/groups:",
                     expanded=bool(ss.get(K.K_TEACHER_ROUND))):
        st.caption(f"Students' answers are recorded without names. A round closes {QG.ROUND_HOURS:g} hours after "
                   "it starts.")
        if st.button("Start a class round", key=K.QUIZ_ROUND_START, icon=":material/groups:", disabled=not ids):
            rnd = QG.start_round(b, spec, ids)
            if rnd is not None:
                ss[K.K_TEACHER_ROUND] = rnd.code
                if TRUSTED:  # the reveal's maps: computed (and charged) once, before the class opens the link
                    QG.quiz_maps(b, ids, ss[K.K_METHOD])
        code = ss.get(K.K_TEACHER_ROUND)
        if code:
            class_results(code)


@st.fragment(run_every=3)
def class_results(code: str) -> None:
    """The round's link and code, how many answered, the class against the computer, per image the share
    fooled, and the image that fooled most of the class; re-read every 3 s."""
    rnd = QG.open_round(code)
    if rnd is None:
        st.info(f"Round {code} has closed (or cannot be read right now).")
        return
    spec = vq.QuizSpec.from_param(rnd.quiz)
    st.markdown(f"Round code **{rnd.code}** · students open:")
    if spec is not None:  # a round stores the spec it was started with: always valid
        st.code(vq.round_link(st.context.url, QG.link_bundle(b), spec, rnd.code), language=None, wrap_lines=True)
    r = QG.class_results(b, rnd)
    if r is None:
        return
    st.markdown(as_text(vq.class_text(r)))
    c1, c2, c3 = st.columns(3)
    c1.metric("Students", r.players)
    c2.metric("Class right", "–" if r.class_right is None else f"{r.class_right:.0%}")
    c3.metric("Computer right", f"{r.model_right:.0%}")
    if r.most_fooling is not None:
        shown = r.per_image[r.per_image["answered"] > 0]
        st.image(D.thumbs(b, shown["image_id"].tolist(), THUMB_PX), width=THUMB_PX,
                 caption=[f"#{p + 1}: {f:.0%} fooled" for p, f in zip(shown["position"], shown["fooled"])])
        st.markdown("**Fooled most of the class**, for discussion:")
        st.image(D.thumbs(b, [r.most_fooling], END_THUMB_PX), width=END_THUMB_PX,
                 caption=as_texts(vq.captions(b.images, [r.most_fooling], with_p=False)))


def new_play(spec: vq.QuizSpec) -> dict:
    ids = vq.quiz_images(b.images, spec, saved_patterns() if spec.source == "pattern" else None)
    return {"key": (str(b.path), spec.to_param()), "ids": ids, "answers": [], "sure": [], "revealed": False,
            "recorded": 0}


def answer(play: dict, spec: vq.QuizSpec, said: str, sure: str | None) -> None:
    i = len(play["answers"])
    play["answers"].append(said)
    play["sure"].append(vq.SURENESS.get(sure) if sure else None)
    play["revealed"] = True
    rnd = QG.student_round(spec, play["ids"]) if STUDENT else None
    if rnd is not None:
        truth = str(b.images.set_index("image_id").at[play["ids"][i], "label"])
        play["recorded"] += int(QG.record_answer(rnd, i, said, said == truth))
    rerun_fragment()


def show_picture(image_id: str, where) -> None:
    try:
        where.image(D.quiz_picture(path, stamp, image_id, PICTURE_PX), width=PICTURE_PX)
    except AsapError as exc:
        show_error(exc)
        st.stop()


def question(play: dict, spec: vq.QuizSpec) -> None:
    """One image, the buttons Real / AI and the optional "how sure"."""
    i, n = len(play["answers"]), len(play["ids"])
    st.progress(i / n, text=f"Image {i + 1} of {n}")
    left, right = st.columns([3, 2])
    show_picture(play["ids"][i], left)
    right.markdown("#### Real photo, or made by AI?")
    c1, c2 = right.columns(2)
    real = c1.button("Real", key=K.QUIZ_REAL, icon=":material/photo_camera:", width="stretch")
    ai = c2.button("AI", key=K.QUIZ_AI, icon=":material/smart_toy:", width="stretch")
    sure = right.segmented_control("How sure are you? (optional)", list(vq.SURENESS), key=K.quiz_sure(i))
    if real or ai:
        answer(play, spec, "real" if real else "fake", sure)


def reveal_looks(rv: vq.Reveal, words: vq.PlainReveal, where) -> None:
    """The looks that pushed the guess: by the names teachers gave them, else as example pictures."""
    if words.named:
        where.markdown(as_text(f"What pushed its guess most has a name: {', '.join(words.named)}."))
    examples = vq.unnamed_examples(rv, D.dimension_names(b))
    if words.examples and examples:
        where.caption(words.examples)
        where.image(D.thumbs(b, examples, THUMB_PX), width=THUMB_PX)


def reveal_picture(image_id: str, rv: vq.Reveal, where) -> bool:
    """The spotlight picture (lit where the computer looked) when it can be trusted and its map is there;
    else the plain picture. True when the spotlight is shown."""
    maps = QG.quiz_maps(b, [image_id], ss[K.K_METHOD]) if TRUSTED else None
    if maps is None:
        show_picture(image_id, where)
        return False
    pic = vq.spotlight(D.quiz_picture(path, stamp, image_id, PICTURE_PX), maps[0], rv.pred, TILE_PX * 2)
    where.image(pic, caption=vq.MAP_CAPTION, width=PICTURE_PX)
    return True


def reveal_panel(play: dict) -> None:
    """The truth, the computer's guess and how sure, where it looked, what pushed it, a tip; Next."""
    i, n = len(play["answers"]), len(play["ids"])
    image_id, said = play["ids"][i - 1], play["answers"][-1]
    rv = vq.reveal(b.images, b.z, D.head_weights(path, stamp), image_id, D.dimension_names(b))
    st.progress(i / n, text=f"Image {i} of {n}: the answer")
    left, right = st.columns([3, 2])
    shown = reveal_picture(image_id, rv, left)
    words = vq.plain_reveal(rv, said, D.dimension_names(b), TRUSTED, shown)
    right.markdown(f"#### {words.truth}")
    right.markdown(words.you)
    right.info(words.guess)
    last = i == n
    if right.button("See my score" if last else "Next image", key=K.QUIZ_NEXT, type="primary",
                    icon=":material/flag:" if last else ":material/arrow_forward:", width="stretch"):
        play["revealed"] = False
        rerun_fragment()
    if words.trusted:
        reveal_looks(rv, words, right)
    right.caption(words.tip)


def fooled(title: str, ids: list[str]) -> None:
    st.markdown(f"**{title}** ({len(ids)})")
    if ids:
        st.image(D.thumbs(b, ids, END_THUMB_PX), caption=as_texts(vq.captions(b.images, ids, with_p=False)),
                 width=END_THUMB_PX)
    else:
        st.caption("none")


def end_screen(play: dict) -> None:
    """Both scores on the same images, and the images that fooled the player, the computer, or both."""
    rows = vq.play_order(b.images, play["ids"])
    s = vq.score(play["answers"], rows["label"].tolist(), rows["pred"].tolist(), play["ids"], play["sure"])
    st.markdown("#### Your score")
    c1, c2, c3 = st.columns([1, 1, 3])
    c1.metric("You", f"{s.student} / {s.n}")
    c2.metric("The computer", f"{s.model} / {s.n}")
    c3.markdown(vq.score_text(s))
    c3.caption(vq.PUBLIC_RATE_TEXT)
    if vq.sure_text(s):
        c3.caption(vq.sure_text(s))
    if play.get("recorded"):
        c3.caption("Your answers went to your teacher's class results, without your name.")
    elif STUDENT and ss.get(K.K_ROUND):
        c3.caption("This class round has closed, so your answers were not sent to your teacher.")
    fooled("Fooled you (the computer got them right)", s.fooled_student)
    fooled("Fooled the computer (you got them right)", s.fooled_model)
    fooled("Fooled both of you", s.fooled_both)
    if st.button("Play again", key=K.QUIZ_AGAIN, icon=":material/replay:"):
        ss.pop(PLAY, None)
        rerun_fragment()
    if STUDENT:
        st.link_button("Curious how the computer works? Open the explorer",
                       vq.explorer_link(st.context.url, QG.link_bundle(b)), icon=":material/explore:")


def current_play(spec: vq.QuizSpec) -> dict:
    """This session's game of ``spec``: a new one when the quiz or the bundle changed."""
    if ss.get(PLAY, {}).get("key") != (str(b.path), spec.to_param()):
        ss[PLAY] = new_play(spec)
    return ss[PLAY]


def play_area(spec: vq.QuizSpec) -> None:
    """The question, its reveal or the score: an answer, Next or Play again reruns this part only."""
    play = current_play(spec)
    if not play["ids"]:
        st.warning("This quiz has no pictures here. Ask your teacher for a new link." if STUDENT else
                   "This quiz has no labelled images in this bundle (a pattern that is not saved here, an empty "
                   "cell or filter). Make another one above.")
    elif play["revealed"]:
        reveal_panel(play)
    elif len(play["answers"]) < len(play["ids"]):
        question(play, spec)
    else:
        end_screen(play)


if STUDENT:
    st.caption(vq.STUDENT_LINE)
else:
    st.subheader("Real or AI?")
spec = vq.QuizSpec.from_param(ss.get(K.K_QUIZ))
if not STUDENT:
    teacher_panel(spec)
if spec is None:
    st.info("Make a quiz above and share its link, or open a quiz link you were given.")
    st.stop()
if not STUDENT:
    st.caption(f"Quiz: {as_text(vq.describe(spec))}.")
    class_round_panel(spec, current_play(spec)["ids"])
guarded_fragment(play_area)(spec)
