"""``analyze --engine ray`` (``pipeline.ray_engine``) against the local engine on a small folder, on a local Ray
cluster of 2 CPUs: same ids, skipped files, embeddings, thumbnails, metrics and maps; one cache shared both
ways; the actor callable without Ray; the pool plan; option errors; a local run never imports Ray."""
from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.cli import main
from asap_core.errors import InputError, ModelLoadError
from asap_core.pipeline import ray_engine
from asap_core.pipeline.analyze import AnalyzeOptions, analyze
from asap_core.pipeline.ray_engine import ActorSpec, EmbedActor, PoolPlan, plan_pool
from asap_core.pipeline.stages import embedding_store_name
from asap_core.storage.bundle import Bundle
from asap_core.storage.cache import RowStore
from tests.conftest import make_image

REPO = Path(__file__).resolve().parents[2]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 real + 12 fake PNGs, a copy of one of them (a duplicate) and a file that is no image."""
    root = tmp_path_factory.mktemp("ray_folder")
    rng = np.random.default_rng(1)
    for sub, fake in (("real", False), ("fake", True)):
        (root / sub).mkdir()
        for i in range(12):
            make_image(rng, fake).save(root / sub / f"{sub}{i:02d}.png")
    shutil.copy(root / "real" / "real00.png", root / "real" / "zz_copy.png")
    (root / "fake" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _cli(folder: Path, out: Path, cache: Path, clip: Path, *extra: str) -> int:
    return main(["analyze", str(folder), "--out", str(out), "--model", str(clip), "--cache-dir", str(cache),
                 "--batch-size", "8", "--relevance", "last-block", *extra])


@pytest.fixture(scope="module")
def runs(ray_cluster, folder, tiny_clip_dir, tmp_path_factory):
    """The same folder through the CLI with ``--engine ray`` and locally, each with its own cache."""
    tmp = tmp_path_factory.mktemp("ray_runs")
    assert _cli(folder, tmp / "b_ray", tmp / "c_ray", tiny_clip_dir, "--engine", "ray") == 0
    assert _cli(folder, tmp / "b_local", tmp / "c_local", tiny_clip_dir) == 0
    return tmp


def _embeddings(cache: Path, b: Bundle) -> np.ndarray:
    store = RowStore(cache, embedding_store_name(b.encoder_info.cache_key, torch.float32), (b.encoder_info.embed_dim,))
    return store.get(b.images.image_id.tolist())


@needs_ray
def test_ray_and_local_engines_give_the_same_bundle(runs):
    r, loc = Bundle.open(runs / "b_ray"), Bundle.open(runs / "b_local")
    ids = r.images.image_id.tolist()
    assert ids == loc.images.image_id.tolist() and len(ids) == 24
    assert sorted(map(tuple, (s.values() for s in r.skipped))) == sorted(map(tuple, (s.values() for s in loc.skipped)))
    assert {s["path"].rsplit("/", 1)[-1] for s in r.skipped} == {"broken.png", "zz_copy.png"}
    np.testing.assert_allclose(_embeddings(runs / "c_ray", r), _embeddings(runs / "c_local", loc), atol=1e-5, rtol=0)
    assert r.metrics == loc.metrics
    np.testing.assert_allclose(r.images.p_fake, loc.images.p_fake, atol=1e-6)
    assert r.thumbnails(ids) == loc.thumbnails(ids)
    from asap_core.method.relevance_store import bundle_maps

    # local CPU maps start from the kept float16 last-layer inputs, Ray's from the pixels: float16 rounding apart
    np.testing.assert_allclose(bundle_maps(r, ids).astype(np.float32), bundle_maps(loc, ids).astype(np.float32),
                               atol=2e-3, rtol=2e-2)
    assert r.options.engine == "ray" and loc.options.engine == "local"


def _shards(cache: Path) -> dict[str, list[str]]:
    """The Parquet shards of the embedding, thumbnail and map stores of ``cache``."""
    stores = [p for p in cache.iterdir() if p.name.startswith(("emb-", "thumbs-", "rel-"))]
    return {p.name: sorted(x.name for x in p.glob("*.parquet")) for p in stores}


@needs_ray
def test_one_cache_serves_both_engines(runs, folder, tiny_clip_dir):
    """A Ray run on the local run's cache and a local run on the Ray run's cache add no row to any store (the
    model still loads for the one file that never decodes: failures are not cached, as locally)."""
    opts = dict(model=str(tiny_clip_dir), batch_size=8, relevance="last-block")
    reports = []
    for engine, cache in (("ray", runs / "c_local"), ("local", runs / "c_ray")):
        before = _shards(cache)
        reports.append(analyze(folder, runs / f"b_{engine}_again", AnalyzeOptions(cache_dir=str(cache), engine=engine,
                                                                                  **opts)))
        assert _shards(cache) == before and len(before) == 3
    a, b = (Bundle.open(r.bundle) for r in reports)
    assert a.metrics == b.metrics and a.images.image_id.tolist() == b.images.image_id.tolist()


def test_the_actor_callable_runs_without_ray(folder, tiny_clip_dir, tiny_encoder):
    """EmbedActor on a plain batch: the local pass's embeddings and thumbnails, failures as rows with a reason."""
    from asap_core.inputs.imageio import file_sha1

    paths = [str(folder / "real" / f"real{i:02d}.png") for i in range(5)] + [str(folder / "fake" / "broken.png")]
    ids = [file_sha1(p) for p in paths]
    actor = EmbedActor(ActorSpec(str(tiny_clip_dir), tiny_encoder.cache_key, "cpu", torch.float32, threads=1))
    out = actor({"path": np.array(paths, dtype=object), "image_id": np.array(ids, dtype=object)})
    assert list(out["reason"][:5]) == [""] * 5 and "not an image" in out["reason"][5]
    assert out["embedding"].shape == (6, tiny_encoder.embed_dim) and not out["embedding"][5].any()
    expected = tiny_encoder.encode_images([Image.open(p).convert("RGB") for p in paths[:5]])
    np.testing.assert_allclose(out["embedding"][:5], expected.numpy(), atol=1e-5)
    assert all(t[:3] == b"\xff\xd8\xff" for t in out["thumb"][:5]) and out["thumb"][5] == b""


