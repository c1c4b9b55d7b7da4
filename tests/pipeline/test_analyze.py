"""analyze end to end on the tiny CLIP: complete bundles, cache reuse, bad input, atomic writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from asap_core.errors import BundleError, InputError
from asap_core.method.bundle_models import bundle_distiller
from asap_core.model.encoder import ClipEncoder
from asap_core.pipeline import stages
from asap_core.pipeline.analyze import AnalyzeOptions, analyze
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from tests.conftest import SHARED_DATA, make_image


def _opts(tiny_clip_dir, cache, **kw) -> AnalyzeOptions:
    return AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(cache), num_workers=0, batch_size=16,
                          projection_samples=16, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip_dir, small_folder):
    tmp = tmp_path_factory.mktemp("pipe")
    report = analyze(small_folder, tmp / "bundle", _opts(tiny_clip_dir, tmp / "cache"))
    return tmp, report


def test_bundle_is_complete(built, small_folder, tiny_clip_dir):
    tmp, report = built
    b = Bundle.open(report.bundle)
    n_files = len(list(small_folder.rglob("*.jpg")))
    assert len(b.images) == n_files == report.n_used
    assert b.images["image_id"].is_unique and b.images["path"].map(lambda p: Path(p).is_file()).all()
    assert set(b.images.generator.dropna()) == {"gen_a", "gen_b"}
    assert b.cells["n"].sum() == len(b.images)
    counts = b.cells[["n_real_ok", "n_real_wrong", "n_fake_ok", "n_fake_wrong", "n_unlabelled"]].sum(axis=1)
    assert (counts == b.cells["n"]).all()
    assert b.z.shape == (n_files, 16)
    assert all(t is not None for t in b.thumbnails(b.images.image_id.tolist()))
    assert {"val", "train", "max_offdiag_cos"} <= set(b.metrics)
    # predictions agree with the stored distiller applied to the cached embeddings
    import torch

    from asap_core.pipeline.stages import embedding_store_name
    from asap_core.storage.cache import RowStore

    store = RowStore(tmp / "cache", embedding_store_name(b.encoder_info.cache_key, torch.float32), (64,))
    z, p = bundle_distiller(b).predict(store.get(b.images.image_id.tolist()))
    np.testing.assert_allclose(p, b.images.p_fake, atol=1e-5)
    np.testing.assert_allclose(z, b.z, atol=1e-5)
    assert (b.images.confidence - np.abs(2 * b.images.p_fake - 1)).abs().max() < 1e-5
    meta = json.loads((report.bundle / "bundle.json").read_text())
    assert meta["complete"] and meta["counts"]["used"] == n_files
    assert sorted(p.name for p in (report.bundle / "model").iterdir()) == [
        "config.json", "distiller.safetensors", "projection.safetensors", "projection_config.json"]
    # the run's options load back equal, with the grid it chose (none was asked for) recorded
    from dataclasses import replace

    assert b.options == replace(_opts(tiny_clip_dir, tmp / "cache").stored(), grid=b.grid)


def test_second_run_uses_cache_and_never_loads_the_model(built, small_folder, tiny_clip_dir, monkeypatch):
    tmp, first = built

    def boom(*a, **k):
        raise AssertionError("the model was loaded although everything was cached")

    monkeypatch.setattr(ClipEncoder, "from_pretrained", classmethod(boom))
    report = analyze(small_folder, tmp / "bundle2", _opts(tiny_clip_dir, tmp / "cache"))
    a, b = Bundle.open(first.bundle).images, Bundle.open(report.bundle).images
    assert a.image_id.tolist() == b.image_id.tolist()
    np.testing.assert_array_equal(a.p_fake, b.p_fake)
    assert "load model" not in report.timings


@pytest.mark.slow
def test_embedding_cache_is_keyed_by_dtype(built, small_folder, tiny_clip_dir, monkeypatch, capsys):
    """A bf16 run (opt-in on CPU) never reuses fp32 rows and keeps its own store; a second bf16 run is cached."""
    import torch

    from asap_core.model import device as device_mod
    from asap_core.pipeline.stages import EMBEDDING_VERSION, embedding_store_name

    tmp, first = built
    key = Bundle.open(first.bundle).meta["encoder"]["cache_key"]
    assert embedding_store_name(key, torch.float32) == f"emb-v{EMBEDDING_VERSION}-{key}"
    assert embedding_store_name(key, torch.bfloat16) == f"emb-v{EMBEDDING_VERSION}-{key}-bfloat16"
    fp32_store = tmp / "cache" / embedding_store_name(key, torch.float32)
    fp32_files = sorted(p.name for p in fp32_store.rglob("*") if p.is_file())
    monkeypatch.setenv("ASAP_CPU_BF16", "1")
    reload_settings()
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    report = analyze(small_folder, tmp / "bundle-bf16", _opts(tiny_clip_dir, tmp / "cache"))
    assert "load model" in report.timings  # nothing reused from the fp32 store
    assert (tmp / "cache" / embedding_store_name(key, torch.bfloat16)).is_dir()
    assert sorted(p.name for p in fp32_store.rglob("*") if p.is_file()) == fp32_files
    again = analyze(small_folder, tmp / "bundle-bf16b", _opts(tiny_clip_dir, tmp / "cache"))
    assert "load model" not in again.timings
    assert Bundle.open(again.bundle).meta["encoder"]["dtype"] == "bfloat16"
    from asap_core.cli import main

    capsys.readouterr()
    assert main(["info", str(again.bundle)]) == 0 and "(bfloat16)" in capsys.readouterr().out
    monkeypatch.delenv("ASAP_CPU_BF16")  # the option says the same without the environment
    reload_settings()
    explicit = analyze(small_folder, tmp / "bundle-bf16c", _opts(tiny_clip_dir, tmp / "cache", dtype="bfloat16"))
    assert "load model" not in explicit.timings
    fp32 = analyze(small_folder, tmp / "bundle-fp32", _opts(tiny_clip_dir, tmp / "cache", dtype="float32"))
    assert "load model" not in fp32.timings and Bundle.open(fp32.bundle).meta["encoder"]["dtype"] == "float32"
    with pytest.raises(InputError, match="float16"):
        analyze(small_folder, tmp / "never", _opts(tiny_clip_dir, tmp / "cache", dtype="float16"))
    with pytest.raises(InputError, match="decoder 'gpu-magic'"):
        analyze(small_folder, tmp / "never", _opts(tiny_clip_dir, tmp / "cache", decoder="gpu-magic"))
    assert not (tmp / "never").exists()


def test_bad_files_are_reported_and_the_rest_is_used(tmp_path, tiny_clip_dir):
    rng = np.random.default_rng(1)
    for i in range(6):
        (tmp_path / "data/real").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data/fake").mkdir(parents=True, exist_ok=True)
        make_image(rng, False).save(tmp_path / f"data/real/r{i}.jpg")
        make_image(rng, True).save(tmp_path / f"data/fake/f{i}.png")
    (tmp_path / "data/real/empty.jpg").write_bytes(b"")
    (tmp_path / "data/fake/text.jpg").write_text("hello, I am not a picture")
    good = (tmp_path / "data/real/r0.jpg").read_bytes()
    (tmp_path / "data/real/cut.jpg").write_bytes(good[: len(good) // 3])
    shutil.copy(tmp_path / "data/real/r1.jpg", tmp_path / "data/fake/dup_of_r1.jpg")
    report = analyze(tmp_path / "data", tmp_path / "b", _opts(tiny_clip_dir, tmp_path / "cache"))
    reasons = {Path(p).name: r for p, r in report.skipped}
    dup = "r1.jpg" if "r1.jpg" in reasons else "dup_of_r1.jpg"  # one of the pair is kept
    assert set(reasons) == {"empty.jpg", "text.jpg", "cut.jpg", dup}
    assert "label conflict" in reasons[dup]
    assert "0 bytes" in reasons["empty.jpg"] or "empty" in reasons["empty.jpg"]
    assert report.n_used == 12
    meta = Bundle.open(report.bundle).meta
    assert {Path(s["path"]).name for s in meta["skipped"]} == set(reasons)
    assert "skipped 4" in report.summary().replace(":", "")


def test_one_class_only_is_a_clear_error(tmp_path, tiny_clip_dir):
    (tmp_path / "real").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        make_image(rng, False).save(tmp_path / f"real/{i}.jpg")
    with pytest.raises(InputError, match="4 real and 0 fake") as err:
        analyze(tmp_path, tmp_path / "b", _opts(tiny_clip_dir, tmp_path / "cache"))
    assert "--distiller" in err.value.hint
    assert not (tmp_path / "b").exists()


def test_unlabelled_folder_with_a_trained_distiller(built, tmp_path, tiny_clip_dir):
    _, first = built
    rng = np.random.default_rng(2)
    for i in range(5):
        make_image(rng, i % 2 == 0).save(tmp_path / f"u{i}.jpg")
    report = analyze(tmp_path, tmp_path / "out", _opts(tiny_clip_dir, tmp_path / "cache", distiller=str(first.bundle)))
    b = Bundle.open(report.bundle)
    assert len(b.images) == 5 and b.images.label.isna().all() and b.images.correct.isna().all()
    assert bundle_distiller(b).fingerprint == bundle_distiller(Bundle.open(first.bundle)).fingerprint


def test_crash_while_writing_leaves_no_half_bundle(built, small_folder, tiny_clip_dir, monkeypatch):
    tmp, first = built
    before = (first.bundle / "images.parquet").read_bytes()

    def broken_writer(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("asap_core.method.distiller.Distiller.save_pretrained", broken_writer)
    with pytest.raises(OSError):
        analyze(small_folder, first.bundle, _opts(tiny_clip_dir, tmp / "cache"))
    assert (first.bundle / "images.parquet").read_bytes() == before  # the old bundle is untouched
    Bundle.open(first.bundle)
    assert not [p for p in first.bundle.parent.iterdir() if p.name.startswith(f".{first.bundle.name}.tmp")]
    with pytest.raises(OSError):
        analyze(small_folder, tmp / "never", _opts(tiny_clip_dir, tmp / "cache"))
    assert not (tmp / "never").exists()


def test_incomplete_folder_does_not_open(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "images.parquet").write_bytes(b"x")
    with pytest.raises(BundleError, match="no bundle.json"):
        Bundle.open(tmp_path / "b")
    (tmp_path / "b" / "bundle.json").write_text('{"complete": false}')
    with pytest.raises(BundleError, match="incomplete"):
        Bundle.open(tmp_path / "b")


def test_relevance_precompute_lands_in_the_bundle(built, small_folder, tiny_clip_dir, monkeypatch):
    from asap_core.method.relevance_store import bundle_maps

    tmp, _ = built
    report = analyze(small_folder, tmp / "with_maps", _opts(tiny_clip_dir, tmp / "cache", relevance="last-block"))
    b = Bundle.open(report.bundle)
    monkeypatch.setattr(ClipEncoder, "from_pretrained", classmethod(lambda *a, **k: 1 / 0))
    maps = bundle_maps(b, b.images.image_id.tolist()[:5], "last-block")
    assert maps.shape == (5, 17, 4, 4) and np.isfinite(maps).all() and np.abs(maps).sum() > 0


@pytest.mark.slow
def test_relevance_pass_reuses_the_embedding_pass_and_survives_interruption(tmp_path, small_folder, tiny_clip_dir,
                                                                            monkeypatch, encode_counter):
    """--relevance last-block: the maps start from the last-layer inputs the embedding pass kept (no image
    decoded twice); Ctrl-C in the relevance pass keeps them for the rerun, which deletes them when done;
    without room on the disk the maps come from the pixels, to float16 rounding the same. The projection
    embeds only its sample's texted copies (the clean ones are cached)."""
    import torch

    from asap_core.method.relevance import AttentionRelevance
    from asap_core.method.relevance_store import bundle_maps, last_input_store
    from asap_core.model.encoder import inspect_checkpoint

    calls = {"pixels": 0, "kept": 0}
    from_pixels, from_kept = AttentionRelevance.attribute, AttentionRelevance.attribute_from_last_input

    def counting(name, original):
        def run(self, inputs, target=None):
            calls[name] += int(inputs.shape[0])
            return original(self, inputs, target)
        return run

    def interrupted(self, inputs, target=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(AttentionRelevance, "attribute", counting("pixels", from_pixels))
    monkeypatch.setattr(AttentionRelevance, "attribute_from_last_input", interrupted)
    opts = _opts(tiny_clip_dir, tmp_path / "cache", relevance="last-block")
    with pytest.raises(KeyboardInterrupt):
        analyze(small_folder, tmp_path / "b", opts)
    assert encode_counter["images"] == opts.projection_samples
    kept = last_input_store(tmp_path / "cache", inspect_checkpoint(str(tiny_clip_dir)), torch.float32)
    assert len(kept.missing([f"x{i}" for i in range(3)])) == 3 and list(kept.dir.glob("*.parquet"))
    monkeypatch.setattr(AttentionRelevance, "attribute_from_last_input", counting("kept", from_kept))
    report = analyze(small_folder, tmp_path / "b", opts)
    assert calls == {"pixels": 0, "kept": report.n_used}
    assert not list(kept.dir.glob("*.parquet"))  # used, then deleted
    b = Bundle.open(report.bundle)
    ids = b.images.image_id.tolist()
    maps = bundle_maps(b, ids).astype(np.float32)
    monkeypatch.setattr(stages, "free_disk_bytes", lambda path: 0)
    again = analyze(small_folder, tmp_path / "b2", _opts(tiny_clip_dir, tmp_path / "cache2", relevance="last-block"))
    assert calls["pixels"] == again.n_used == report.n_used and calls["kept"] == report.n_used
    assert not list((tmp_path / "cache2").glob("lastin-*/*.parquet"))  # nothing kept without room
    b2 = Bundle.open(again.bundle)
    assert b2.images.image_id.tolist() == ids
    np.testing.assert_allclose(bundle_maps(b2, ids).astype(np.float32), maps, rtol=0,
                               atol=5e-3 * float(np.abs(maps).max()))


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, small_folder, tiny_clip_dir):
    from asap_core.cli import main

    code = main(["analyze", str(small_folder), "--out", str(tmp_path / "b"), "--model", str(tiny_clip_dir),
                 "--workers", "1", "--cache-dir", str(tmp_path / "cache"), "--batch-size", "16"])
    assert code == 0 and Bundle.open(tmp_path / "b").images.shape[0] == 48
    assert main(["analyze", str(tmp_path / "nothing"), "--out", str(tmp_path / "c"),
                 "--model", str(tiny_clip_dir)]) == 2


