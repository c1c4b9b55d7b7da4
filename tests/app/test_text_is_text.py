"""Text from files, bundles, names and visitors is shown as text (no outside fetch): every page of the app, locally and
in hosted mode, on a bundle whose folder, file names, generator names, dimension names and pattern carry
Markdown (images and links to an outside host, bold, Streamlit colours, math, HTML). Every rendered text
element (markdown, captions, alerts, headers, labels, tooltips, expander labels, image captions, options ...)
is parsed with a Markdown parser: no link or image that leaves the app, no HTML, no math, no directive."""
from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.views.text import as_code, as_text
from tests.conftest import make_image
from tests.conftest_app import no_exception

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 90
EVIL = ("![i](http://evil.example/x.png)", "[x](https://evil.example)", "**b**", ":red[r]", "$x$", "<img src=x>")
FILE_EVIL = "![i](http:evil.example) [x](https:evil.example) **b** :red[r] $x$ <img src=x>"  # no "/" in a file name
BUNDLE_NAME = "**b** :red[r] $x$ [x](https:evil.example)"
#: proto fields whose strings Streamlit renders as Markdown (labels, tooltips, captions, options of button groups)
MD_FIELDS = {"body", "label", "help", "caption", "text", "title", "message", "content", "delta"}
#: elements whose strings are not Markdown (their text, tables and chart specs are shown as they are)
PLAIN_TYPES = {"text", "code", "json", "arrow_data_frame", "arrow_table", "vega_lite_chart"}
PAGES = ("overview", "images", "attention", "dimensions", "patterns", "generators", "robustness", "single_image",
         "quiz")
MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_OUTSIDE = re.compile(r"^\s*(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


# ------------------------------------------------------------------------------------------ the helper itself
@pytest.mark.parametrize("name", [*EVIL, FILE_EVIL, "www.evil.example", "a\\b", "# h", "1. x", "> q", "`c`", "a|b",
                                  ":smile: :material/home:", "line\nbreak", "x@y.example", "&lt;b&gt;"])
def test_as_text_renders_to_exactly_its_characters(name):
    out = as_text(name)
    assert problems(out) == []
    assert rendered_text(out).replace("\u2060", "") == name.replace("\n", " ")


@pytest.mark.parametrize("name", ["my-images", "a`b", "``x`", EVIL[0], "<img src=x>"])
def test_as_code_is_one_code_span_of_the_name(name):
    tokens = [t for b in MD.parse(as_code(name)) for t in (b.children or [])]
    assert [t.type for t in tokens] == ["code_inline"] and tokens[0].content == name


# ------------------------------------------------------------------------------------------ the checker
def _inline_tokens(source: str):
    for block in MD.parse(source):
        yield block
        yield from block.children or []


def problems(source: str) -> list[str]:
    """What in ``source`` would render as more than text: a link or image leaving the app, HTML, an unescaped
    URL (GFM autolinks it), math or a Streamlit directive."""
    out = []
    for t in _inline_tokens(source):
        if t.type in ("html_inline", "html_block"):
            out.append(f"html {t.content!r}")
        if t.type in ("link_open", "image") and _OUTSIDE.match(str(t.attrs.get("href") or t.attrs.get("src") or "")):
            out.append(f"{t.type} {t.attrs}")
    source = _CODE_SPAN.sub("", source)  # code spans show their characters as they are
    if re.search(r"(?:https?://|www\.)", source):
        out.append("bare URL")
    if re.search(r"(?<!\\)\$", source):
        out.append("math $")
    if re.search(r"(?<!\\):[a-z]+\[", source):
        out.append("directive")
    return out


def rendered_text(source: str) -> str:
    """What a reader sees of ``source``: its rendering without tags."""
    return html.unescape(re.sub(r"<[^>]+>", "", MD.render(source))).strip()


def _strings(msg, out: list[str]) -> None:
    """The Markdown-rendered strings of a proto message (fields in ``MD_FIELDS``, nested messages too)."""
    for field, value in msg.ListFields():
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # older protobuf
            repeated = field.label == field.LABEL_REPEATED
        items = value if repeated else [value]
        for v in items:
            if field.type == field.TYPE_MESSAGE:
                _strings(v, out)
            elif field.type == field.TYPE_STRING and field.name in MD_FIELDS and v:
                out.append(v)


def _nodes(node) -> Iterator:
    yield node
    children = getattr(node, "children", None) or {}
    for child in children.values():
        yield from _nodes(child)


def page_texts(at: AppTest) -> list[str]:
    """Every string of the rendered page (main area, sidebar, dialogs) that Streamlit shows as Markdown."""
    out: list[str] = []
    for node in _nodes(at._tree):
        proto = getattr(node, "proto", None)
        if proto is None or getattr(node, "type", "") in PLAIN_TYPES:
            continue
        _strings(proto, out)
    return out


# ------------------------------------------------------------------------------------------ the bundle
@pytest.fixture(scope="module")
def evil_root(tmp_path_factory, tiny_clip_dir) -> Path:
    """A bundle root holding one bundle named ``BUNDLE_NAME``: files, generators, dimension names and a pattern
    carry Markdown; maps precomputed (no model needed to show them)."""
    from asap_core.analyses.patterns import Pattern, PatternStore
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.storage.bundle import Bundle
    from asap_core.storage.schema import DEFAULT_METHOD

    work = tmp_path_factory.mktemp("evil")
    rng = np.random.default_rng(3)
    for i in range(12):
        (work / "data" / "real").mkdir(parents=True, exist_ok=True)
        make_image(rng, False).save(work / "data" / "real" / f"{FILE_EVIL} r{i}.jpg", quality=95)
        gen = "[g](https:evil.example)" if i % 2 else "**gen** <b>"
        (work / "data" / "fake" / gen).mkdir(parents=True, exist_ok=True)
        make_image(rng, True).save(work / "data" / "fake" / gen / f"{FILE_EVIL} f{i}.jpg", quality=95)
    out = work / "bundles" / BUNDLE_NAME
    analyze(work / "data", out, AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(work / "cache"),
                                               num_workers=0, projection_samples=16, relevance=DEFAULT_METHOD))
    b = Bundle.open(out)
    for d in range(16):
        b.set_dimension_name(d, EVIL[d % len(EVIL)])
    fakes = b.images.loc[b.images["label"] == "fake", "image_id"].tolist()[:4]
    PatternStore(b).add(Pattern("![p](http://evil.example/p.png) **p**", fakes, note="[n](https://evil.example)"))
    return work / "bundles"


