"""Naming the dimensions (docs/design.md §3.13): the one label function, names stored in the bundle (validated, atomic,
optional), the ``name`` command, links carrying a dimension, the overview's per-cell driver, the export's
headers, concept crops, the nearest words of a vocabulary through a real (tiny) text tower and tokenizer,
and an AppTest: names given to two dimensions appear in the overview, attention, quiz and export."""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from asap_core.analyses import naming as nm
from asap_core.errors import BundleError, InputError
from asap_core.method.bundle_models import bundle_distiller
from asap_core.storage import bundle as sb
from asap_core.storage.bundle import Bundle
from asap_core.storage.labels import dimension_label, dimension_labels, named_dims, target_label
from asap_core.storage.schema import FAKE_LOGIT, N_DIMS, NAMES_FILE, Z_COLUMNS
from asap_core.views import attention as va
from asap_core.views import overview as ov
from asap_core.views import quiz as vq
from asap_core.views import state as vs
from asap_core.views.cost import words_cost
from tests.conftest_app import chart_data, local_app_env, no_exception, plain, private_copy, tiny_bundle  # noqa: F401

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 90
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def copy(tiny_bundle, tmp_path) -> Bundle:  # noqa: F811
    return private_copy(tiny_bundle, tmp_path / "bundle")


def dim_picker(at: AppTest):
    """The Dimensions page's picker (its key changes with the names)."""
    return next(s for s in at.selectbox if s.label == "Dimension")


def names_with(**named: str) -> list[str]:
    out = [""] * N_DIMS
    for k, v in named.items():
        out[int(k[1:])] = v
    return out


# ------------------------------------------------------------------------------------------ labels
def test_one_label_function_keeps_the_index_visible():
    names = names_with(d3="smooth skin", d7="  ")
    assert dimension_label(3) == "dim 3" and dimension_label(3, names) == "dim 3 · smooth skin"
    assert dimension_label(7, names) == "dim 7"                      # blank = unnamed
    assert target_label(FAKE_LOGIT, names) == "fake logit" and target_label(3, names) == "dim 3 · smooth skin"
    assert dimension_labels(names)[3] == "dim 3 · smooth skin" and len(dimension_labels()) == N_DIMS
    assert named_dims(names) == [3] and dimension_label(2, ["x"]) == "dim 2"   # short lists: no names
    with pytest.raises(IndexError):
        dimension_label(FAKE_LOGIT)


# ------------------------------------------------------------------------------------------ names in the bundle
def test_names_are_optional_validated_and_written_atomically(copy):
    assert not (copy.path / NAMES_FILE).exists() and copy.dimension_names == ("",) * N_DIMS
    names = copy.set_dimension_name(3, "  smooth \n skin ")
    assert names[3] == "smooth skin" and Bundle.open(copy.path).dimension_names == names
    data = json.loads((copy.path / NAMES_FILE).read_text())
    assert data["version"] == 1 and data["names"][3] == "smooth skin" and len(data["names"]) == N_DIMS
    assert copy.set_dimension_name(5, "teeth")[3] == "smooth skin"           # one name changes, others stay
    assert copy.set_dimension_name(3, None)[3] == "" and copy.dimension_names[5] == "teeth"
    assert [p.name for p in copy.path.glob(".tmp-*")] == []
    for bad in ("x" * 41, "tab\x07bell", 3):
        with pytest.raises(InputError):
            copy.set_dimension_name(1, bad)
    for dim in (-1, N_DIMS, True, "3"):
        with pytest.raises(InputError):
            copy.set_dimension_name(dim, "x")
    with pytest.raises(InputError, match="expected a list of 16"):
        copy.save_dimension_names(["a"] * (N_DIMS + 1))
    assert copy.save_dimension_names(names_with(d0="a", d15="b"))[15] == "b"


@pytest.mark.parametrize("content", ["{", "[]", '{"names": ["a"]}', '{"names": ' + json.dumps(["x" * 99] * 16) + "}"],
                         ids=["not JSON", "a list", "one name", "too long"])
def test_a_malformed_names_file_is_named_with_its_fix(copy, content):
    (copy.path / NAMES_FILE).write_text(content)
    with pytest.raises(BundleError) as err:
        Bundle.open(copy.path)
    assert NAMES_FILE in err.value.message and "asap name" in err.value.hint


