"""The quiz ("Real or AI?"): the spec and its link, which images a spec picks (deterministic, per
source), the reveal (top dimensions = strongest contributions towards the prediction), the score; and an
AppTest that plays a seeded quiz of 10 images to the end with scripted answers."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.method.bundle_models import bundle_distiller
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from asap_core.storage.labels import dimension_label
from asap_core.storage.schema import N_DIMS, Z_COLUMNS
from asap_core.views import attention as va
from asap_core.views import quiz as vq
from asap_core.views import state as vs
from asap_core.views.trust import trust_notices
from tests.conftest_app import local_app_env, no_exception, private_copy, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
#: words a student must never read in a reveal (a 12-year-old must follow it): model internals and units
JARGON = re.compile(r"logit|p_fake|\bAUC\b|relevance|\bdim\s*\d|\bz_i\b|\bz_\d", re.IGNORECASE)
TIMEOUT = 60


def table(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """A bundle-like images table: labels (some missing), predictions, cells, generators, z."""
    rng = np.random.default_rng(seed)
    label = rng.choice(np.array(["real", "fake", None], dtype=object), n, p=[0.45, 0.45, 0.1])
    p = rng.uniform(0, 1, n)
    pred = np.where(p >= 0.5, "fake", "real").astype(object)
    df = pd.DataFrame({"image_id": [f"{i:040x}" for i in rng.permutation(10**6)[:n]], "label": label,
                       "p_fake": p, "pred": pred, "correct": pd.array(np.where(pd.isna(label), None, label == pred),
                                                                          dtype="boolean"),
                       "cell": rng.integers(0, 5, n),
                       "generator": np.where(label == "fake", rng.choice(["gen_a", "gen_b"], n), None)})
    z = rng.normal(size=(n, N_DIMS))
    return pd.concat([df, pd.DataFrame(z, columns=Z_COLUMNS)], axis=1)


# ------------------------------------------------------------------------------------------ spec and link
@pytest.mark.parametrize("spec", [vq.QuizSpec("all", "", 10, 42), vq.QuizSpec("cell", "13", 10, 42),
                                  vq.QuizSpec("pattern", "bright: corner", 5, 0),
                                  vq.QuizSpec("filter", "fake.wrong.sd-1.4", 50, 7)])
def test_spec_round_trips_through_its_link_value(spec):
    assert vq.QuizSpec.from_param(spec.to_param()) == spec
    assert vq.QuizSpec.from_query(spec.to_query()) == spec
    assert vq.QuizSpec.from_query({"quiz": ["x", spec.to_param()]}) == spec


def test_spec_link_values_are_compact_and_malformed_ones_are_refused():
    assert vq.QuizSpec("all", "", 10, 42).to_param() == "all:10:42"
    assert vq.QuizSpec("cell", "13", 10, 42).to_param() == "cell:13:10:42"
    for bad in ["", "all", "all:10", "all:0:1", "all:51:1", "all:x:1", "cell:x:10:1", "nope:10:1",
                "filter:maybe.wrong:10:1", "pattern: :10:1", None]:
        assert vq.QuizSpec.from_param(bad) is None, bad


def test_link_carries_the_quiz_and_opens_the_quiz_page():
    spec = vq.QuizSpec("cell", "3", 10, 42)
    url = vq.quiz_link("http://host/quiz", "tiny", spec)
    assert url.startswith("http://host/quiz?") and "quiz=cell:3:10:42" in url
    link = vs.parse_query(dict(parse_qsl(urlsplit(url).query)))
    assert (link.bundle, link.page, link.quiz) == ("tiny", "quiz", spec.to_param())
    assert vs.parse_query({"quiz": "all:5:1"}).page == "quiz"           # no page: the quiz page
    assert vs.parse_query({"quiz": "all:5:1", "page": "images"}).page == "images"
    assert vs.parse_query({"quiz": "bad"}).quiz is None
    assert vs.to_query(vs.LinkState(page="quiz", quiz="all:5:1")) == {"page": "quiz", "quiz": "all:5:1"}


def test_the_teacher_widgets_start_at_the_current_quiz():
    d = vq.widget_defaults(None, [1, 2], [], [], selected_cell=2)
    assert d == {"source": "all", "n": vq.DEFAULT_N, "seed": vq.DEFAULT_SEED, "cell": 2}
    d = vq.widget_defaults(vq.QuizSpec("filter", "fake.wrong.gen_a", 5, 3), [1], ["p"], ["gen_a"])
    assert d == {"source": "filter", "n": 5, "seed": 3, "lab": "fake", "out": "wrong", "gen": "gen_a"}
    assert "gen" not in vq.widget_defaults(vq.QuizSpec("filter", "fake.all.gone", 5, 3), [], [], ["gen_a"])
    assert vq.widget_defaults(vq.QuizSpec("pattern", "p", 5, 3), [], ["p"], [])["pattern"] == "p"
    assert "cell" not in vq.widget_defaults(vq.QuizSpec("cell", "9", 5, 3), [1, 2], [], [])   # not a choice


def test_a_spec_without_arguments_is_the_teachers_default_quiz():
    assert vq.QuizSpec() == vq.QuizSpec("all", "", vq.DEFAULT_N, vq.DEFAULT_SEED)  # one default seed, not 0
    assert vq.QuizSpec.from_param(vq.QuizSpec().to_param()) == vq.QuizSpec()


# ------------------------------------------------------------------------------------------ which images
def test_same_spec_same_images_in_the_same_order_only_labelled():
    df = table()
    spec = vq.QuizSpec("all", "", 10, 42)
    ids = vq.quiz_images(df, spec)
    assert len(ids) == 10 and len(set(ids)) == 10
    assert ids == vq.quiz_images(df.sample(frac=1.0, random_state=3), spec)   # row order does not matter
    assert set(ids) <= set(df.loc[df["label"].notna(), "image_id"])
    assert vq.quiz_images(df, vq.QuizSpec("all", "", 5, 42)) == ids[:5]       # a shorter quiz is a prefix
    assert vq.quiz_images(df, vq.QuizSpec("all", "", 10, 43)) != ids
    n_lab = int(df["label"].notna().sum())
    assert len(vq.quiz_images(df, vq.QuizSpec("all", "", 50, 1))) == min(50, n_lab)


def test_each_source_draws_from_its_images():
    df = table(200)
    t = df.set_index("image_id")
    cell = vq.quiz_images(df, vq.QuizSpec("cell", "2", 50, 0))
    assert cell and (t.loc[cell, "cell"] == 2).all() and t.loc[cell, "label"].notna().all()
    assert len(cell) == min(50, int(((df["cell"] == 2) & df["label"].notna()).sum()))

    members = df["image_id"].tolist()[:30]
    pats = {"corner": members}
    pat = vq.quiz_images(df, vq.QuizSpec("pattern", "corner", 50, 0), pats)
    assert set(pat) == set(df.loc[df["image_id"].isin(members) & df["label"].notna(), "image_id"])
    assert vq.quiz_images(df, vq.QuizSpec("pattern", "gone", 10, 0), pats) == []

    wrong_fakes = vq.quiz_images(df, vq.QuizSpec("filter", "fake.wrong", 50, 0))
    assert wrong_fakes and (t.loc[wrong_fakes, "label"] == "fake").all()
    assert (t.loc[wrong_fakes, "pred"] == "real").all()
    gen_a = vq.quiz_images(df, vq.QuizSpec("filter", "fake.all.gen_a", 50, 0))
    assert gen_a and (t.loc[gen_a, "generator"] == "gen_a").all()
    assert vq.cell_choices(df)[0] == int(df.loc[df["label"].notna(), "cell"].value_counts().idxmax())


# ------------------------------------------------------------------------------------------ reveal and score
def test_reveal_names_the_strongest_contributions_towards_the_prediction():
    df = table(60, seed=1)
    z = df[Z_COLUMNS].to_numpy()
    w2 = np.random.default_rng(2).normal(size=N_DIMS)
    for image_id in df.loc[df["label"].notna(), "image_id"].head(12):
        row = df.index[df["image_id"] == image_id][0]
        contrib = va.contributions(z[row: row + 1], w2)[0]
        r = vq.reveal(df, z, w2, image_id)
        sign = 1.0 if r.pred == "fake" else -1.0
        assert r.dims[0] == int(np.argmax(sign * contrib))
        assert r.dims[1] == int(np.argsort(-sign * contrib)[1])
        assert r.contributions == (contrib[r.dims[0]], contrib[r.dims[1]])
        assert r.truth == df.loc[row, "label"] and r.p_fake == df.loc[row, "p_fake"]
        for d, c, ex in zip(r.dims, r.contributions, r.exemplars):
            assert len(ex) == 3 and image_id not in ex
            push = np.sign(c) * z[:, d] * w2[d]
            others = np.delete(push, row)
            assert np.isclose(min(push[df["image_id"].isin(ex).to_numpy()]), np.sort(others)[-3])
        assert r.sentence.count(".") == 2 and r.sentence.endswith(".")   # one sentence: "(p_fake 0.91)" and its end
        assert ("it was right." if r.model_right else "it was wrong.") in r.sentence
        assert dimension_label(r.dims[0]) in r.sentence and vq.SAY[r.pred] in r.sentence
        names = [""] * N_DIMS
        names[r.dims[1]] = "smooth skin"
        named = vq.reveal(df, z, w2, image_id, names).sentence               # a named dimension reads by name
        assert f"dim {r.dims[1]} · smooth skin" in named and named.count(".") == 2
        assert f"dim {r.dims[1]} · smooth skin pushed" in vq.push_text(r.dims[1], r.contributions[1], names)


def test_exemplars_are_the_highest_z_when_the_dimension_pushes_up():
    z = np.array([[0.0], [3.0], [2.0], [5.0], [1.0]]) * np.ones((1, N_DIMS))
    ids = list("abcde")
    assert vq.exemplars(ids, z, np.ones(N_DIMS), 0, towards=+1.0, exclude="d") == ["b", "c", "e"]
    assert vq.exemplars(ids, z, np.ones(N_DIMS), 0, towards=-1.0, exclude="a") == ["e", "c", "b"]


def test_score_counts_and_fooled_lists():
    truths = ["real", "fake", "fake", "real", "fake", "real"]
    model = ["real", "real", "fake", "fake", "real", "real"]
    answers = ["fake", "fake", "real", "real", "real", None]
    s = vq.score(answers, truths, model, ids=list("abcdef"), sure=[0.95, 0.5, 0.75, None, 0.5, None])
    assert (s.n, s.student, s.model) == (6, 2, 3)
    assert s.fooled_student == ["a", "c", "f"] and s.fooled_model == ["b", "d"] and s.fooled_both == ["e"]
    assert s.student == s.n - len(s.fooled_student) - len(s.fooled_both)
    assert s.model == s.n - len(s.fooled_model) - len(s.fooled_both)
    assert s.sure_right == 0.5 and np.isclose(s.sure_wrong, (0.95 + 0.75 + 0.5) / 3)
    assert vq.score(["real"], ["real"], ["fake"]).fooled_model == [0]
    assert "2 of 6" in vq.score_text(s) and "the computer did better" in vq.score_text(s)
    with pytest.raises(ValueError):
        vq.score(["real"], ["real", "fake"], ["real"])


# ------------------------------------------------------------------------------------------ the reveal in plain words
def test_fk_grade_is_the_flesch_kincaid_formula():
    assert vq.syllables("readability") == 5 and vq.syllables("make") == 1 and vq.syllables("the") == 1
    assert vq.fk_grade("The cat sat on the mat.") == pytest.approx(0.39 * 6 + 11.8 * 1 - 15.59)
    long = ("Notwithstanding considerable methodological heterogeneity, attribution visualisations "
            "systematically overstate discriminative localisation.")
    assert vq.fk_grade(long) > 16 > 6 > vq.fk_grade("You said AI. Well spotted!")


def test_how_sure_says_it_in_words():
    assert vq.how_sure(0.1) == "very sure: about 9 in 10" == vq.how_sure(0.9)
    assert vq.how_sure(0.52) == "not sure at all: it was close to a coin toss"
    assert vq.how_sure(0.3) == "a little sure: about 7 in 10" and vq.how_sure(0.82) == "quite sure: about 8 in 10"
    assert vq.how_sure(0.999) == "very sure: more than 9 in 10"


def test_plain_reveal_has_no_jargon_names_looks_and_reads_at_grade_7_or_below():
    df = table(60, seed=1)
    z = df[Z_COLUMNS].to_numpy()
    w2 = np.random.default_rng(2).normal(size=N_DIMS)
    names = [""] * N_DIMS
    grades = []
    for image_id in df.loc[df["label"].notna(), "image_id"].head(12):
        rv = vq.reveal(df, z, w2, image_id)
        names[rv.dims[0]] = "smooth skin"
        for said in ("real", "fake"):
            words = vq.plain_reveal(rv, said, names)
            text = words.text()
            assert not JARGON.search(text), text
            assert vq.the_thing(rv.truth) in words.truth and ("well spotted" in words.you) == (said == rv.truth)
            assert vq.how_sure(rv.p_fake) in words.guess and ("right" if rv.model_right else "wrong") in words.guess
            assert "“smooth skin”" in words.named and words.looked == vq.MAP_CAPTION
            assert bool(words.examples) == (rv.dims[1] != rv.dims[0] and not names[rv.dims[1]])
            assert vq.unnamed_examples(rv, names) == [i for d, ex in zip(rv.dims, rv.exemplars) if not names[d]
                                                      for i in ex]
            grades.append(vq.fk_grade(text))
            random = vq.plain_reveal(rv, said, names, trusted=False)          # a random model: no reasons at all
            assert vq.UNTRAINED in random.guess and not random.named and not random.examples and not random.looked
            assert "sure" not in random.guess and not JARGON.search(random.text())
            grades.append(vq.fk_grade(random.text()))
        names[rv.dims[0]] = ""
    assert max(grades) <= 7.0, max(grades)                               # ages 12 and up (US grade 7)
    assert vq.plain_reveal(rv, "real", names, has_map=False).looked == vq.NO_MAP


def test_the_spotlight_lights_what_pushed_the_guess_without_colour():
    picture = Image.new("RGB", (64, 48), (120, 120, 120))
    maps = np.zeros((N_DIMS + 1, 8, 8), np.float32)
    maps[N_DIMS, :4, :4] = 1.0                                            # pushes towards AI in the top left
    maps[N_DIMS, 4:, 4:] = -1.0                                           # and towards real in the bottom right
    ai = np.asarray(vq.spotlight(picture, maps, "fake", 32), np.float32)
    real = np.asarray(vq.spotlight(picture, maps, "real", 32), np.float32)
    assert ai.shape == (32, 32, 3) and np.allclose(ai[..., 0], ai[..., 1]) and np.allclose(ai[..., 1], ai[..., 2])
    assert ai[:12, :12].mean() > 100 > 40 > ai[20:, 20:].mean()
    assert real[20:, 20:].mean() > 100 > 40 > real[:12, :12].mean()
    assert np.asarray(vq.spotlight(picture, np.zeros_like(maps), "fake", 32)).max() < 40   # nothing: all dimmed


# ------------------------------------------------------------------------------------------ the page
@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Bundle:  # noqa: F811
    """A private copy of the tiny bundle (the maps the reveal computes stay out of the shared one)."""
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("quiz") / "bundle")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    local_app_env(monkeypatch, tmp_path / "cache")


def open_link(bundle: Bundle, quiz: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": str(bundle.path), "page": "quiz", "quiz": quiz})
    at.run()
    no_exception(at)
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def shown_text(at: AppTest) -> str:
    """Every text a student reads on the page (markdown, captions, info, buttons, image captions)."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [str(b.label) for b in at.button] + [im.caption for el in at.get("image") for im in el.proto.imgs]
    return "\n".join(parts)