def _start(root: Path, hosted: bool, set_env, tmp_path) -> AppTest:
    if hosted:
        set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(root), ASAP_BUNDLE=None, ASAP_CACHE_DIR=str(tmp_path / "c"),
                ASAP_MODEL_ALLOWLIST=None, ASAP_RELEVANCE_BUDGET="500")
    else:
        set_env(ASAP_HOSTED=None, ASAP_BUNDLE_ROOT=None, ASAP_BUNDLE=None, ASAP_CACHE_DIR=str(tmp_path / "c"),
                ASAP_MODEL_ALLOWLIST=None)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if hosted:
        at.query_params.update({"bundle": BUNDLE_NAME})
    else:
        at.session_state[K.K_BUNDLE] = str(root / BUNDLE_NAME)
    return at


def _restore_client_options() -> None:
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    config.set_option("client.toolbarMode", "auto")


@pytest.mark.parametrize("hosted", [False, True], ids=["local", "hosted"])
@pytest.mark.slow
def test_every_page_shows_names_as_text(evil_root, hosted, set_env, tmp_path):
    from asap_core.storage.bundle import Bundle

    b = Bundle.open(evil_root / BUNDLE_NAME)
    ids = b.images["image_id"].tolist()
    at = _start(evil_root, hosted, set_env, tmp_path)
    at.session_state[K.K_IMAGES] = ids[:2]
    at.session_state[K.K_CELLS] = [int(b.images["cell"].iloc[0])]
    at.session_state[K.K_QUIZ] = "all:3:1"
    try:
        at.run()
        found, seen = {}, []
        for page in PAGES:
            at.switch_page(f"app_pages/{page}.py").run()
            no_exception(at)
            if page == "patterns" and any(x.key == K.PAT_IMPACT for x in at.button):
                at.button(key=K.PAT_IMPACT).click().run()
            if page == "quiz":
                at.button(key=K.QUIZ_REAL).click().run()
            if page == "single_image":
                at.file_uploader(key=K.W_UPLOAD).set_value((f"{FILE_EVIL}.jpg", (Path(b.images["path"].iloc[0])
                                                                                 ).read_bytes(), "image/jpeg")).run()
                no_exception(at)
            texts = page_texts(at)
            seen += [rendered_text(t) for t in texts]
            bad = {t: problems(t) for t in texts if problems(t)}
            if bad:
                found[page] = bad
        assert not found, found
        # not vacuous: the names did reach Markdown, and read as written
        shown = "\n".join(seen).replace("\u2060", "")
        for name in (*EVIL, FILE_EVIL, "[g](https:evil.example)", "![p](http://evil.example/p.png) **p**"):
            assert name in shown, name
    finally:
        if hosted:
            _restore_client_options()


@pytest.mark.slow
def test_names_reach_markdown_escaped_in_the_views(evil_root):
    """The view functions that build Markdown themselves escape the names they put in it."""
    from asap_core.views import checks as vc

    names = list(EVIL) * 3
    lines = vc.trust_lines(1, None, __import__("pandas").DataFrame(
        [{"target": 1, "flagged": True, "reason": "[r](https://evil.example)", "rho_distiller": 0.9,
          "rho_last_block": 0.8}]), names)
    assert lines and all(problems(line) == [] for line in lines)
    assert "[r](https://evil.example)" in rendered_text(lines[0])