def test_name_command_names_clears_and_refuses(copy, capsys):
    from asap_core.cli import main

    assert main(["name", str(copy.path), "4", "blurry background"]) == 0
    assert "dim 4 · blurry background" in capsys.readouterr().out.splitlines()
    assert copy.dimension_names[4] == "blurry background"
    assert main(["name", str(copy.path)]) == 0 and "dim 4 · blurry background" in capsys.readouterr().out
    assert main(["name", str(copy.path), "4", "--clear"]) == 0 and copy.dimension_names[4] == ""
    assert main(["name", str(copy.path), "16", "x"]) == 2 and "no dimension 16" in capsys.readouterr().err
    assert main(["name", str(copy.path), "4"]) == 2 and "either a NAME or --clear" in capsys.readouterr().err


def test_a_link_carries_the_dimension_by_index():
    link = vs.parse_query({"page": "dimensions", "dim": "7"})
    assert link.dim == 7 and vs.to_query(link) == {"page": "dimensions", "dim": "7"}
    assert vs.parse_query({"dim": "16"}).dim is None and vs.parse_query({"dim": "x"}).dim is None


# ------------------------------------------------------------------------------------------ views
def test_the_overview_names_the_dimension_pushing_each_cell_most():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.1, size=(6, N_DIMS))
    z[:3, 5] = 4.0                      # cell 0: dim 5 pushes towards fake (w2 > 0)
    z[3:, 9] = 4.0                      # cell 1: dim 9 pushes towards real (w2 < 0)
    w2 = np.zeros(N_DIMS)
    w2[5], w2[9] = 1.0, -1.0
    images = pd.concat([pd.DataFrame({"cell": [0, 0, 0, 1, 1, 1], "p_fake": [0.9] * 3 + [0.1] * 3}),
                        pd.DataFrame(z, columns=Z_COLUMNS)], axis=1)
    d = ov.cell_drivers(images, w2, names_with(d5="smooth skin")).set_index("cell")
    assert d.loc[0, "driver_dim"] == 5 and d.loc[0, "driver"].startswith("dim 5 · smooth skin (+")
    assert d.loc[1, "driver_dim"] == 9 and d.loc[1, "driver"].startswith("dim 9 (-")
    assert d.loc[1, "driver"].endswith("towards real)")
    slices = ov.with_drivers(pd.DataFrame({"cell_id": [0, 1, 2]}), d.reset_index())
    assert slices["driver"].tolist() == [d.loc[0, "driver"], d.loc[1, "driver"], "-"]
    assert ov.selection_driver(images.iloc[:3], w2).startswith("dim 5 (")


def test_attention_tiles_and_contributions_carry_the_names():
    maps = np.zeros((17, 4, 4), np.float32)
    contrib = np.arange(N_DIMS, dtype=float)
    tiles = va.image_tiles(Image.new("RGB", (40, 30)), maps, contrib, np.arange(N_DIMS)[::-1],
                           names=names_with(d15="glasses"))
    assert tiles[1].caption.startswith("fake logit") and tiles[2].caption == "dim 15 · glasses · +15.00"
    assert tiles[3].caption == "dim 14 · +14.00"


def test_concept_crops_cut_each_image_to_its_dimensions_hot_patches():
    maps = np.zeros((2, 17, 4, 4), np.float32)
    maps[0, 2, 0, 0] = 1.0                                  # image 0: dim 2 hot in the top-left patch
    maps[1, 2, 3, 3] = 1.0
    crops = nm.dimension_crops([Image.new("RGB", (80, 40)), Image.new("RGB", (40, 40))], maps, 2, fraction=1 / 16)
    assert [c.size for c in crops] == [(10, 10), (10, 10)]  # the centred 40 px square, one 10 px patch
    with pytest.raises(InputError):
        nm.dimension_crops([Image.new("RGB", (8, 8))], maps, 2)


def test_the_export_names_the_dimensions_in_json_and_csv(copy):
    from asap_core.analyses.patterns import PatternStore, pattern_from_selection
    from asap_core.views.patterns import export_zip

    copy.save_dimension_names(names_with(d2="hair", d11="jpeg artifacts"))
    ids = copy.images["image_id"].tolist()[:5]
    PatternStore(copy).add(pattern_from_selection("five", ids))
    zf = zipfile.ZipFile(io.BytesIO(export_zip(copy, PatternStore(copy).list(), with_impact=False)))
    meta = json.loads(zf.read("patterns/patterns.json"))
    assert meta["dimensions"][2] == {"index": 2, "column": "z2", "name": "hair", "label": "dim 2 · hair"}
    mean = meta["patterns"][0]["mean_z"]
    assert mean["dim 11 · jpeg artifacts"] == pytest.approx(copy.images.set_index("image_id").loc[ids, "z11"].mean())
    header = pd.read_csv(io.BytesIO(zf.read("patterns/patterns.csv"))).columns.tolist()
    assert "mean dim 2 · hair" in header and "mean dim 11 · jpeg artifacts" in header and "mean dim 0" in header


