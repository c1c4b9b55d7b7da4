"""The embedded demo: committed images, and a bundle built offline with the random-CLIP fallback, once."""
from __future__ import annotations

import time

import pytest
from PIL import Image

from asap_core.inputs.scan import scan_folder
from asap_core.model.encoder import inspect_checkpoint
from asap_core.pipeline import demo
from asap_core.pipeline.demo import DEMO_DATA, demo_bundle_path, ensure_demo_bundle, write_random_clip
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle

# a smaller random CLIP than the app's, so the test analyses the 300 demo images fast on 2 cores
SMALL_RANDOM_CLIP = dict(image_size=32, patch_size=8, hidden=32, layers=2, dim=64, seed=0)


def test_committed_demo_data_has_both_classes_two_generators_and_is_small():
    scan = scan_folder(DEMO_DATA)
    assert not scan.skipped
    assert scan.n_real >= 50 and scan.n_fake >= 50
    gens = scan.images.loc[scan.images.label == "fake", "generator"].value_counts()
    assert len(gens) >= 2 and gens.min() >= 20
    files = [p for p in DEMO_DATA.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 10 * 1024 * 1024
    for path in scan.images.path.iloc[::37]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and 96 <= min(im.size) <= max(im.size) <= 128
    source = (DEMO_DATA / "SOURCE.md").read_text()
    assert "make_demo_data.py" in source and "creativecommons.org/licenses/by/2.0" in source


def test_write_random_clip_shapes_and_seed(tmp_path):
    a = inspect_checkpoint(str(write_random_clip(tmp_path / "a", image_size=48, patch_size=8, dim=24, seed=3)))
    assert (a.image_size, a.patch_side, a.embed_dim) == (48, 6, 24)
    inspect_checkpoint(str(write_random_clip(tmp_path / "b", image_size=48, patch_size=8, dim=24, seed=3)))
    c = inspect_checkpoint(str(write_random_clip(tmp_path / "c", image_size=48, patch_size=8, dim=24, seed=4)))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()
    assert a.cache_key != c.cache_key


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_MODEL", "no-such-org/no-such-clip")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reload_settings()
    monkeypatch.setattr(demo, "RANDOM_CLIP", SMALL_RANDOM_CLIP)
    calls = []
    real_analyze = demo.analyze

    def counting_analyze(*args, **kwargs):
        calls.append((args, kwargs))
        return real_analyze(*args, **kwargs)

    monkeypatch.setattr(demo, "analyze", counting_analyze)
    return tmp_path / "cache", calls


@pytest.mark.slow
def test_offline_fallback_builds_once_and_says_how_to_get_clip(offline_cache):
    cache, calls = offline_cache
    stages = set()
    path, note = ensure_demo_bundle(progress=lambda stage, done, total: stages.add(stage))
    assert len(calls) == 1 and "embed" in stages
    assert path.parent == cache and path == demo_bundle_path()
    b = Bundle.open(path)
    scan = scan_folder(DEMO_DATA)
    assert len(b.images) == len(scan.images)
    assert set(b.images.generator.dropna()) == set(scan.images.generator.dropna())
    model_dir = b.meta["encoder"]["model_id"]
    assert model_dir.startswith(str(cache)) and b.meta["encoder"]["patch_side"] == 4
    assert b.meta["options"]["relevance"] == "last-block"
    assert "RANDOM CLIP" in note and "no-such-org/no-such-clip" in note
    assert "ASAP_MODEL" in note and "--model" in note
    t0 = time.perf_counter()
    again, note2 = ensure_demo_bundle()
    assert (again, note2) == (path, note) and len(calls) == 1
    assert time.perf_counter() - t0 < 5
    # an incomplete bundle folder is rebuilt, not returned
    (path / "bundle.json").unlink()
    assert ensure_demo_bundle()[0] == path and len(calls) == 2
    Bundle.open(path)


def test_real_model_gets_its_own_bundle_and_no_note(offline_cache, tmp_path, monkeypatch):
    cache, _ = offline_cache
    fallback = demo_bundle_path()
    clip = write_random_clip(tmp_path / "local_clip", seed=1)
    monkeypatch.setenv("ASAP_MODEL", str(clip))
    reload_settings()
    seen = []
    monkeypatch.setattr(demo, "analyze", lambda data, out, opt, progress=None: seen.append((data, out, opt)))
    path, note = ensure_demo_bundle()
    assert note == ""
    assert path == demo_bundle_path() != fallback and path.parent == cache
    (data, out, opt), = seen
    assert data == DEMO_DATA and out == path
    assert opt.model == str(clip.resolve()) and opt.relevance == "last-block"
    assert not any(p.name.startswith("random-clip") for p in cache.glob("*"))  # no fallback written
