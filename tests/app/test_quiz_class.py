"""Class rounds of the quiz (the teacher sees the class's answers): rounds and anonymous answers in the state
store (SQLite, and PostgreSQL when ``ASAP_TEST_STATE_URL`` is set, as ``.ci/run`` does), the teacher's summary, and
an AppTest with 12 simulated students in one round whose results a second server process reads from the same store."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.storage.class_rounds import (
    CODE_ALPHABET,
    MAX_PLAYERS,
    ROUND_HOURS,
    ROUNDS,
    Answer,
    ClassRounds,
    RoundRefused,
    clean_code,
    new_player,
    owner_key,
)
from asap_core.storage.state_store import StateStore, _open_engine
from asap_core.views import quiz as vq
from tests.conftest_app import local_app_env, no_exception, private_copy, tiny_bundle  # noqa: F401  (fixture)
from tests.storage.test_state_store import postgres_url

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "streamlit_app.py")
IDS = [f"{i:040x}" for i in range(5)]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state.sqlite3'}" if request.param == "sqlite" else postgres_url()


def test_a_round_records_each_answer_once_and_expires(url):
    rounds = ClassRounds(StateStore.from_url(url))
    rnd = rounds.start("demo", "all:5:42", IDS, now=1000.0)
    assert len(rnd.code) == 6 and set(rnd.code) <= set(CODE_ALPHABET)
    assert rnd.expires == 1000.0 + ROUND_HOURS * 3600
    assert rounds.get(rnd.code.lower(), now=1001.0) == rnd                       # typed in any case
    a, b = new_player(), new_player()
    assert a != b and len(a) == 32
    assert rounds.record(rnd.code, a, 0, "fake", True, now=1002.0)
    assert not rounds.record(rnd.code, a, 0, "real", False, now=1003.0)          # the first answer counts
    assert rounds.record(rnd.code, b, 0, "real", False, now=1003.0)
    assert not rounds.record(rnd.code, b, 5, "real", False, now=1003.0)          # not a position of the quiz
    assert not rounds.record(rnd.code, b, 1, "maybe", False, now=1003.0)
    got = rounds.answers(rnd.code)
    assert sorted(got, key=lambda x: x.player) == sorted([Answer(a, 0, "fake", True), Answer(b, 0, "real", False)],
                                                         key=lambda x: x.player)
    late = rnd.expires + 1
    assert rounds.get(rnd.code, now=late) is None and not rounds.record(rnd.code, b, 1, "real", True, now=late)
    rounds.start("demo", "all:5:42", IDS, now=late)                              # a new round purges expired ones
    assert rounds.answers(rnd.code) == []
    assert clean_code("ab1") is None and clean_code(" abcdef ") == "ABCDEF" and clean_code("ABCDE0") is None


def test_a_round_takes_at_most_max_players(tmp_path, monkeypatch):
    monkeypatch.setattr("asap_core.storage.class_rounds.MAX_PLAYERS", 3)
    rounds = ClassRounds(StateStore.from_url(f"sqlite:///{tmp_path / 's.sqlite3'}"))
    rnd = rounds.start("demo", "all:5:42", IDS)
    players = [new_player() for _ in range(4)]
    assert [rounds.record(rnd.code, p, 0, "real", True) for p in players] == [True, True, True, False]
    assert rounds.record(rnd.code, players[0], 1, "real", True)                  # one already in: still answers
    assert MAX_PLAYERS >= 30


def test_one_teacher_may_keep_only_so_many_rounds_open(tmp_path, monkeypatch):
    """A visitor cannot take every round of the explorer: open rounds per teacher (client id) are capped, the
    client id is kept only as a hash, and closed rounds free their places."""
    monkeypatch.setattr("asap_core.storage.class_rounds.MAX_ROUNDS_PER_OWNER", 2)
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    rounds = ClassRounds(StateStore.from_url(url))
    for _ in range(2):
        rounds.start("demo", "all:5:42", IDS, owner="ip:203.0.113.9", now=1000.0)
    with pytest.raises(RoundRefused, match="2 class rounds open"):
        rounds.start("demo", "all:5:42", IDS, owner="ip:203.0.113.9", now=1001.0)
    rounds.start("demo", "all:5:42", IDS, owner="ip:198.51.100.7", now=1001.0)          # another teacher
    with rounds.engine.connect() as conn:
        owners = {r.owner for r in conn.execute(select(ROUNDS.c.owner))}
    assert owners == {owner_key("ip:203.0.113.9"), owner_key("ip:198.51.100.7")}
    assert not any("203.0.113.9" in o for o in owners)
    rounds.start("demo", "all:5:42", IDS, owner="ip:203.0.113.9", now=1000.0 + ROUND_HOURS * 3600)  # closed: room


def test_class_results_count_players_shares_and_the_image_that_fooled_most():
    truths, preds = ["real", "fake", "fake", "real"], ["real", "real", "fake", "real"]
    ids = list("abcd")
    answers = [Answer("p1", 0, "real", True), Answer("p1", 1, "real", False), Answer("p1", 2, "fake", True),
               Answer("p2", 0, "fake", False), Answer("p2", 1, "real", False), Answer("p3", 1, "fake", True)]
    r = vq.class_results(answers, ids, truths, preds)
    assert (r.players, r.answers) == (3, 6)
    assert r.class_right == pytest.approx(3 / 6) and r.model_right == pytest.approx(3 / 4)
    assert r.per_image["answered"].tolist() == [2, 3, 1, 0]
    assert np.allclose(r.per_image["fooled"].to_numpy()[:3], [0.5, 2 / 3, 0.0]) and np.isnan(r.per_image["fooled"][3])
    assert r.most_fooling == "b"
    assert "3 students answered 6 times" in vq.class_text(r) and "50%" in vq.class_text(r)
    empty = vq.class_results([], ids, truths, preds)
    assert empty.most_fooling is None and empty.class_right is None and "No answers yet" in vq.class_text(empty)


# ------------------------------------------------------------------------------------------ the app
@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):  # noqa: F811
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("quiz_class") / "bundle")


@pytest.fixture
def store_url(monkeypatch, tmp_path, set_env) -> str:
    local_app_env(monkeypatch, tmp_path / "cache")
    url = f"sqlite:///{tmp_path / 'rounds.sqlite3'}"
    set_env(ASAP_STATE_URL=url)
    return url


def teacher_starts_a_round(bundle, spec: vq.QuizSpec) -> tuple[AppTest, str]:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[K.K_BUNDLE] = str(bundle.path)
    at.session_state[K.K_QUIZ] = spec.to_param()
    at.run()
    at.switch_page("app_pages/quiz.py").run()
    no_exception(at)
    at.button(key=K.QUIZ_ROUND_START).click().run()
    no_exception(at)
    code = at.session_state[K.K_TEACHER_ROUND]
    link = next(c.value for c in at.code if f"round={code}" in c.value)
    assert f"quiz={spec.to_param()}" in link and "page=quiz" in link
    return at, code


def student_plays(bundle, spec: vq.QuizSpec, code: str, answers: list[str]) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"bundle": str(bundle.path), "quiz": spec.to_param(), "round": code.lower()})
    at.run()
    for said in answers:
        at.button(key=K.QUIZ_REAL if said == "real" else K.QUIZ_AI).click().run()
        at.button(key=K.QUIZ_NEXT).click().run()
    no_exception(at)
    assert "class results, without your name" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
def test_twelve_students_in_one_round_and_a_second_server_sees_it(bundle, store_url):
    spec = vq.QuizSpec("all", "", 3, 11)
    teacher, code = teacher_starts_a_round(bundle, spec)
    ids = vq.quiz_images(bundle.images, spec)
    rng = np.random.default_rng(0)
    plays = [list(rng.choice(["real", "fake"], len(ids))) for _ in range(12)]
    for answers in plays:
        student_plays(bundle, spec, code, answers)
    truth = bundle.images.set_index("image_id").loc[ids]
    wrong = np.array([[a != t for a, t in zip(p, truth["label"])] for p in plays])
    teacher.run()                                                  # the fragment re-reads; a rerun shows the same
    no_exception(teacher)
    metrics = {m.label: m.value for m in teacher.metric}
    assert metrics["Students"] == "12"
    assert metrics["Class right"] == f"{1 - wrong.mean():.0%}"
    assert metrics["Computer right"] == f"{(truth['label'] == truth['pred']).mean():.0%}"
    shares = [c for el in teacher.get("image") for c in [im.caption for im in el.proto.imgs] if "fooled" in c]
    assert shares == [f"#{i + 1}: {w:.0%} fooled" for i, w in enumerate(wrong.mean(axis=0))]

    script = textwrap.dedent(f"""
        import json
        from asap_core.storage.class_rounds import ClassRounds
        from asap_core.storage.state_store import StateStore
        r = ClassRounds(StateStore.from_url({store_url!r}))
        rnd = r.get({code!r})
        print(json.dumps({{"ids": list(rnd.ids), "players": len({{a.player for a in r.answers(rnd.code)}}),
                          "n": len(r.answers(rnd.code))}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"ids": ids, "players": 12, "n": 12 * len(ids)}


def test_two_stores_on_one_url_share_rounds(url):
    """Two server processes = two engines on one URL: a round started on one is answered and read on the other."""
    one, two = ClassRounds(StateStore(_open_engine(url))), ClassRounds(StateStore(_open_engine(url)))
    rnd = one.start(f"b-{uuid.uuid4().hex[:6]}", "all:5:1", IDS)
    assert two.get(rnd.code) == rnd and two.record(rnd.code, new_player(), 2, "real", True)
    assert len(one.answers(rnd.code)) == 1