@pytest.mark.slow
def test_a_seeded_quiz_of_10_played_to_the_end(bundle):
    """A quiz link opens the student's view (no sidebar, no explorer pages, no teacher panel); each reveal is in
    plain words and free of jargon; the end screen compares the student with the computer."""
    spec = vq.QuizSpec("all", "", 10, 7)
    at = open_link(bundle, spec.to_param())
    ids = at.session_state[K.K_QUIZ_PLAY]["ids"]
    assert ids == vq.quiz_images(bundle.images, spec) and len(ids) == 10
    assert open_link(bundle, spec.to_param()).session_state[K.K_QUIZ_PLAY]["ids"] == ids   # same link, same images
    assert len(at.sidebar) == 0 and not at.expander and vq.STUDENT_LINE in shown_text(at)   # the student's view
    assert str(bundle.path) not in shown_text(at) and "Make a quiz" not in shown_text(at)

    answers = ["real", "fake", "fake", "real", "real", "fake", "real", "real", "fake", "fake"]
    for i, said in enumerate(answers):
        assert any(f"Image {i + 1} of 10" in p.proto.text for p in at.get("progress"))
        if i == 3:
            at.segmented_control(key=f"quiz_sure_{i}").set_value("very sure")
        at.button(key=K.QUIZ_REAL if said == "real" else K.QUIZ_AI).click().run()
        no_exception(at)
        rv = vq.reveal(bundle.images, bundle.z, va.head_weights(bundle_distiller(bundle)), ids[i])
        text = shown_text(at)
        assert vq.the_thing(rv.truth) in at.markdown[0].value or vq.the_thing(rv.truth) in text
        assert not JARGON.search(text), JARGON.search(text)
        at.button(key=K.QUIZ_NEXT).click().run()
        no_exception(at)

    t = bundle.images.set_index("image_id").loc[ids]
    you = int((t["label"].to_numpy() == np.array(answers)).sum())
    model = int((t["label"] == t["pred"]).sum())
    assert metric(at, "You") == f"{you} / 10" and metric(at, "The computer") == f"{model} / 10"
    s = vq.score(answers, t["label"].tolist(), t["pred"].tolist(), ids)
    titles = [m.value for m in at.markdown if m.value.startswith("**Fooled")]
    assert titles == [f"**Fooled you (the computer got them right)** ({len(s.fooled_student)})",
                      f"**Fooled the computer (you got them right)** ({len(s.fooled_model)})",
                      f"**Fooled both of you** ({len(s.fooled_both)})"]
    assert at.session_state[K.K_QUIZ_PLAY]["sure"][3] == vq.SURENESS["very sure"]
    assert not JARGON.search(shown_text(at)) and "mostly “very sure”" in shown_text(at)   # its own words, no %
    explorer = at.get("link_button")[0].proto.url
    link_bundle = vs.to_query(vs.LinkState(bundle=str(bundle.path)))["bundle"]
    assert "quiz=" not in explorer and explorer.endswith(f"?bundle={link_bundle}")

    at.button(key=K.QUIZ_AGAIN).click().run()                                 # again: the same images
    assert at.session_state[K.K_QUIZ_PLAY]["answers"] == [] and at.session_state[K.K_QUIZ_PLAY]["ids"] == ids


