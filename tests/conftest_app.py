"""A tiny analysed bundle for the app tests, and the AppTest helpers they share.

``tiny_bundle`` is session-scoped; because each test module imports the fixture, the bundle is built
once per process through ``build_tiny_bundle`` (memoised), not once per module.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

_BUILT: dict[str, Path] = {}


def build_tiny_bundle(root: Path, data_dir: Path, model_dir: Path) -> Path:
    """Analyse ``data_dir`` with the tiny CLIP into ``root/bundle`` (cache in ``root/cache``); memoised."""
    key = str(data_dir)
    if key not in _BUILT:
        from asap_core.pipeline.analyze import AnalyzeOptions, analyze

        report = analyze(data_dir, root / "bundle",
                         AnalyzeOptions(model=str(model_dir), cache_dir=str(root / "cache"), num_workers=0))
        _BUILT[key] = Path(report.bundle)
    return _BUILT[key]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, small_folder, tiny_clip_dir) -> Path:
    """Path of a bundle of ``small_folder`` (48 images) analysed with the tiny CLIP."""
    if str(small_folder) in _BUILT:
        return _BUILT[str(small_folder)]
    return build_tiny_bundle(tmp_path_factory.mktemp("app_bundle"), small_folder, tiny_clip_dir)


def analysed_bundle(root: Path, data_dir: Path, model_dir: Path):
    """A private ``Bundle`` of ``data_dir`` in ``root`` (for tests that write into the bundle's cache)."""
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.storage.bundle import Bundle

    analyze(data_dir, root / "bundle", AnalyzeOptions(model=str(model_dir), cache_dir=str(root / "cache"),
                                                       num_workers=0, projection_samples=16))
    return Bundle.open(root / "bundle")


def no_exception(at) -> None:
    """Fail with the messages when an ``AppTest`` run raised."""
    assert not at.exception, [e.value for e in at.exception]


def chart_data(el) -> pd.DataFrame:
    """The (largest) dataset of a chart element, as Streamlit shipped it to the browser."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    frames = [convert_arrow_bytes_to_pandas_df(ds.data.data) for ds in el.proto.datasets]
    if not frames:
        spec = json.loads(el.proto.spec)
        return pd.DataFrame(next(iter(spec["datasets"].values())))
    return max(frames, key=len)


def private_copy(src: Path, dest: Path):
    """An open copy of the bundle ``src`` at ``dest``, without its on-demand cache: what a test writes into
    it stays out of the shared one, and what other tests cached there stays out of the copy. A copy of
    ``tiny_bundle`` is the bundle a fresh analysis of ``small_folder`` gives, at the cost of a file copy."""
    import shutil

    from asap_core.storage.bundle import Bundle
    from asap_core.storage.schema import CACHE_DIR

    src = Path(src)
    shutil.copytree(src, dest, ignore=lambda folder, names: [CACHE_DIR] if Path(folder) == src else [])
    return Bundle.open(dest)


def local_app_env(monkeypatch, cache_dir: Path) -> None:
    """The app as a local user runs it: no bundle, hosted-mode or allow-list variables; its own cache."""
    from asap_core.settings import reload_settings

    for k in ("ASAP_BUNDLE", "ASAP_HOSTED", "ASAP_BUNDLE_ROOT", "ASAP_MODEL_ALLOWLIST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(cache_dir))
    reload_settings()


def plain(markdown: str) -> str:
    """What a reader sees of a Markdown string an element carries (escapes resolved, tags dropped): for tests
    that look for a name in a message shown as text (``views.text.as_text``)."""
    import html
    import re

    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    return html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip().replace("\u2060", "")
