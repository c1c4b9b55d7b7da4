"""One bad bundle is one unavailable bundle, never a site down for everyone: bundles the tests damage (nested
JSON, NaN coordinates, zeroed or garbled Parquet, absurd metadata) are refused in words by ``validate`` /
``Bundle.open``, by the hosted policy and by ``python -m asap_core info`` (exit 2, no traceback); the explorer
lands on a good bundle, lists the bad ones as unavailable and draws every page."""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from asap_core.cli import main
from asap_core.errors import BundleError
from asap_core.hosting import HostedPolicy
from asap_core.settings import reload_settings
from asap_core.storage import bundle as bundle_mod
from asap_core.storage import schema as S
from asap_core.storage.bundle import Bundle, validate
from tests.conftest_app import no_exception, tiny_bundle  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 90
# what a visitor must never read: an exception class, a library's words, a traceback
LEAKS = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|thrift|Traceback|deserializ|recursion", re.IGNORECASE)


def _set_cell(p: Path, file: str, column: str, value) -> None:
    """Rewrite ``file`` of the bundle ``p`` with ``value`` in the first row of ``column``."""
    table = pd.read_parquet(p / file)
    table[column] = table[column].astype(type(value)) if not isinstance(value, float) else table[column]
    table.loc[0, column] = value
    table.to_parquet(p / file, index=False)


def _zero_start(p: Path) -> None:
    """images.parquet with its first 64 bytes zeroed: the footer still reads, the first column's pages do not."""
    data = bytearray((p / S.IMAGES_FILE).read_bytes())
    data[:64] = bytes(64)
    (p / S.IMAGES_FILE).write_bytes(bytes(data))


def _garble_footer(p: Path) -> None:
    """images.parquet with 150 bytes of its footer replaced: thrift garbage."""
    data = (p / S.IMAGES_FILE).read_bytes()
    (p / S.IMAGES_FILE).write_bytes(data[:-200] + bytes(range(150)) + data[-50:])