@pytest.mark.slow
def test_teacher_makes_a_quiz_from_a_cell_and_starts_it(bundle):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[K.K_BUNDLE] = str(bundle.path)
    at.run()
    at.switch_page("app_pages/quiz.py").run()
    no_exception(at)
    assert any("Make a quiz above" in i.value for i in at.info)
    at.segmented_control(key=K.QUIZ_WIDGETS["source"]).set_value("cell").run()
    cell = vq.cell_choices(bundle.images)[0]
    at.selectbox(key=K.QUIZ_WIDGETS["cell"]).set_value(cell)
    at.number_input(key=K.QUIZ_WIDGETS["n"]).set_value(4)
    at.number_input(key=K.QUIZ_WIDGETS["seed"]).set_value(3).run()
    no_exception(at)
    spec = vq.QuizSpec("cell", str(cell), 4, 3)
    assert any(f"quiz={spec.to_param()}" in c.value and "page=quiz" in c.value for c in at.code)
    at.button(key=K.QUIZ_START).click().run()
    no_exception(at)
    assert at.session_state[K.K_QUIZ] == spec.to_param()
    assert at.session_state[K.K_QUIZ_PLAY]["ids"] == vq.quiz_images(bundle.images, spec)


@pytest.mark.slow
def test_hosted_quiz_link_names_the_bundle_and_plays_past_the_budget(bundle, tmp_path, monkeypatch):
    """Hosted mode: the teacher's link carries the bundle's name, not its path; a student who opens it sees no
    path either, and when the map budget is spent the reveal goes on without the map."""
    root = tmp_path / "bundles"
    shutil.copytree(bundle.path, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "2")
    reload_settings()
    teacher = AppTest.from_file(APP, default_timeout=TIMEOUT)
    teacher.query_params.update({"bundle": "tiny", "page": "quiz"})
    teacher.run()
    no_exception(teacher)
    assert all(str(root) not in c.value for c in teacher.code)
    assert any("bundle=tiny&page=quiz&quiz=all:10:42" in c.value for c in teacher.code)

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny", "quiz": "all:3:5"})
    at.run()
    no_exception(at)
    assert str(root) not in shown_text(at) and len(at.sidebar) == 0
    assert len(at.session_state[K.K_QUIZ_PLAY]["ids"]) == 3
    trusted = not trust_notices(Bundle.open(root / "tiny"))
    for i in range(3):
        at.button(key=K.QUIZ_AI).click().run()
        no_exception(at)
        assert str(root) not in shown_text(at) and not JARGON.search(shown_text(at))
        maps_shown = any(c == vq.MAP_CAPTION for el in at.get("image") for c in
                         [im.caption for im in el.proto.imgs])
        assert maps_shown == (trusted and i < 2)
        assert (trusted and i == 2) == any("used 2 of the 2" in e.value for e in at.error)
        at.button(key=K.QUIZ_NEXT).click().run()
    assert metric(at, "The computer").endswith("/ 3")


