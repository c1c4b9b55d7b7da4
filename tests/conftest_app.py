"""A tiny analysed bundle for the app tests (imported by test_views, test_app and test_browser).

``tiny_bundle`` is session-scoped; because each test module imports the fixture, the bundle is built
once per process through ``build_tiny_bundle`` (memoised), not once per module.
"""
from __future__ import annotations

from pathlib import Path

import pytest

_BUILT: dict[str, Path] = {}


def build_tiny_bundle(root: Path, data_dir: Path, model_dir: Path) -> Path:
    """Analyse ``data_dir`` with the tiny CLIP into ``root/bundle`` (cache in ``root/cache``); memoised."""
    key = str(data_dir)
    if key not in _BUILT:
        from asap_core.pipeline import AnalyzeOptions, analyze

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