def _meta(p: Path, **changes) -> None:
    meta = json.loads((p / S.META_NAME).read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = meta
        for k in path:
            target = target[k]
        target[last] = value
    (p / S.META_NAME).write_text(json.dumps(meta))


# name -> (damage, words the message must hold)
DAMAGES = {
    "nested json": (lambda p: (p / S.META_NAME).write_text("[" * 100_000 + "]" * 100_000), S.META_NAME),
    "nan in cells x": (lambda p: _set_cell(p, S.CELLS_FILE, "x", float("nan")), "'x'"),
    "nan in map_x": (lambda p: _set_cell(p, S.IMAGES_FILE, "map_x", float("nan")), "'map_x'"),
    "inf in z3": (lambda p: _set_cell(p, S.IMAGES_FILE, "z3", float("inf")), "'z3'"),
    "zeroed start of images": (_zero_start, S.IMAGES_FILE),
    "thrift garbage": (_garble_footer, S.IMAGES_FILE),
    "absurd grid": (lambda p: _meta(p, options__grid=10**12), "grid"),
    "cell beyond any grid": (lambda p: _set_cell(p, S.CELLS_FILE, "col", 10**9), "'col'"),
    "metrics as text": (lambda p: _meta(p, metrics__val__accuracy="high"), "accuracy"),
}


def damaged_copy(src: Path, dest: Path, kind: str) -> Path:
    """A copy of the bundle ``src`` at ``dest`` (no cache), damaged as ``DAMAGES[kind]`` says."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    (dest / S.CACHE_DIR).mkdir()
    DAMAGES[kind][0](dest)
    return dest


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_each_damage_is_refused_in_words(kind, tiny_bundle, tmp_path):  # noqa: F811
    root = (tmp_path / "root").resolve()
    damaged_copy(tiny_bundle, root / "bad", kind)
    words = DAMAGES[kind][1]
    with pytest.raises(BundleError) as err:
        Bundle.open(root / "bad", read_tables=True)
    assert words in err.value.message and err.value.hint and not LEAKS.search(err.value.message)

    problem = HostedPolicy(root).bundle_problem("bad", deep=True)   # what the picker shows a visitor
    assert problem and words in problem and not LEAKS.search(problem), problem
    assert str(root) not in problem


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_info_exits_2_naming_the_file(kind, tiny_bundle, tmp_path, capsys):  # noqa: F811
    bad = damaged_copy(tiny_bundle, tmp_path / "bad", kind)
    capsys.readouterr()
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert DAMAGES[kind][1] in err and "fix:" in err and "Traceback" not in err


@pytest.mark.slow
def test_info_on_nested_json_prints_no_traceback(tiny_bundle, tmp_path):  # noqa: F811
    """The command a shell runs: exit 2, the file named, the fix, no traceback (RecursionError was raised)."""
    bad = damaged_copy(tiny_bundle, tmp_path / "bad", "nested json")
    out = subprocess.run([sys.executable, "-m", "asap_core", "info", str(bad)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"error: {bad / S.META_NAME}" in out.stderr and "fix:" in out.stderr
    assert "Traceback" not in out.stderr and "File \"" not in out.stderr


def test_shallow_validate_checks_coordinates_without_reading_every_column(tiny_bundle, tmp_path):  # noqa: F811
    """``validate`` (run for every listed bundle) refuses NaN coordinates; the zeroed first column (``path``) is
    found only by reading every row: ``Bundle.open(read_tables=True)``, what the landing bundle must pass."""
    with pytest.raises(BundleError, match="'y'"):
        validate(_inf_y(tiny_bundle, tmp_path / "y"))
    zeroed = damaged_copy(tiny_bundle, tmp_path / "z", "zeroed start of images")
    assert validate(zeroed)["complete"] is True                       # footer and id column still read
    with pytest.raises(BundleError, match="cannot be read"):
        Bundle.open(zeroed).images                                     # the table itself: a BundleError, in words


def _inf_y(src: Path, dest: Path) -> Path:
    """A copy of ``src`` with -inf in the last cell's ``y``."""
    shutil.copytree(src, dest)
    cells = pd.read_parquet(dest / S.CELLS_FILE)
    cells.loc[len(cells) - 1, "y"] = -np.inf
    cells.to_parquet(dest / S.CELLS_FILE, index=False)
    return dest


def test_policy_lands_on_the_first_bundle_that_reads_in_full(tiny_bundle, tmp_path):  # noqa: F811
    root = (tmp_path / "root").resolve()
    for i, kind in enumerate(DAMAGES):
        damaged_copy(tiny_bundle, root / f"a{i:02d}", kind)
    shutil.copytree(tiny_bundle, root / "tiny")
    (root / "bad\nname").mkdir()                                        # a name no visitor could send back
    (root / "bad\nname" / S.META_NAME).write_text("{}")
    policy = HostedPolicy(root)
    assert policy.list_bundles() == [f"a{i:02d}" for i in range(len(DAMAGES))] + ["tiny"]
    assert policy.first_usable() == "tiny"
    assert policy.first_usable(preferred="a04") == "tiny"                # even when the operator prefers it
    assert policy.bundle_problem("tiny", deep=True) is None

    _zero_start(root / "tiny")                                          # damaged after it passed: noticed
    assert "cannot be read" in policy.bundle_problem("tiny", deep=True)
    assert policy.first_usable() is None


def test_verdicts_are_remembered_per_version_of_the_files(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    """New sessions (each asks for the landing bundle) read neither the bad bundle nor the good one again."""
    root = (tmp_path / "root").resolve()
    damaged_copy(tiny_bundle, root / "a", "nan in map_x")
    shutil.copytree(tiny_bundle, root / "tiny")
    calls: list[str] = []
    real = bundle_mod.validate
    monkeypatch.setattr(bundle_mod, "validate", lambda p: calls.append(Path(p).name) or real(p))
    policy = HostedPolicy(root)
    problems = {policy.bundle_problem("a", deep=True) for _ in range(3)}
    assert [policy.first_usable() for _ in range(3)] == ["tiny"] * 3
    assert len(problems) == 1 and "'map_x'" in problems.pop()
    assert calls == ["a", "tiny"]
    _set_cell(root / "a", S.IMAGES_FILE, "map_x", 0.5)                   # repaired: read again, and it passes
    assert policy.first_usable() == "a" and calls == ["a", "tiny", "a"]


def test_an_unforeseen_failure_is_a_sentence_with_an_error_id(tiny_bundle, tmp_path, monkeypatch, caplog):  # noqa: F811
    root = (tmp_path / "root").resolve()
    shutil.copytree(tiny_bundle, root / "tiny")

    def broken(path):
        raise RuntimeError("secret detail from /srv/internal")

    monkeypatch.setattr(bundle_mod, "validate", broken)
    with caplog.at_level(logging.ERROR, logger="asap_explorer"):
        problem = HostedPolicy(root).bundle_problem("tiny")
    eid = re.search(r"error id ([0-9a-f]{8})", problem).group(1)
    assert not LEAKS.search(problem) and "/srv" not in problem and "secret" not in problem
    assert any(eid in r.getMessage() and "secret detail" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- the app
@pytest.fixture
def hosted_root(tiny_bundle, tmp_path, monkeypatch) -> Iterator[Path]:  # noqa: F811
    """A hosted explorer's root: every damaged bundle sorted before the good ``tiny``."""
    root = (tmp_path / "bundles").resolve()
    for i, kind in enumerate(DAMAGES):
        damaged_copy(tiny_bundle, root / f"a{i:02d}", kind)
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    (root / "tiny" / S.CACHE_DIR).mkdir()
    for k in ("ASAP_BUNDLE", "ASAP_MODEL_ALLOWLIST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    reload_settings()
    yield root
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")   # the app sets these process-wide in hosted mode
    config.set_option("client.toolbarMode", "auto")


def _page_is_whole(at: AppTest, where: str) -> None:
    no_exception(at)
    shown = " ".join(e.value for e in [*at.error, *at.warning])
    assert "Something went wrong" not in shown and not LEAKS.search(shown), (where, shown)


@pytest.mark.slow
def test_hosted_app_lands_on_the_good_bundle_and_draws_every_page(hosted_root):
    from app_pages.glue.keys import PAGE_FILES

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _page_is_whole(at, "landing")
    assert at.session_state["bundle_path"] == str(hosted_root / "tiny")
    assert at.get("vega_lite_chart")                                   # the overview is drawn
    (picker,) = at.sidebar.selectbox
    assert list(picker.options) == [f"a{i:02d} (unavailable)" for i in range(len(DAMAGES))] + ["tiny"]
    for slug, file in PAGE_FILES.items():
        at.switch_page(file).run()
        _page_is_whole(at, slug)
        assert at.sidebar.selectbox                                    # the picker on every page

    for i, kind in enumerate(DAMAGES):                                  # each bad one: unavailable, in words
        at.sidebar.selectbox[0].set_value(f"a{i:02d}").run()
        no_exception(at)
        words = " ".join(w.value for w in at.sidebar.warning).replace("\\", "")   # shown as text: escaped
        assert "unavailable" in words and DAMAGES[kind][1] in words, (kind, words)
        assert not LEAKS.search(words) and str(hosted_root) not in words, (kind, words)
        assert at.session_state["bundle_path"] == str(hosted_root / "tiny")   # the good one stays open


def test_local_app_with_a_bad_bundle_says_so_and_opens_another(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    bad = damaged_copy(tiny_bundle, tmp_path / "bad", "zeroed start of images")
    for k in ("ASAP_HOSTED", "ASAP_BUNDLE_ROOT", "ASAP_MODEL_ALLOWLIST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_BUNDLE", str(bad))
    reload_settings()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    errors = " ".join(e.value for e in at.sidebar.error).replace("\\", "")   # shown as text: escaped
    assert S.IMAGES_FILE in errors and "cannot be read" in errors and not LEAKS.search(errors)
    at.sidebar.text_input(key="w_open_path").input(str(tiny_bundle))
    at.sidebar.button(key="w_open_btn").click().run()
    no_exception(at)
    assert at.session_state["bundle_path"] == str(tiny_bundle) and at.get("vega_lite_chart")