def test_a_trusted_reveal_shows_the_spotlight_and_the_looks_by_name(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    """Where the model may be explained (patched here: the tiny bundle's CLIP is random), the reveal shows the
    spotlight picture, a named look by its name and the other look as example pictures; still no jargon."""
    b = private_copy(tiny_bundle, tmp_path / "named")
    monkeypatch.setattr("app_pages.glue.quiz.trusted", lambda bundle: True)
    spec = vq.QuizSpec("all", "", 2, 3)
    first = vq.quiz_images(b.images, spec)[0]
    rv = vq.reveal(b.images, b.z, va.head_weights(bundle_distiller(b)), first)
    b.set_dimension_name(rv.dims[0], "smooth skin")
    at = open_link(b, spec.to_param())
    at.button(key=K.QUIZ_AI).click().run()
    no_exception(at)
    text = shown_text(at)
    assert vq.MAP_CAPTION in text and "“smooth skin”" in text and not JARGON.search(text)
    assert vq.how_sure(rv.p_fake) in text and vq.UNTRAINED not in text
    n_images = len([im for el in at.get("image") for im in el.proto.imgs])
    assert n_images == 1 + (vq.N_EXEMPLARS if rv.dims[1] != rv.dims[0] else 0)   # spotlight + the unnamed look


def test_the_quiz_link_names_the_bundle_open_now(bundle, tiny_bundle, tmp_path):  # noqa: F811
    """After another bundle opens (e.g. "Bring your own images"), the link shown and the address bar name it,
    not the bundle of the link the session came from."""
    other = private_copy(tiny_bundle, tmp_path / "my-images")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": str(bundle.path), "page": "quiz"})
    at.run()
    no_exception(at)
    at.session_state[K.K_BUNDLE] = str(other.path)                   # what glue.state.open_bundle does
    at.run()
    no_exception(at)
    link = next(c.value for c in at.code if "quiz=" in c.value)
    query = dict(parse_qsl(urlsplit(link).query))
    assert query["bundle"] == str(other.path) and at.query_params["bundle"] == str(other.path)


def test_a_class_opening_one_quiz_computes_each_map_once(monkeypatch):
    """30 students reach the same reveal at once: the map is computed (and charged) by one of them, the others
    wait and read it (``glue.quiz.quiz_maps``: one computation per bundle and method at a time)."""
    import threading
    import time
    from types import SimpleNamespace

    from app_pages.glue import quiz as QG

    stored, computed, inside, peak = set(), [], [0], [0]

    def maps_for(b, ids, method):                       # work.maps_for: computes (and charges) what is missing
        inside[0] += 1
        peak[0] = max(peak[0], inside[0])
        missing = [i for i in ids if i not in stored]
        time.sleep(0.02 if missing else 0.0)
        computed.extend(missing)
        stored.update(missing)
        inside[0] -= 1
        return np.zeros((len(ids), N_DIMS + 1, 2, 2))

    monkeypatch.setattr(QG.work, "maps_for", maps_for)
    b = SimpleNamespace(path=Path("/bundles/demo"))
    threads = [threading.Thread(target=QG.quiz_maps, args=(b, ["img-1"], "last-block")) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert computed == ["img-1"] and peak[0] == 1
