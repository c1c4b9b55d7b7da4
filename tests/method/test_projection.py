"""Vision-only projection: orthonormal rows, written-text subspace removed, file formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.errors import ModelLoadError
from asap_core.method.projection import VisionOnlyProjection, render_text


def test_render_text_changes_pixels():
    img = Image.new("RGB", (64, 64), (128, 128, 128))
    out = render_text(img, np.random.default_rng(0))
    assert out.size == img.size and np.abs(np.asarray(out, int) - 128).sum() > 0


def test_fit_removes_text_direction_and_is_orthonormal(tiny_encoder, small_folder):
    images = [Image.open(p).convert("RGB") for p in sorted(small_folder.rglob("*.jpg"))[:24]]
    embed = lambda ims: tiny_encoder.encode_images(ims).numpy()
    proj = VisionOnlyProjection(n_components=256, n_text_components=4).fit(images, embed)
    k, d = proj.components_.shape
    assert d == 64 and k == 64 - 4  # fewer than 256 when D is small
    np.testing.assert_allclose(proj.components_ @ proj.components_.T, np.eye(k), atol=1e-4)
    # the kept basis is orthogonal to the written subspace
    assert np.abs(proj.components_ @ proj.text_components_.T).max() < 1e-4
    # and text-on minus text-off differences shrink after projection
    rng = np.random.default_rng(5)
    clean = embed(images)
    texted = embed([render_text(im, rng) for im in images])
    diff = texted - clean
    kept = np.linalg.norm(proj.transform(diff), axis=1) / np.linalg.norm(diff, axis=1)
    random_basis = np.linalg.qr(rng.normal(size=(64, k)))[0].T
    kept_random = np.linalg.norm(diff @ random_basis.T, axis=1) / np.linalg.norm(diff, axis=1)
    assert kept.mean() < kept_random.mean()


@pytest.mark.parametrize("fmt", ["safetensors", "npy", "pt"])
def test_load_formats_and_shape_check(tmp_path, fmt):
    m = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 32)))[0].T.astype(np.float32)
    path = tmp_path / f"p.{fmt}"
    if fmt == "safetensors":
        path = VisionOnlyProjection.from_components(m).save_pretrained(tmp_path / "folder")
    elif fmt == "npy":
        np.save(path, m)
    else:
        torch.save({"proj": torch.from_numpy(m)}, path)
    loaded = VisionOnlyProjection.from_pretrained(path, embed_dim=64)
    np.testing.assert_array_equal(loaded.components_, m)
    with pytest.raises(ModelLoadError, match="encoder's D is 512"):
        VisionOnlyProjection.from_pretrained(path, embed_dim=512)


def test_load_refuses_pickled_objects(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"x": object()}, fh)
    with pytest.raises(ModelLoadError, match="cannot read a projection"):
        VisionOnlyProjection.from_pretrained(path, embed_dim=64)


def test_fit_takes_the_sample_embeddings_at_hand(tiny_encoder, small_folder, encode_counter):
    """``analyze`` has the sample's embeddings cached (fp32, exact decode): only the texted copies are
    embedded, and the written subspace is the one found when the sample is embedded afresh."""
    import pandas as pd

    from asap_core.pipeline.stages import fit_projection

    paths = [str(p) for p in sorted(small_folder.rglob("*.jpg"))]
    embeds = tiny_encoder.encode_images([Image.open(p).convert("RGB") for p in paths]).numpy()
    encode_counter["images"] = 0
    frame = pd.DataFrame({"path": paths})
    embed = lambda ims: tiny_encoder.encode_images(ims).numpy()
    reused = fit_projection(frame, embeds, 16, 0, embed, exact_decode=True)
    assert encode_counter["images"] == 16
    afresh = fit_projection(frame, embeds, 16, 0, embed, exact_decode=False)
    assert encode_counter["images"] == 16 + 32
    t1, t2 = reused.text_components_.astype(np.float64), afresh.text_components_.astype(np.float64)
    np.testing.assert_allclose(t1.T @ t1, t2.T @ t2, atol=1e-4)  # the same subspace
    with pytest.raises(ValueError, match="rows for"):
        VisionOnlyProjection().fit([Image.new("RGB", (8, 8))], embed, image_embeds=embeds[:2])


def _fitted(params: dict, d: int = 32) -> tuple[VisionOnlyProjection, np.ndarray]:
    """A projection with ``params`` fitted on random embeddings ``[40, d]`` (also returned)."""
    rng = np.random.default_rng(1)
    clean = rng.normal(size=(40, d))
    images = [Image.new("RGB", (16, 16), tuple(int(c) for c in rng.integers(0, 255, 3))) for _ in range(6)]
    return VisionOnlyProjection(**params).fit(images, lambda ims: rng.normal(size=(len(ims), d)),
                                              clean_embeds=clean), clean


def test_projection_round_trips_and_checks_fit_and_shapes(tmp_path):
    """save_pretrained / from_pretrained give back every parameter (none of them the default) and both
    fitted matrices; transform refuses before fit and on embeddings of another width."""
    from asap_core.errors import InputError

    with pytest.raises(InputError, match="not fitted"):
        VisionOnlyProjection().transform(np.zeros((2, 32)))
    params = {"n_components": 4, "n_text_components": 3, "random_state": 7}
    proj, clean = _fitted(params)
    assert proj.get_params() == params and proj.text_components_.shape == (3, 32)
    proj.save_pretrained(tmp_path)
    back = VisionOnlyProjection.from_pretrained(tmp_path, embed_dim=32)
    assert back.get_params() == params
    np.testing.assert_array_equal(back.components_, proj.components_)
    np.testing.assert_array_equal(back.text_components_, proj.text_components_)
    assert proj.transform(clean).shape == (40, 4)
    with pytest.raises(InputError, match=r"\[N, 32\]"):
        proj.transform(clean[:, :16])


def test_projections_saved_before_the_config_still_load(tmp_path):
    """A projection folder written before ``projection_config.json`` (parameters as safetensors metadata) loads
    with those parameters; a bare published matrix gets K and T from its arrays; a damaged config is named."""
    from safetensors.numpy import save_file

    from asap_core.method.projection import CONFIG_NAME, WEIGHTS_NAME

    proj, _ = _fitted({"n_components": 5, "n_text_components": 2, "random_state": 9})
    arrays = {"components": proj.components_, "text_components": proj.text_components_}
    (tmp_path / "old").mkdir()
    save_file(arrays, str(tmp_path / "old" / WEIGHTS_NAME), metadata={k: str(v) for k, v in proj.get_params().items()})
    assert VisionOnlyProjection.from_pretrained(tmp_path / "old").get_params() == proj.get_params()
    save_file(arrays, str(tmp_path / "published.safetensors"))
    bare = VisionOnlyProjection.from_pretrained(tmp_path / "published.safetensors")
    assert bare.get_params() == {"n_components": 5, "n_text_components": 2, "random_state": 0}
    proj.save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / CONFIG_NAME).write_text('{"n_components": "many"}')
    with pytest.raises(ModelLoadError, match="n_components"):
        VisionOnlyProjection.from_pretrained(tmp_path / "bad")


def test_fit_on_many_rows_never_builds_an_n_row_float64_matrix(monkeypatch):
    """The visual directions come from chunks of at most ``CHUNK_ROWS`` rows: no [N, N] factor (75 GB at 100k
    images) and no float64 copy of all N rows (4 GB at a million) is ever made; the basis is orthonormal and
    orthogonal to the written subspace."""
    import numpy as np

    from asap_core.method import projection as P

    rng = np.random.default_rng(0)
    clean = rng.normal(size=(3000, 48)).astype(np.float32)
    monkeypatch.setattr(P, "CHUNK_ROWS", 512)
    widest = []
    real_asarray = np.asarray

    def asarray(a, dtype=None, **kw):
        out = real_asarray(a, dtype=dtype, **kw)
        if out.dtype == np.float64 and out.ndim == 2:
            widest.append(len(out))
        return out

    proj = P.VisionOnlyProjection(n_components=16)
    proj.text_components_ = np.linalg.qr(rng.normal(size=(48, 4)))[0].T.astype(np.float32)
    monkeypatch.setattr(P.np, "asarray", asarray)
    monkeypatch.setattr(P.np.linalg, "svd", lambda *a, **k: pytest.fail("no SVD of the rows"))
    proj._fit_visual(clean)
    monkeypatch.undo()
    assert widest and max(widest) <= 512
    comps = proj.components_.astype(np.float64)
    np.testing.assert_allclose(comps @ comps.T, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(comps @ proj.text_components_.T.astype(np.float64), 0, atol=1e-5)


def test_projection_sample_scales_with_the_collection():
    """The texted copies (a second forward each) are a tenth of the collection, from 64 to 128, never more
    than the images there are; a number asked for is used as given."""
    from asap_core.pipeline.stages import projection_sample_size

    assert [projection_sample_size(n) for n in (10, 48, 300, 1000, 1280, 100_000)] == [10, 48, 64, 100, 128, 128]
    assert projection_sample_size(300, 128) == 128 and projection_sample_size(300, 16) == 16


@pytest.mark.slow
def test_analyze_fits_the_projection_on_the_scaled_sample(tiny_clip_dir, small_folder, tmp_path, encode_counter):
    """By default ``analyze`` puts ``projection_sample_size`` texted copies through the model (all 48 images
    here, fewer than the floor of 64; ``ClipEncoder.encode`` sees only them, the embedding pass runs
    ``image_forward``), and bundle.json records the number used."""
    import json

    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.pipeline.stages import projection_sample_size

    opts = AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(tmp_path / "cache"), num_workers=0)
    report = analyze(small_folder, tmp_path / "bundle", opts)
    n = projection_sample_size(report.n_used)
    assert report.n_used == 48 and n == 48
    assert encode_counter["images"] == n
    assert json.loads((report.bundle / "bundle.json").read_text())["options"]["projection_samples"] == n
    assert opts.projection_samples is None  # the caller's options are left as given