# ------------------------------------------------------------------------------------------ words
def test_vocabulary_is_parsed_deduplicated_and_bounded():
    assert nm.parse_vocabulary("  smooth   skin\n\nSmooth skin\nteeth\n") == ["smooth skin", "teeth"]
    assert nm.parse_vocabulary(nm.vocabulary_text()) == list(nm.DEFAULT_VOCABULARY)
    assert 100 <= len(nm.DEFAULT_VOCABULARY) <= nm.MAX_WORDS
    with pytest.raises(InputError):
        nm.parse_vocabulary("\n".join(f"w{i}" for i in range(nm.MAX_WORDS + 1)))
    with pytest.raises(InputError):
        nm.parse_vocabulary("x" * (nm.MAX_WORD_CHARS + 1))
    high, low = nm.WordScores(("a", "b", "c"), np.array([[1.0], [3.0], [2.0]]) * np.ones(N_DIMS)).ends(0, k=5)
    assert high == [("b", 3.0), ("c", 2.0)] and low == [("a", 1.0)]


def test_which_checkpoints_can_rank_words(tiny_clip_dir, tmp_path):
    from asap_core.model.text import text_tower_problem

    assert "no tokenizer" in text_tower_problem(tiny_clip_dir)                # the random CLIP: a text stub
    vision_only = tmp_path / "vision"
    vision_only.mkdir()
    (vision_only / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 32}))
    assert "image-only" in text_tower_problem(vision_only)
    assert text_tower_problem(write_tiny_tokenizer(Path(shutil.copytree(tiny_clip_dir, tmp_path / "tok")))) is None


def write_tiny_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer over the letters (ids below the tiny text tower's vocabulary of 100; end of text
    = 1, as the tiny config says)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
    for ch in LETTERS:
        vocab[ch + "</w>"] = len(vocab)
    vocab["th</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h</w>\n")
    return folder


@pytest.fixture
def clip_with_tokenizer(tiny_clip_dir, tmp_path) -> Path:
    return write_tiny_tokenizer(Path(shutil.copytree(tiny_clip_dir, tmp_path / "clip_tok")))


def test_words_are_ranked_by_z_through_the_text_tower_and_the_images_path(copy, clip_with_tokenizer, tiny_clip_dir):
    import torch
    from transformers import CLIPConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from asap_core.method.projection import VisionOnlyProjection
    from asap_core.model.factory import load_text_encoder
    from asap_core.model.text import NoTextTower
    from asap_core.storage.cache import is_cached

    with pytest.raises(NoTextTower, match="no tokenizer"):
        nm.word_scores(copy, ["hair"])                         # the bundle's random CLIP: a text stub only
    words = ["smooth skin", "teeth", "hair", "glasses", "watermark", "blurry background", "text", "sky"]
    enc = load_text_encoder(str(clip_with_tokenizer))
    assert load_text_encoder(str(clip_with_tokenizer)) is enc             # one cached text tower per checkpoint
    scores = nm.word_scores(copy, words, enc)

    tok = CLIPTokenizer.from_pretrained(str(clip_with_tokenizer))       # by hand: tokens -> text embeds
    cfg = CLIPConfig.from_pretrained(str(clip_with_tokenizer))
    cfg.text_config.projection_dim = cfg.projection_dim                  # the text side of the joint space
    model = CLIPTextModelWithProjection.from_pretrained(str(clip_with_tokenizer), config=cfg.text_config).eval()
    with torch.no_grad():
        e = model(**tok(words, padding=True, truncation=True, max_length=16, return_tensors="pt")).text_embeds
    e = torch.nn.functional.normalize(e, dim=-1).numpy()
    d = bundle_distiller(copy)                                                   # then the images' path
    v = VisionOnlyProjection.from_pretrained(copy.path / "model").transform(e)
    z = ((v - d.center.numpy()) * float(d.scale)) @ d.dims.weight.detach().numpy().T + d.dims.bias.detach().numpy()
    np.testing.assert_allclose(scores.z, z, rtol=1e-4, atol=1e-5)
    assert np.unique(np.round(z[:, 0], 6)).size == len(words)            # distinct words, distinct values
    for dim in (0, 7):
        high, low = scores.ends(dim, k=3)
        order = np.argsort(-z[:, dim])
        assert [w for w, _ in high] == [words[i] for i in order[:3]]
        assert [w for w, _ in low] == [words[i] for i in order[::-1][:3]]
    key = nm.words_cache_key(enc.cache_key, d.fingerprint, words)
    assert is_cached(copy.cache_dir, nm.CACHE_NAMESPACE, key)
    np.testing.assert_array_equal(nm.word_scores(copy, words, enc).z, scores.z)   # read back from the cache


