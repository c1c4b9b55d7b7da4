"""Query values become numbers through one function (``views.state.parse_int``): only ASCII digits, bounded
length, within bounds; anything else is ignored quietly (``cell=²``, 5000-digit values,
``quiz=cell:²:5:1`` used to reach ``int()`` and end in "Something went wrong"). Messages to visitors name no
exception class, internal function or operator setting (``model.hints.hosted_words``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from asap_core.errors import AsapError, InputError
from asap_core.model.hints import OPERATOR_FIX, hosted_words
from asap_core.storage.schema import N_DIMS
from asap_core.views import state as vs
from asap_core.views.quiz import MAX_QUIZ, MAX_SEED, QuizSpec
from tests.conftest_app import no_exception, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
BIG = "9" * 5000
UNICODE_DIGITS = ["²", "٣", "१२", "①", "𝟗", "³⁴"]  # str.isdigit() says True to each; int() refuses or reads them


@pytest.mark.parametrize("text", [*UNICODE_DIGITS, BIG, "-1", "+3", " 3", "3 ", "3.0", "1e3", "", "0x10", "3_000",
                                  None, 3, "12345678901"])
def test_parse_int_refuses_anything_but_ascii_digits_in_bounds(text):
    assert vs.parse_int(text) is None


def test_parse_int_reads_ascii_digits_within_bounds():
    assert vs.parse_int("0") == 0 and vs.parse_int("42", 1, 50) == 42 and vs.parse_int("007", 0, 999) == 7
    assert vs.parse_int("51", 1, 50) is None and vs.parse_int("0", 1, 50) is None
    assert vs.parse_int(str(vs.MAX_LINK_INT)) == vs.MAX_LINK_INT


@pytest.mark.parametrize("value", [*UNICODE_DIGITS, BIG, "-1", f"{vs.MAX_LINK_CELLS}"])
def test_bad_cells_grids_and_dims_are_dropped_quietly(value):
    state = vs.parse_query({"cell": f"{value},3", "grid": value, "dim": value, "page": "overview"})
    assert state.cells == [3] and state.grid is None and state.dim is None and state.page == "overview"


def test_grid_and_dim_bounds():
    assert vs.parse_query({"grid": "200", "dim": str(N_DIMS - 1)}).grid == 200
    assert vs.parse_query({"grid": "201", "dim": str(N_DIMS)}) == vs.LinkState()
    assert vs.parse_query({"grid": "0"}).grid is None


@pytest.mark.parametrize("param", ["cell:²:5:1", "cell:٣:5:1", f"cell:{BIG}:5:1", "cell:-1:5:1", "cell::5:1",
                                   "all:²:1", f"all:{BIG}:1", f"all:5:{BIG}", "all:5:²", f"all:{MAX_QUIZ + 1}:1",
                                   f"all:5:{MAX_SEED + 1}", "all:0:1", "all:-5:1", f"pattern:{'p' * 300}:5:1",
                                   "filter:fake.wrong:5:١"])
def test_bad_quiz_specs_are_none(param):
    assert QuizSpec.from_param(param) is None
    state = vs.parse_query({"quiz": param})
    assert state.quiz is None and state.page is None


def test_good_quiz_specs_round_trip_with_one_spelling():
    assert QuizSpec.from_param("cell:13:10:42") == QuizSpec("cell", "13", 10, 42)
    assert QuizSpec.from_param("cell:013:10:42").to_param() == "cell:13:10:42"
    assert QuizSpec.from_param(f"all:{MAX_QUIZ}:{MAX_SEED}") == QuizSpec("all", "", MAX_QUIZ, MAX_SEED)
    assert QuizSpec.from_param("pattern:a:b:3:0") == QuizSpec("pattern", "a:b", 3, 0)


# ------------------------------------------------------------------------------------------ in the app
@pytest.fixture
def hosted_root(tiny_bundle, tmp_path, set_env):  # noqa: F811
    import shutil

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(root), ASAP_BUNDLE=None, ASAP_CACHE_DIR=str(tmp_path / "cache"),
            ASAP_MODEL_ALLOWLIST=None)
    yield root
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    config.set_option("client.toolbarMode", "auto")


@pytest.mark.parametrize("params", [{"page": "quiz", "quiz": "cell:²:5:1"}, {"quiz": "cell:²:5:1"}, {"cell": "²"},
                                    {"cell": BIG, "grid": BIG, "dim": "²"}, {"page": "dimensions", "dim": "¹⁵"}])
def test_hosted_app_ignores_bad_query_values_quietly(hosted_root, params):
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"bundle": "tiny", **params})
    at.run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert not any("went wrong" in str(getattr(e, "value", "")) for e in at.warning)


# ------------------------------------------------------------------------------------------ plain messages
def test_hosted_words_drop_settings_and_exception_names():
    assert hosted_words("try again later; locally, free space in ASAP_CACHE_DIR.") == "try again later."
    assert hosted_words("if you trust this file, raise the limit with the environment variable "
                        "ASAP_MAX_IMAGE_PIXELS (pixels; 0 disables the check)") == OPERATOR_FIX
    said = hosted_words("images.parquet is not a readable Parquet table (Couldn't deserialize thrift: "
                        "TProtocolException: Invalid data).")
    assert said == "images.parquet is not a readable Parquet table."
    assert hosted_words("a.png: cannot decode image (UnidentifiedImageError: cannot identify image file).") == \
        "a.png: cannot decode image."
    assert hosted_words("The file is 3.5 MB. Use a smaller one.") == "The file is 3.5 MB. Use a smaller one."


def test_layout_errors_name_no_internal_function():
    import numpy as np

    from asap_core.method.isomatch import isomatch_grid
    from asap_core.method.layout import assign_cells, embed_2d

    bad = np.full((6, 4), np.nan)
    for call in (lambda: isomatch_grid(bad), lambda: embed_2d(bad), lambda: assign_cells(bad[:, :2], 4)):
        with pytest.raises(InputError) as err:
            call()
        text = f"{err.value.message} {err.value.hint}"
        assert "NaN" in text and not any(f in text for f in ("isomatch_grid", "embed_2d", "assign_cells"))


def test_hosted_errors_show_plain_messages(hosted_root):
    """show_error in hosted mode: no operator setting, no exception class, names shown as text."""
    script = """
import streamlit as st
from asap_core.errors import AsapError
from app_pages.glue.errors import show_error, show_warning
show_error(AsapError("[x](https://evil.example) could not be stored (OSError: [Errno 28] No space left).",
                     "try again later; locally, free space in ASAP_CACHE_DIR."))
show_warning("ASAP_HOSTED=1 needs ASAP_BUNDLE_ROOT.", "set ASAP_BUNDLE_ROOT=/srv/bundles.")
"""
    at = AppTest.from_string(script, default_timeout=30).run()
    no_exception(at)
    texts = [e.value for e in at.error] + [w.value for w in at.warning] + [c.value for c in at.caption]
    joined = " ".join(texts)
    assert "ASAP_" not in joined and "OSError" not in joined and "Errno" not in joined
    assert "](https" not in joined and "\\[x\\]\\(https\\:" in at.error[0].value
    assert at.caption[0].value == "Fix: try again later\\."
    assert isinstance(AsapError("x"), Exception)
