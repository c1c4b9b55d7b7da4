"""The paths that take ``analyze`` to a million images in bounded memory: the projection's
directions from a covariance summed over chunks, the distiller trained on streamed minibatches, and
``analyze --from-embeddings`` on a table of ids whose embeddings are already cached."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from asap_core.errors import InputError
from asap_core.method.projection import VisionOnlyProjection, covariance
from asap_core.method.training import DistillerTrainer
from asap_core.pipeline.analyze import AnalyzeOptions, analyze, analyze_embeddings
from asap_core.storage.bundle import Bundle
from asap_core.storage.cache import RowStore
from asap_core.storage.schema import Z_COLUMNS


def _svd_directions(clean: np.ndarray, text: np.ndarray, k: int) -> np.ndarray:
    """The directions as PROJECTION_VERSION 4 computed them: thin SVD of all N centred float64 rows with the
    written subspace projected out (N >= D)."""
    q, _ = np.linalg.qr(text.T.astype(np.float64))
    centred = clean - clean.mean(0)
    visual = centred - (centred @ q) @ q.T
    _, _, vt = np.linalg.svd(visual, full_matrices=False)
    return vt[:min(k, clean.shape[1] - q.shape[1])]


def _clean_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``[n, d]`` float32 unit rows with spread-out variances (distinct principal directions)."""
    x = rng.normal(size=(n, d)) * np.geomspace(3.0, 0.2, d) + 0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k", [12, 256])