def test_cli_speed_tip_only_after_long_cpu_runs_and_only_what_applies(monkeypatch):
    from asap_core.cli import cpu_speed_tip
    from asap_core.model import device as device_mod

    monkeypatch.delenv("ASAP_CPU_BF16", raising=False)
    reload_settings()
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(device_mod, "cxx_compiler", lambda: "/usr/bin/c++")
    tip = cpu_speed_tip("cpu", "auto", False, 120.0)
    assert "--dtype bfloat16" in tip and "--compile" in tip
    assert cpu_speed_tip("cpu", "auto", False, 5.0) is None  # a short run: no noise
    tip = cpu_speed_tip("cpu", "bfloat16", False, 120.0)
    assert "--compile" in tip and "bfloat16" not in tip  # already bf16
    assert cpu_speed_tip("cpu", "bfloat16", True, 120.0) is None  # nothing left to suggest
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(device_mod, "cxx_compiler", lambda: None)
    assert cpu_speed_tip("cpu", "auto", False, 120.0) is None  # neither would work here


@pytest.mark.skipif(not (SHARED_DATA / "forensynths_ranking").is_dir(), reason="shared data absent")
@pytest.mark.slow
def test_forensynths_keeps_generator_names(tmp_path, tiny_clip_dir):
    report = analyze(SHARED_DATA / "forensynths_ranking", tmp_path / "b", _opts(tiny_clip_dir, tmp_path / "cache"))
    b = Bundle.open(report.bundle)
    assert len(b.images) == 400
    assert sorted(b.images.generator.dropna().unique()) == sorted(
        p.name for p in (SHARED_DATA / "forensynths_ranking" / "fake").iterdir())
    assert len(bundle_distiller(b).config.generator_names) == 10


def test_a_new_method_version_never_reuses_stale_results(built, small_folder, tiny_clip_dir, monkeypatch):
    """Every cache key carries the version of its method: bumping the projection's or the layout's version
    computes them anew (the embeddings, whose version did not change, are reused)."""
    tmp, _ = built
    cache = tmp / "cache"
    namespaces = ("projection", "map2d", "distiller", next(cache.glob("emb-v*")).name)
    before = {ns: len(list((cache / ns).iterdir())) for ns in namespaces}
    monkeypatch.setattr(stages, "PROJECTION_VERSION", stages.PROJECTION_VERSION + 1)
    monkeypatch.setattr(stages, "LAYOUT_VERSION", stages.LAYOUT_VERSION + 1)
    report = analyze(small_folder, tmp / "bundle-new-methods", _opts(tiny_clip_dir, cache))
    after = {ns: len(list((cache / ns).iterdir())) for ns in namespaces}
    assert after["projection"] == before["projection"] + 1 and after["map2d"] == before["map2d"] + 1
    assert after["distiller"] >= before["distiller"]  # its key hashes the projection it is trained on
    assert after[namespaces[3]] == before[namespaces[3]]  # embeddings: same version, reused
    assert Bundle.open(report.bundle).counts.used == report.n_used
