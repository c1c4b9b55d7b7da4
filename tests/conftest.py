"""Shared fixtures (a tiny random CLIP written with save_pretrained, synthetic image folders) and the suite's
hooks: markers by folder and fixture, and how many pytest-xdist workers ``-n auto`` starts."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BROWSER_TESTS = Path(__file__).resolve().parent / "browser"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by place and by fixture, so that a new test gets them without a decorator: everything under
    ``tests/browser/`` is ``browser``; every test that (through any fixture) needs ``ray_cluster`` is ``ray``."""
    for item in items:
        if BROWSER_TESTS in item.path.parents:
            item.add_marker(pytest.mark.browser)
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


MAX_WORKERS = 8  # each more worker collects the suite and builds the shared fixtures again, for little gain


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): in-process when the command names test files (a quick start, and
    ``pdb`` and ``-s`` work), else one worker per core this process may use, at most ``MAX_WORKERS``."""
    paths = [Path(str(a).split("::")[0]) for a in config.args]
    if paths and all(p.is_file() for p in paths):
        return 0
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      MAX_WORKERS))


def write_tiny_clip(path: Path, image_size: int = 32, patch_size: int = 8, dim: int = 64, seed: int = 0) -> Path:
    """Save a random CLIP (2 vision layers, hidden 32, projection ``dim``) plus its image processor to ``path``."""
    from asap_core.pipeline.demo import write_random_clip

    return write_random_clip(path, image_size=image_size, patch_size=patch_size, dim=dim, seed=seed)


@pytest.fixture(scope="session", autouse=True)
def _streamlit_component_scan_once():
    """Every new ``AppTest`` has Streamlit read the metadata of every installed distribution, looking for v2
    components: most of a short AppTest test's time where a few hundred packages are installed, and the same
    answer each time. The installed packages do not change during a run, so the scan runs once. Only when a
    test module already imported Streamlit (the other runs do not pay for importing it), and only where this
    Streamlit scans that way."""
    if "streamlit" not in sys.modules:
        yield
        return
    try:
        from streamlit.components.v2 import manifest_scanner
    except ImportError:
        yield
        return
    scan = functools.cache(manifest_scanner.scan_component_manifests)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest_scanner, "scan_component_manifests", lambda *a, **k: list(scan(*a, **k)))
        yield


@pytest.fixture(autouse=True)
def _settings_from_environment():
    """Every test starts with ``asap_core.settings`` read from the environment as it is now."""
    from asap_core.settings import reload_settings

    reload_settings()


@pytest.fixture
def set_env(monkeypatch):
    """``set_env(NAME=value, ...)``: set (``None``: unset) environment variables for this test and re-read
    ``asap_core.settings``; returns the new ``Settings``."""
    from asap_core.settings import reload_settings

    def apply(**values):
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))
        return reload_settings()

    return apply


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP checkpoint directory (32 px input, 4x4 patches, D = 64)."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_dir):
    """The tiny CLIP loaded through ClipEncoder.from_pretrained, eager attention (for relevance)."""
    from asap_core.model.encoder import ClipEncoder

    return ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")


def make_image(rng: np.random.Generator, fake: bool, size: int = 48) -> Image.Image:
    """A random texture; fakes carry a bright square (a separable artifact)."""
    arr = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
    if fake:
        arr[: size // 3, : size // 3] = 250
    return Image.fromarray(arr)


def planted_image(rng: np.random.Generator, pos: int | None, side: int = 4, patch: int = 8) -> Image.Image:
    """Smooth random background (``side * patch`` px, the tiny CLIP's input); ``pos`` (row-major patch index)
    holds a black/white checkerboard, an artifact confined to one patch."""
    size = side * patch
    base = rng.integers(40, 200, size=(4, 4, 3)).astype(np.uint8)
    arr = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR)).copy()
    if pos is not None:
        r, c = divmod(pos, side)
        yy, xx = np.mgrid[0:patch, 0:patch]
        arr[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = ((yy + xx) % 2 * 255).astype(np.uint8)[..., None]
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> Path:
    """``real/`` + ``fake/gen_a`` + ``fake/gen_b`` with 24 JPEGs each side."""
    root = tmp_path_factory.mktemp("small_folder")
    rng = np.random.default_rng(0)
    for i in range(24):
        d = root / "real"
        d.mkdir(exist_ok=True)
        make_image(rng, False).save(d / f"r{i:03d}.jpg", quality=95)
        d = root / "fake" / ("gen_a" if i % 2 else "gen_b")
        d.mkdir(parents=True, exist_ok=True)
        make_image(rng, True).save(d / f"f{i:03d}.jpg", quality=95)
    return root


@pytest.fixture
def encode_counter(monkeypatch):
    """Counts the images passed through ClipEncoder.encode: ``calls["images"]`` (a cache hit adds none)."""
    from asap_core.model.encoder import ClipEncoder

    calls = {"images": 0}
    original = ClipEncoder.encode

    def counting(self, pixel_values):
        calls["images"] += int(pixel_values.shape[0])
        return original(self, pixel_values)

    monkeypatch.setattr(ClipEncoder, "encode", counting)
    return calls


@pytest.fixture
def check_evaluations(monkeypatch):
    """Images each explanation check evaluates: ``{"faithfulness": n, "sanity": n}`` (a cached report adds none)."""
    from asap_core.method.faithfulness import DeletionInsertion
    from asap_core.method.sanity import ParameterRandomisation

    seen = {"faithfulness": 0, "sanity": 0}
    for cls, name in ((DeletionInsertion, "faithfulness"), (ParameterRandomisation, "sanity")):
        original = cls.evaluate

        def counting(self, pixel_values, *a, _o=original, _n=name, **k):
            seen[_n] += len(pixel_values)
            return _o(self, pixel_values, *a, **k)

        monkeypatch.setattr(cls, "evaluate", counting)
    return seen