def test_projection_from_chunks_equals_the_svd_of_all_rows(tmp_path, k):
    """Directions from the [D, D] covariance, read in chunks from an array, a memory map or the embedding store
    itself, equal the SVD of the whole float64 matrix up to sign (1e-6), stay orthonormal and orthogonal to
    the written subspace."""
    rng = np.random.default_rng(0)
    clean = _clean_rows(rng, 5000, 48)
    text = np.linalg.qr(rng.normal(size=(48, 4)))[0].T.astype(np.float32)
    ref = _svd_directions(clean.astype(np.float64), text, k)
    np.save(tmp_path / "e.npy", clean)
    store = RowStore(tmp_path / "cache", "emb", (48,))
    ids = [f"{i:040x}" for i in range(len(clean))]
    for s in range(0, len(ids), 700):  # shards of 700 rows, read back 1,000 ids at a time
        store.put(ids[s:s + 700], clean[s:s + 700])
    sources = {"array": clean, "memmap": np.load(tmp_path / "e.npy", mmap_mode="r"),
               "store": (store.get(ids[s:s + 1000]) for s in range(0, len(ids), 1000))}
    for name, rows in sources.items():
        proj = VisionOnlyProjection(n_components=k)
        proj.text_components_ = text
        comps = proj._fit_visual(rows).components_.astype(np.float64)
        sign = np.sign((comps * ref).sum(1))[:, None]
        assert comps.shape == ref.shape, name
        np.testing.assert_allclose(comps, ref * sign, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(comps @ comps.T, np.eye(len(comps)), atol=1e-6)
        np.testing.assert_allclose(comps @ text.T.astype(np.float64), 0, atol=1e-6)


def test_covariance_of_chunks_equals_numpy_and_leaves_the_input_alone():
    """Mean and scatter summed over uneven chunks equal numpy's on the whole matrix, even far from the origin
    (the shift keeps the centring exact); a float64 input is not modified."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1001, 7)) + 1e4
    before = x.copy()
    mean, scatter, n = covariance(x, chunk_rows=97)
    assert n == 1001
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scatter, np.cov(x, rowvar=False) * 1000, rtol=1e-9)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(InputError):
        covariance(np.zeros((0, 7)))


def _labelled_embeddings(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[n, d]`` unit rows (float32), labels (1 = fake) and generators: fakes shifted along one direction,
    noisy enough that the validation AUC is well below 1 (a difference would show)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.int64)
    x = rng.normal(size=(n, d))
    x[:, 0] += 0.8 * y
    gens = np.where(y == 1, np.where(rng.random(n) < 0.5, "gen_a", "gen_b"), None).astype(object)
    x[:, 1] += 1.0 * (gens == "gen_a")
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y, gens


@pytest.mark.slow
def test_streamed_training_matches_the_in_memory_path():
    """The distiller trained on minibatches projected from the embeddings themselves (nothing [N, P] held)
    reaches the validation AUC of the one trained on the precomputed projections, within 0.01, with the
    same split, early stopping and generator head."""
    embeds, y, gens = _labelled_embeddings(4000, 32)
    projection = np.linalg.qr(np.random.default_rng(5).normal(size=(32, 24)))[0].T.astype(np.float32)
    fitted = {}
    for stream in (False, True):
        t = DistillerTrainer(projection=projection, random_state=0, max_epochs=60, patience=8, stream=stream)
        fitted[stream] = t.fit(embeds, y, generators=gens)
    mem, streamed = fitted[False], fitted[True]
    auc_mem, auc_stream = mem.metrics_["val"]["roc_auc"], streamed.metrics_["val"]["roc_auc"]
    assert 0.6 < auc_mem < 0.99  # a task with room to differ
    assert abs(auc_mem - auc_stream) <= 0.01
    np.testing.assert_array_equal(mem.val_index_, streamed.val_index_)
    assert "generator_val_accuracy" in streamed.metrics_
    # the stored model predicts what the metrics say (its own forward: projection, standardisation, W1)
    _, p = streamed.model_.predict(embeds)
    from asap_core.method.training import classification_metrics

    va = streamed.val_index_
    assert classification_metrics(y[va], p[va])["roc_auc"] == pytest.approx(auc_stream, abs=1e-6)


def _opts(tiny_clip_dir, cache, **kw) -> AnalyzeOptions:
    return AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(cache), num_workers=0, batch_size=16,
                          projection_samples=16, **kw)


@pytest.mark.slow
def test_analyze_from_cached_embeddings_end_to_end(tmp_path, small_folder, tiny_clip_dir, monkeypatch):
    """A table of ids (image_id, path, label, generator) whose embeddings an earlier run cached gives the same
    bundle as that run, without scanning, hashing or embedding; the CLI runs it with --from-embeddings; ids
    with no cached row are a clear error."""
    from asap_core.cli import main
    from asap_core.pipeline import stages

    cache = tmp_path / "cache"
    first = analyze(small_folder, tmp_path / "b1", _opts(tiny_clip_dir, cache))
    table = Bundle.open(first.bundle).images[["image_id", "path", "label", "generator", "split"]]
    table.to_parquet(tmp_path / "ids.parquet")
    monkeypatch.setattr(stages, "hash_files", lambda *a, **k: pytest.fail("hashed"))
    report = analyze_embeddings(tmp_path / "ids.parquet", tmp_path / "b2", _opts(tiny_clip_dir, cache))
    b1, b2 = Bundle.open(first.bundle), Bundle.open(report.bundle)
    assert report.n_used == len(b1.images) == 48 and report.layout == "embeddings table"
    pd.testing.assert_frame_equal(b1.images[["image_id", *Z_COLUMNS]], b2.images[["image_id", *Z_COLUMNS]])
    assert report.metrics["val"] == first.metrics["val"]
    assert "hash" not in report.timings

    table.assign(label=table["label"].fillna("")).to_csv(tmp_path / "ids.csv", index=False)
    assert main(["analyze", str(tmp_path / "ids.csv"), "--from-embeddings", "--out", str(tmp_path / "b3"),
                 "--model", str(tiny_clip_dir), "--cache-dir", str(cache), "--workers", "0"]) == 0
    assert len(Bundle.open(tmp_path / "b3").images) == 48

    extra = pd.concat([table, pd.DataFrame({"image_id": ["f" * 40], "path": ["x.jpg"], "label": ["real"]})])
    with pytest.raises(InputError, match="1 of 49 images"):
        analyze_embeddings(extra, tmp_path / "b4", _opts(tiny_clip_dir, cache))
    with pytest.raises(InputError, match="lacks the column"):
        analyze_embeddings(table.drop(columns="label"), tmp_path / "b4", _opts(tiny_clip_dir, cache))