# ------------------------------------------------------------------------------------------ the app
def test_a_dimension_link_opens_the_dimension_and_shows_its_name(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    local_app_env(monkeypatch, tmp_path / "cache")
    b = private_copy(tiny_bundle, tmp_path / "bundle")
    b.set_dimension_name(5, "teeth")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": str(b.path), "page": "dimensions", "dim": "5"})
    at.run()
    no_exception(at)
    pick = dim_picker(at)
    assert pick.value == 5 and any(o.startswith("dim 5 · teeth · w ") for o in pick.options)
    assert at.text_input(key="w_dim_name_5").value == "teeth"
    assert any("Nearest words: not available" in c.value and "no tokenizer" in c.value for c in at.caption)
    assert at.query_params["dim"] == "5" and at.query_params["page"] == "dimensions"   # the link it writes


@pytest.mark.slow
def test_a_names_file_broken_after_opening_is_reported_not_raised(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    local_app_env(monkeypatch, tmp_path / "cache")
    b = private_copy(tiny_bundle, tmp_path / "bundle")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["bundle_path"] = str(b.path)
    at.run()
    at.switch_page("app_pages/dimensions.py").run()
    (b.path / NAMES_FILE).write_text("{")                      # the open bundle is cached: no re-validation
    at.run()
    no_exception(at)
    assert any(NAMES_FILE in plain(e.value) for e in at.error) and dim_picker(at).options[0].startswith("dim ")


def test_hosted_visitors_read_names_but_cannot_write_them(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    from asap_core.settings import reload_settings

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    sb.set_dimension_name(root / "tiny", 2, "hair")
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    reload_settings()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny", "page": "dimensions", "dim": "2"})
    at.run()
    no_exception(at)
    assert not [w for w in at.text_input if w.key == "w_dim_name_2"] and not [x for x in at.button
                                                                             if x.key == "dim_name_save"]
    assert any("Name: **hair**" in c.value for c in at.caption)


def named_pair(b: Bundle) -> tuple[int, int, int, int]:
    """(d1, d2, seed, cell): a one-image quiz (seed) whose reveal names d1 and d2, d1 being the dimension that
    pushes the quiz image's cell most on the overview."""
    w2 = va.head_weights(bundle_distiller(b))
    drivers = ov.cell_drivers(b.images, w2).set_index("cell")["driver_dim"]
    cells = b.images.set_index("image_id")["cell"]
    for seed in range(500):
        (first,) = vq.quiz_images(b.images, vq.QuizSpec("all", "", 1, seed))
        rv = vq.reveal(b.images, b.z, w2, first)
        d1 = int(drivers[cells[first]])
        if d1 in rv.dims:
            return d1, next(d for d in rv.dims if d != d1), seed, int(cells[first])
    pytest.skip("no quiz image whose reveal holds its cell's driver")


@pytest.mark.slow
def test_names_given_to_two_dimensions_appear_in_overview_attention_quiz_and_export(tiny_bundle, tmp_path,  # noqa: F811
                                                                                     monkeypatch, clip_with_tokenizer):
    from asap_core.analyses.patterns import PatternStore, pattern_from_selection
    from asap_core.cli import main

    local_app_env(monkeypatch, tmp_path / "cache")
    b = private_copy(tiny_bundle, tmp_path / "bundle")
    d1, d2, seed, cell = named_pair(b)
    label1, label2 = f"dim {d1} · smooth skin", f"dim {d2} · blurry background"
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["bundle_path"] = str(b.path)
    at.session_state["model_override"] = {str(b.path): str(clip_with_tokenizer)}   # a copy with a tokenizer
    at.run()
    at.switch_page("app_pages/dimensions.py").run()                  # name d1 on the Dimensions page ...
    dim_picker(at).set_value(d1).run()
    at.text_input(key=f"w_dim_name_{d1}").input("smooth skin")
    at.button(key="dim_name_save").click().run()
    no_exception(at)
    assert b.dimension_names[d1] == "smooth skin" and any(label1 in c.value for c in at.caption)
    at.toggle(key="w_dim_words").set_value(True).run()               # ... where its nearest words show
    no_exception(at)
    assert any(m.value.startswith("**High end:**") for m in at.markdown)
    assert main(["name", str(b.path), str(d2), "blurry background"]) == 0   # ... and d2 from the command line

    at.switch_page("app_pages/overview.py").run()
    no_exception(at)
    (chart,) = [c for c in at.get("vega_lite_chart") if "cell_id" in chart_data(c)]
    drivers = chart_data(chart).drop_duplicates("cell_id").set_index("cell_id")["driver"]
    assert drivers[cell].startswith(label1 + " (")                   # the tooltip of the quiz image's cell

    image = vq.quiz_images(b.images, vq.QuizSpec("all", "", 1, seed))[0]
    at.session_state["sel_images"] = [image]
    at.switch_page("app_pages/attention.py").run()
    no_exception(at)
    captions = [c for el in at.get("image") for c in (i.caption for i in el.proto.imgs)]
    assert any(c.startswith(label1 + " · ") for c in captions) and any(c.startswith(label2 + " · ") for c in captions)

    at.session_state["quiz_spec"] = vq.QuizSpec("all", "", 1, seed).to_param()
    at.switch_page("app_pages/quiz.py").run()
    at.button(key="quiz_real").click().run()
    no_exception(at)
    shown = " ".join(plain(e.value) for e in [*at.info, *at.markdown, *at.caption])
    # a random model's reveal gives no reasons, so no names (tests/views/test_quiz.py: a trained one names them)
    assert "never trained" in shown and "smooth skin" not in shown and "blurry background" not in shown

    PatternStore(b).add(pattern_from_selection("named", [image]))
    at.switch_page("app_pages/patterns.py").run()
    at.button(key="pat_impact").click().run()                     # the page exports once impacts exist
    at.button(key="pat_export").click().run()
    no_exception(at)
    zf = zipfile.ZipFile(io.BytesIO(at.session_state["_pat_zip"][1]))
    header = zf.read("patterns/patterns.csv").decode("utf-8").splitlines()[0]
    assert f"mean {label1}" in header and f"mean {label2}" in header
    assert {label1, label2} <= {d["label"] for d in json.loads(zf.read("patterns/patterns.json"))["dimensions"]}


@pytest.mark.slow
def test_hosted_visitors_pay_for_ranking_new_words(tiny_bundle, tmp_path, monkeypatch, clip_with_tokenizer):  # noqa: F811
    from asap_core.model.factory import load_text_encoder
    from asap_core.settings import reload_settings

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    b = Bundle.open(root / "tiny")
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "1")  # one map image's worth: 10 words
    reload_settings()
    eleven = [f"word{c}" for c in "abcdefghijk"]
    assert words_cost(len(eleven)) == 2 and words_cost(8) == 1 and words_cost(0) == 1
    enc = load_text_encoder(str(clip_with_tokenizer))

    def ranked(words: list[str]) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params.update({"bundle": "tiny", "page": "dimensions", "dim": "2"})
        at.session_state["model_override"] = {str(b.path): str(clip_with_tokenizer)}
        at.run()
        at.text_area(key="w_vocab").input("\n".join(words))
        at.toggle(key="w_dim_words").set_value(True).run()
        no_exception(at)
        return at

    at = ranked(eleven)  # over the budget: refused in words, nothing computed
    assert any("per visitor and day" in e.value for e in at.error)
    assert not any(m.value.startswith("**High end:**") for m in at.markdown)
    assert not nm.words_cached(b, eleven, enc)
    at = ranked(eleven[:8])  # within it: ranked and cached
    assert any(m.value.startswith("**High end:**") for m in at.markdown) and nm.words_cached(b, eleven[:8], enc)
    at = ranked(eleven[:8])  # cached: free, even with the budget spent
    assert any(m.value.startswith("**High end:**") for m in at.markdown) and not at.error