def test_other_weights_on_a_worker_are_refused(tiny_clip_dir):
    with pytest.raises(Exception, match="other weights"):
        ActorSpec(str(tiny_clip_dir), "not-the-driver-key", "cpu", torch.float32, threads=1).load()


def test_an_error_a_worker_raised_reaches_the_user_with_its_fix():
    """Ray hands back a worker's traceback as text: the AsapError in it is rebuilt, anything else kept."""
    text = ("ray.exceptions.ActorDiedError: The actor died ... Traceback ...\n"
            "asap_core.errors.ModelLoadError: A Ray worker loaded other weights\n  Fix: give every node the same")
    err = ray_engine.worker_error(RuntimeError(text))
    assert isinstance(err, ModelLoadError) and err.message == "A Ray worker loaded other weights"
    assert err.hint == "give every node the same"
    other = RuntimeError("ray.exceptions.ObjectLostError: lost")
    assert ray_engine.worker_error(other) is other


def test_the_pool_follows_the_cluster():
    cpu = {"Alive": True, "Resources": {"CPU": 16.0}}
    small = {"Alive": True, "Resources": {"CPU": 2.0}}
    gpu = {"Alive": True, "Resources": {"CPU": 32.0, "GPU": 4.0}}
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    assert plan_pool([cpu, dead]) == PoolPlan(4, ray_engine.CPUS_PER_ACTOR, 0, "cpu")
    assert plan_pool([small]) == PoolPlan(1, 2, 0, "cpu")
    assert plan_pool([cpu, small]) == PoolPlan(9, 2, 0, "cpu")  # an actor must fit on the smallest node
    assert plan_pool([cpu, gpu]) == PoolPlan(4, 8, 1, "cuda")
    assert plan_pool([gpu], device="cpu") == PoolPlan(8, ray_engine.CPUS_PER_ACTOR, 0, "cpu")
    with pytest.raises(InputError, match="no GPU"):
        plan_pool([cpu], device="cuda")


def test_engine_options_are_checked_before_any_work(monkeypatch):
    with pytest.raises(InputError, match="--engine spark"):
        AnalyzeOptions(engine="spark").check()
    with pytest.raises(InputError, match="without --engine ray"):
        AnalyzeOptions(ray_address="auto").check()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(InputError) as err:
        AnalyzeOptions(engine="ray").check()
    assert ".[ray]" in err.value.hint


@pytest.mark.slow
def test_a_local_run_never_imports_ray(folder, tiny_clip_dir, tmp_path):
    code = ("import sys\n"
            "from asap_core.cli import main\n"
            f"assert main(['analyze', {str(folder)!r}, '--out', {str(tmp_path / 'b')!r}, '--model', "
            f"{str(tiny_clip_dir)!r}, '--cache-dir', {str(tmp_path / 'c')!r}]) == 0\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
