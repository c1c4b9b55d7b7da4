"""Quiz view ("Real or AI?"): a teacher picks images, a link carries the pick, students answer real / AI one
image at a time and see why the model decided as it did. No Streamlit here.

A quiz is a :class:`QuizSpec` (source, value, n, seed), written into a link as one compact query value
(``quiz=all:10:42``, ``quiz=cell:13:10:42``, ``quiz=pattern:bright corner:10:42``,
``quiz=filter:fake.wrong:10:42``). :func:`quiz_images` turns it into image ids: the same spec on the same
bundle gives the same ids in the same order, on any machine (the order is the SHA-1 of seed and id, not a
random generator's stream). Only labelled images take part: a quiz needs the truth.

The reveal explains one answer with the distiller: the contribution of dimension i to the fake logit is
``z_i * w2_i`` (``views.attention.contributions``); the two dimensions that pushed hardest towards the
prediction are named (``storage.labels.dimension_label``: "dim 3 · smooth skin" once a user named it), each with
three exemplar images, in one plain sentence. Nothing about a student is
kept here; answers live only in the caller's session.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import numpy as np
import pandas as pd
from PIL import Image

from ..storage.labels import dimension_label, dimension_name
from ..storage.schema import FAKE_LOGIT, LABELS, N_DIMS
from . import attention as va
from . import overview as ov
from . import state as vs

# the spec is defined apart (views.state reads it from links); pages and tests read it as views.quiz.*
from .quiz_spec import DEFAULT_N as DEFAULT_N
from .quiz_spec import DEFAULT_SEED as DEFAULT_SEED
from .quiz_spec import MAX_QUIZ as MAX_QUIZ
from .quiz_spec import MAX_SEED as MAX_SEED
from .quiz_spec import MAX_VALUE as MAX_VALUE
from .quiz_spec import SOURCES as SOURCES
from .quiz_spec import QuizSpec as QuizSpec
from .quiz_spec import filter_value as filter_value
from .quiz_spec import filters_from_value as filters_from_value

N_TOP_DIMS = 2
N_EXEMPLARS = 3
#: what a student reads for each label
SAY: dict[str, str] = {"real": "real", "fake": "AI"}
#: how sure a student may say they are (optional), as a probability of being right
SURENESS: dict[str, float] = {"just guessing": 0.5, "fairly sure": 0.75, "very sure": 0.95}
#: context for the end screen: how people and detectors do (public quizzes, classroom units on AI images)
PUBLIC_RATE_TEXT = ("In large public “Real or not?” quizzes people are right about 62% of the time; "
                    "detectors are not 100% accurate either.")


# ------------------------------------------------------------------------------------------ the spec and its link
def widget_defaults(spec: QuizSpec | None, cells: Sequence[int], patterns: Sequence[str], generators: Sequence[str],
                    selected_cell: int | None = None) -> dict:
    """Start values of the teacher's widgets (``source, n, seed, cell, pattern, lab, out, gen``): the current
    quiz's (``spec``), else the whole bundle, :data:`DEFAULT_N` images, seed :data:`DEFAULT_SEED`; the cell
    defaults to ``selected_cell``. Values that are not among the choices (``cells``, ``patterns``,
    ``generators``) are left out, so the widgets fall back to their first choice."""
    s = spec or QuizSpec()  # the whole bundle, DEFAULT_N images, DEFAULT_SEED
    out: dict = {"source": s.source, "n": s.n, "seed": s.seed}
    cell = int(s.value) if s.source == "cell" else selected_cell
    if cell in cells:
        out["cell"] = cell
    if s.source == "pattern" and s.value in patterns:
        out["pattern"] = s.value
    f = filters_from_value(s.value) if s.source == "filter" else None
    if f is not None:
        out.update(lab=f.label, out=f.outcome)
        gen = f.generators[0] if f.generators else "any"
        if gen == "any" or gen in generators:
            out["gen"] = gen
    return out


def describe(spec: QuizSpec) -> str:
    """The spec in words: "10 images drawn with seed 42 from cell 13"."""
    where = {"all": "the whole bundle", "cell": f"cell {spec.value}", "pattern": f"the pattern “{spec.value}”"}
    if spec.source == "filter":
        f = filters_from_value(spec.value) or ov.Filters()
        bits = [f"{SAY[f.label]} images" if f.label in SAY else "all images",
                {"correct": "the model got right", "wrong": "the model got wrong"}.get(f.outcome, ""),
                f"of {f.generators[0]}" if f.generators else ""]
        where[spec.source] = " ".join(b for b in bits if b)
    return f"{spec.n} image{'s' if spec.n != 1 else ''} drawn with seed {spec.seed} from {where[spec.source]}"


def quiz_link(base_url: str | None, bundle: str | None, spec: QuizSpec) -> str:
    """The address a teacher shares: ``base_url`` (the quiz page's URL, may be None for a relative link) with
    the bundle (as links name it), ``page=quiz`` and the spec."""
    query = vs.to_query(vs.LinkState(bundle=bundle, page="quiz", quiz=spec.to_param()))
    return f"{(base_url or '').rstrip('?')}?{urlencode(query, safe=':,/')}"


# ------------------------------------------------------------------------------------------ which images
def _order_key(seed: int, image_id: str) -> str:
    return hashlib.sha1(f"{int(seed)}:{image_id}".encode()).hexdigest()


def candidates(images: pd.DataFrame, spec: QuizSpec, patterns: Mapping[str, Sequence[str]] | None = None) -> pd.Series:
    """Ids of the labelled images of ``images`` the spec draws from (bundle order). ``patterns``: saved
    pattern name -> image ids (only needed for ``source="pattern"``; an unknown name gives none)."""
    label = images["label"].astype(object)
    keep = label.isin(LABELS).to_numpy().copy()
    if spec.source == "cell":
        keep &= (images["cell"].to_numpy() == int(spec.value))
    elif spec.source == "pattern":
        keep &= images["image_id"].isin(list((patterns or {}).get(spec.value, ()))).to_numpy()
    elif spec.source == "filter":
        f = filters_from_value(spec.value)
        keep &= ov.filter_mask(images, f) if f is not None else False
    return images.loc[keep, "image_id"].astype(str)


def quiz_images(images: pd.DataFrame, spec: QuizSpec, patterns: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The quiz's image ids in play order: the first ``spec.n`` candidates (:func:`candidates`) sorted by
    ``sha1(f"{seed}:{image_id}")``. Deterministic: independent of row order, platform and library versions."""
    ids = candidates(images, spec, patterns).tolist()
    return sorted(ids, key=lambda i: _order_key(spec.seed, i))[: int(spec.n)]


# ------------------------------------------------------------------------------------------ the reveal
@dataclass(frozen=True)
class Reveal:
    """What a student sees after answering one image.

    ``truth`` / ``pred`` in ``("real", "fake")``; ``p_fake``; ``dims``: the :data:`N_TOP_DIMS` dimensions
    that pushed hardest towards the prediction (largest ``z_i * w2_i`` towards it), with their
    ``contributions`` (signed, to the fake logit) and ``exemplars`` (:data:`N_EXEMPLARS` other image ids per
    dimension); ``sentence``: one plain sentence.
    """

    image_id: str
    truth: str
    p_fake: float
    pred: str
    dims: tuple[int, ...]
    contributions: tuple[float, ...]
    exemplars: tuple[tuple[str, ...], ...]
    sentence: str

    @property
    def model_right(self) -> bool:
        return self.pred == self.truth


def exemplars(ids: Sequence[str], z: np.ndarray, w2: np.ndarray, dim: int, towards: float, exclude: str,
              k: int = N_EXEMPLARS) -> list[str]:
    """The ``k`` images (other than ``exclude``) where dimension ``dim`` pushes hardest the same way as in
    the quiz image: largest ``sign(towards) * z_dim * w2_dim`` (the highest ``z_dim`` when both are positive)."""
    score = np.sign(towards or 1.0) * np.asarray(z, np.float64)[:, dim] * float(w2[dim])
    out = []
    for j in np.argsort(-score, kind="stable"):
        if ids[j] != exclude:
            out.append(str(ids[j]))
        if len(out) == k:
            break
    return out


def sentence(pred: str, p_fake: float, dims: Sequence[int], right: bool, names: Sequence[str] = ()) -> str:
    """"The model said AI (p_fake 0.91), mostly because of dim 7 and dim 3 · smooth skin; it was right."
    (``names``: ``Bundle.dimension_names``.)"""
    which = " and ".join(dimension_label(d, names) for d in dims)
    return f"The model said {SAY[pred]} (p_fake {p_fake:.2f}), mostly because of {which}; " \
           f"it was {'right' if right else 'wrong'}."


def reveal(images: pd.DataFrame, z: np.ndarray, w2: np.ndarray, image_id: str, names: Sequence[str] = ()) -> Reveal:
    """The reveal of ``image_id``: ``images`` the bundle's table (``image_id, label, p_fake, pred``), ``z``
    ``[N, 16]`` in its row order, ``w2`` ``[16]`` the classifier weights (``views.attention.head_weights``),
    ``names`` the dimensions' names (``Bundle.dimension_names``) for the sentence."""
    ids = images["image_id"].astype(str).tolist()
    row = ids.index(str(image_id))
    r = images.iloc[row]
    p = float(r["p_fake"])
    contrib = va.contributions(np.asarray(z)[row: row + 1], w2)
    order = va.dimension_order(contrib, va.logits(np.array([p])))[0]
    dims = tuple(int(d) for d in order[:N_TOP_DIMS])
    truth, pred = str(r["label"]), str(r["pred"])
    ex = tuple(tuple(exemplars(ids, z, w2, d, contrib[0, d], str(image_id))) for d in dims)
    return Reveal(str(image_id), truth, p, pred, dims, tuple(float(contrib[0, d]) for d in dims), ex,
                  sentence(pred, p, dims, pred == truth, names))


# ------------------------------------------------------------------------------------------ the score
@dataclass(frozen=True)
class Score:
    """The end screen: ``n`` images; ``student`` / ``model`` right answers; the images (ids, or positions when
    no ids are given) that fooled only the student, only the model, or both; the student's mean sureness when
    right and when wrong (None when not given)."""

    n: int
    student: int
    model: int
    fooled_student: list = field(default_factory=list)
    fooled_model: list = field(default_factory=list)
    fooled_both: list = field(default_factory=list)
    sure_right: float | None = None
    sure_wrong: float | None = None


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def score(answers: Sequence[str], truths: Sequence[str], model_preds: Sequence[str],
          ids: Sequence[str] | None = None, sure: Sequence[float | None] | None = None) -> Score:
    """Score a played quiz. ``answers``, ``truths``, ``model_preds`` (and ``ids``, ``sure``) are aligned lists
    of labels in ``("real", "fake")``; an unanswered image (None) counts as wrong for the student."""
    if not len(answers) == len(truths) == len(model_preds):
        raise ValueError("answers, truths and model_preds must have the same length")
    keys = list(ids) if ids is not None else list(range(len(answers)))
    you = [a == t for a, t in zip(answers, truths)]
    model = [m == t for m, t in zip(model_preds, truths)]
    sure = list(sure) if sure is not None else [None] * len(answers)
    return Score(
        n=len(answers), student=sum(you), model=sum(model),
        fooled_student=[k for k, y, m in zip(keys, you, model) if not y and m],
        fooled_model=[k for k, y, m in zip(keys, you, model) if y and not m],
        fooled_both=[k for k, y, m in zip(keys, you, model) if not y and not m],
        sure_right=_mean([s for s, y in zip(sure, you) if y]),
        sure_wrong=_mean([s for s, y in zip(sure, you) if not y]))


def score_text(s: Score) -> str:
    """One plain line comparing the student with the model."""
    if s.n == 0:
        return "No images answered."
    if s.student == s.model:
        cmp = "the same as the computer"
    else:
        cmp = "better than the computer" if s.student > s.model else "the computer did better"
    return f"You were right on {s.student} of {s.n} images ({s.student / s.n:.0%}), the computer on {s.model} " \
           f"({s.model / s.n:.0%}): {cmp}."


def play_order(images: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """The rows of ``images`` for ``ids`` in quiz order (``image_id, label, pred, p_fake``)."""
    return images.set_index("image_id").loc[list(ids), ["label", "pred", "p_fake"]].reset_index()


# ------------------------------------------------------------------------------------------ what the page shows
def picture(bundle, image_id: str, side: int = 448):
    """The analysed file of ``image_id`` as RGB PIL scaled to a longest side of ``side`` px (small images are
    enlarged, so every question shows the same size); its thumbnail when the file cannot be read any more."""
    image = bundle.decode(image_id, "the quiz picture", thumbnail_fallback=True)
    scale = int(side) / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def map_tiles(picture_, maps: np.ndarray, p_fake: float, size: int = 300) -> list:
    """Two ``views.attention.Tile``: the (centre-cropped) image and its fake-logit map over it.
    ``maps`` ``[17, side, side]`` of the image."""
    logit = float(va.logits(np.array([p_fake]))[0])
    return va.image_tiles(picture_, maps, np.zeros(N_DIMS), np.zeros(0, dtype=int), size=size, logit=logit)


def captions(images: pd.DataFrame, ids: Sequence[str], with_p: bool = True) -> list[str]:
    """Per image: "AI · p_fake 0.91" (the truth and the model's p_fake), or only "AI" without ``with_p``."""
    t = images.set_index("image_id").loc[list(ids)]
    return [SAY.get(str(lab), "?") + (f" · p_fake {p:.2f}" if with_p else "")
            for lab, p in zip(t["label"], t["p_fake"])]


def cell_choices(images: pd.DataFrame) -> list[int]:
    """Cells (of ``images``'s own grid) that hold labelled images, the fullest first."""
    lab = images.loc[images["label"].astype(object).isin(LABELS)]
    counts = lab.groupby("cell").size().sort_values(ascending=False, kind="stable")
    return [int(c) for c in counts.index]


def push_text(dim: int, contribution: float, names: Sequence[str] = ()) -> str:
    """"dim 7 · smooth skin pushed towards AI (+1.23 on the fake logit)" (``names``: ``Bundle.dimension_names``)."""
    side = "AI" if contribution >= 0 else "real"
    return f"{dimension_label(dim, names)} pushed towards {side} ({contribution:+.2f} on the fake logit)"


# ------------------------------------------------------------------------------------------ the reveal in plain words
#: what a student should look at next time, by the image's truth (one sentence each; ages 12 and up)
TIPS: dict[str, str] = {
    "fake": "Next time, look closely at hands, text, eyes and edges: AI often gets small things wrong.",
    "real": "Next time, look for small messy things, like dust, odd light or a crowd: real photos are full of them.",
}
UNTRAINED = ("This practice computer was never trained, so its guess is just luck. It has no reasons to show "
             "you.")
MAP_CAPTION = "Bright parts: where the computer looked most. It shows where it looked, not what is fake."
NO_MAP = "The computer's view of this picture is not ready, so we only show the picture."
STUDENT_LINE = "Look at each picture. Is it a real photo, or made by AI? Pick one, then see what the computer said."


@dataclass(frozen=True)
class PlainReveal:
    """The reveal as a 12-year-old reads it: ``truth``, ``you`` (the student's answer), ``guess`` (the
    computer's guess and how sure, in words), ``looked`` (caption of the spotlight picture, or why there is
    none), ``named`` (names teachers gave to the looks that pushed the guess), ``examples`` (a sentence
    before the example pictures of the looks without a name; "" when none are shown), ``tip``; ``trusted``
    False: a random model, no "because" at all."""

    truth: str
    you: str
    guess: str
    looked: str
    named: tuple[str, ...]
    examples: str
    tip: str
    trusted: bool

    def text(self) -> str:
        """Everything a student reads, one sentence after the other (for readability checks)."""
        named = f"What pushed its guess most has a name: {', '.join(self.named)}." if self.named else ""
        return " ".join(t for t in (self.truth, self.you, self.guess, self.looked, named, self.examples, self.tip)
                        if t)


def how_sure(p_fake: float) -> str:
    """How sure a guess of ``p_fake`` (0..1) is, in words: "quite sure: about 8 in 10"."""
    conf = max(float(p_fake), 1.0 - float(p_fake))
    k = int(np.clip(round(conf * 10), 5, 10))
    if conf < 0.6:
        return "not sure at all: it was close to a coin toss"
    if conf >= 0.95:
        return "very sure: more than 9 in 10"
    word = "a little sure" if conf < 0.75 else "quite sure" if conf < 0.9 else "very sure"
    return f"{word}: about {k} in 10"


def the_thing(label: str) -> str:
    """"AI" or "a real photo"."""
    return "made by AI" if label == "fake" else "a real photo"


def plain_reveal(rv: Reveal, said: str, names: Sequence[str] = (), trusted: bool = True,
                 has_map: bool = True) -> PlainReveal:
    """The words of the reveal of ``rv`` for a student who ``said`` real / fake. ``names``: the dimensions'
    names (``Bundle.dimension_names``): named looks are called by their name, the others shown as example
    pictures (never by number). ``trusted`` False (a random model): no reasons, and the sentence why.
    ``has_map``: whether the spotlight picture is shown."""
    truth = f"This picture is {the_thing(rv.truth)}."
    you = "You said " + ("AI" if said == "fake" else "real") + (": well spotted!" if said == rv.truth
                                                                 else ": not this time.")
    guess = f"The computer guessed {'AI' if rv.pred == 'fake' else 'real'}."
    if not trusted:
        return PlainReveal(truth, you, f"{guess} {UNTRAINED}", "", (), "", TIPS.get(rv.truth, ""), False)
    guess += f" It was {how_sure(rv.p_fake)}, and it was {'right' if rv.model_right else 'wrong'}."
    named = tuple(f"“{dimension_name(d, names)}”" for d in rv.dims if dimension_name(d, names))
    unnamed = [d for d in rv.dims if not dimension_name(d, names)]
    examples = ("It also saw the same look in these pictures:" if unnamed else "")
    return PlainReveal(truth, you, guess, MAP_CAPTION if has_map else NO_MAP, named, examples,
                       TIPS.get(rv.truth, ""), True)


def unnamed_examples(rv: Reveal, names: Sequence[str] = ()) -> list[str]:
    """The example image ids of the looks of ``rv`` that have no name (the first of each look first)."""
    groups = [ex for d, ex in zip(rv.dims, rv.exemplars) if not dimension_name(d, names)]
    return [i for group in groups for i in group]


def spotlight(picture_, maps: np.ndarray, pred: str, size: int = 300) -> Image.Image:
    """The (centre-cropped, ``size`` px square) picture lit where the map pushed towards the computer's guess
    ``pred`` and dimmed elsewhere: no colour that reads as "the fake part". ``maps`` ``[17, side, side]``."""
    base = picture_.convert("RGB")
    w, h = base.size
    s = min(w, h)
    square = base.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
    m = np.asarray(maps, np.float32)[FAKE_LOGIT] * (1.0 if pred == "fake" else -1.0)
    m = np.clip(np.nan_to_num(m), 0.0, None)
    top = float(np.quantile(m, 0.99)) if m.size else 0.0
    light = np.clip(m / top, 0.0, 1.0) if top > 0 else np.zeros_like(m)
    light = np.asarray(Image.fromarray((light * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                       np.float32) / 255.0
    out = np.asarray(square, np.float32) * (0.25 + 0.75 * light[..., None])
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------ readability
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def syllables(word: str) -> int:
    """Syllables of an English ``word`` by vowel groups (a silent final "e" dropped); at least 1."""
    w = word.lower()
    groups = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    return max(1, groups)


def fk_grade(text: str) -> float:
    """Flesch-Kincaid grade level of ``text``: ``0.39 * words/sentence + 11.8 * syllables/word - 15.59``
    (US school grade; grade 6-7 is ages 11-13). Sentences end at ``. ! ?``."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    n_sent = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    n_syl = sum(syllables(w) for w in words)
    return 0.39 * len(words) / n_sent + 11.8 * n_syl / len(words) - 15.59


# ------------------------------------------------------------------------------------------ a class round
@dataclass(frozen=True)
class ClassResults:
    """The teacher's view of a round: ``players`` (who answered at least once), ``answers``; ``class_right``
    (share of the class's answers that were right, None before any) and ``model_right`` (the computer's share
    on the same images); ``per_image``: one row per quiz image in play order (``position, image_id, answered,
    fooled`` = share of its answers that were wrong, NaN before any); ``most_fooling``: the image id that
    fooled the largest share (None before any answer; the first in play order on a tie)."""

    players: int
    answers: int
    class_right: float | None
    model_right: float
    per_image: pd.DataFrame
    most_fooling: str | None


def class_results(answers: Sequence, ids: Sequence[str], truths: Sequence[str], preds: Sequence[str]) -> ClassResults:
    """Sum up a round: ``answers`` rows with ``player, position, right`` (``storage.class_rounds.Answer``);
    ``ids`` / ``truths`` / ``preds`` the quiz images, their labels and the computer's guesses, in play order."""
    n = len(ids)
    got = np.zeros(n, int)
    wrong = np.zeros(n, int)
    for a in answers:
        if 0 <= int(a.position) < n:
            got[a.position] += 1
            wrong[a.position] += 0 if a.right else 1
    with np.errstate(invalid="ignore", divide="ignore"):
        fooled = np.where(got > 0, wrong / np.maximum(got, 1), np.nan)
    per_image = pd.DataFrame({"position": np.arange(n), "image_id": list(ids), "answered": got, "fooled": fooled})
    total = int(got.sum())
    most = None if total == 0 else str(ids[int(np.nanargmax(fooled))])
    model = float(np.mean([p == t for p, t in zip(preds, truths)])) if n else 0.0
    return ClassResults(len({a.player for a in answers}), total,
                        None if total == 0 else float(1 - wrong.sum() / total), model, per_image, most)


def class_text(r: ClassResults) -> str:
    """One line for the teacher: "12 students answered 96 times: the class was right 71% of the time, the
    computer 60%"."""
    if r.answers == 0:
        return "No answers yet. Students join with the link or the code."
    who = f"{r.players} student{'s' if r.players != 1 else ''}"
    return f"{who} answered {r.answers} time{'s' if r.answers != 1 else ''}: the class was right " \
           f"{r.class_right:.0%} of the time, the computer {r.model_right:.0%}."


def round_link(base_url: str | None, bundle: str | None, spec: QuizSpec, code: str) -> str:
    """The link students open for a class round: :func:`quiz_link` plus ``round=<code>``."""
    return f"{quiz_link(base_url, bundle, spec)}&round={code}"


def sure_word(value: float) -> str:
    """The :data:`SURENESS` word nearest to a mean sureness ``value``."""
    return min(SURENESS, key=lambda w: abs(SURENESS[w] - float(value)))


def sure_text(s: Score) -> str:
    """How sure the student said they were, in their own words: "When you were right you were mostly “fairly
    sure”; when you were wrong, “just guessing”." ("" when they never said)."""
    bits = [f"when you were {k} you were mostly “{sure_word(v)}”" for k, v in (("right", s.sure_right),
                                                                              ("wrong", s.sure_wrong))
            if v is not None]
    return (" and ".join(bits)[0].upper() + " and ".join(bits)[1:] + ".") if bits else ""


def explorer_link(page_url: str | None, bundle: str | None) -> str:
    """The explorer's address for the curious, from the quiz page's ``page_url``: the app's root with only the
    bundle (no quiz, so it opens the explorer, not the student's view)."""
    base = str(page_url or "").split("?", 1)[0].rstrip("/")
    if base.endswith("/quiz"):
        base = base[: -len("/quiz")]
    query = vs.to_query(vs.LinkState(bundle=bundle))
    return f"{base}/" + (f"?{urlencode(query, safe=':,/')}" if query else "")
