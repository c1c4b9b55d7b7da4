"""Concepts: patch masking, segment embeddings, k-means summary, and the embedding cache."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from asap_core.analyses.concepts import ConceptResult, compute_concepts, crop_to_mask, keep_mask, mask_image, mean_fill
from asap_core.errors import InputError
from asap_core.inputs.imageio import decode_image, read_bytes
from asap_core.method.bundle_models import bundle_distiller
from asap_core.method.relevance_store import bundle_maps
from asap_core.model import factory
from asap_core.model.preprocess import CLIP_MEAN
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import Z_COLUMNS
from tests.conftest_app import private_copy, tiny_bundle  # noqa: F401  (fixture)

N_SUBSET = 8


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Bundle:  # noqa: F811
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("concepts") / "bundle")


@pytest.fixture(scope="module")
def subset(bundle) -> list[str]:
    """Four real and four fake images."""
    im = bundle.images
    return (im[im["label"] == "real"]["image_id"].iloc[:4].tolist()
            + im[im["label"] == "fake"]["image_id"].iloc[:4].tolist())



def test_mask_image_keeps_exactly_the_top_patches():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    relevance = rng.permutation(16).astype(np.float32).reshape(4, 4)  # distinct values, 4x4 patches of 8 px
    fill = mean_fill(CLIP_MEAN)
    assert fill == tuple(round(m * 255) for m in CLIP_MEAN)
    for fraction, n_keep in ((0.10, 2), (0.25, 4), (0.50, 8), (1.0, 16)):
        out = np.asarray(mask_image(image, relevance, fraction))
        expected = relevance >= np.sort(relevance.reshape(-1))[::-1][n_keep - 1]
        assert expected.sum() == n_keep
        for r in range(4):
            for c in range(4):
                block = out[8 * r:8 * r + 8, 8 * c:8 * c + 8]
                if expected[r, c]:
                    np.testing.assert_array_equal(block, pixels[8 * r:8 * r + 8, 8 * c:8 * c + 8])
                else:
                    assert (block == np.asarray(fill, np.uint8)).all()
    # a custom fill colour, and ties broken in row-major order (a clamped map is mostly zeros)
    zeros = np.zeros((4, 4), np.float32)
    zeros[3, 3] = 1.0
    keep = keep_mask(zeros, 0.25)
    assert keep[3, 3] and keep[0, :3].all() and keep.sum() == 4
    out = np.asarray(mask_image(image, zeros, 0.10, fill=(1, 2, 3)))
    assert (out[8:16, 8:16] == (1, 2, 3)).all() and (out[24:, 24:] == pixels[24:, 24:]).all()
    # crop to the kept patches' bounding box: rows 0 and 3, columns 0 and 3 -> whole image; one patch -> 8x8
    assert crop_to_mask(image, keep).size == (32, 32)
    assert crop_to_mask(image, zeros > 0).size == (8, 8)
    with pytest.raises(InputError):
        mask_image(image, relevance, 0.0)


def test_concepts_of_a_subset(bundle, subset, tiny_encoder, encode_counter):
    res = compute_concepts(bundle, subset, k=3, encoder=tiny_encoder)
    assert isinstance(res, ConceptResult)
    seg, con = res.segments, res.concepts
    n_f = len(res.fractions)
    assert len(seg) == n_f * N_SUBSET == encode_counter["images"]
    assert res.masks.shape == (len(seg), 4, 4)
    assert list(seg["image_id"]) == [i for i in subset for _ in range(n_f)]
    # each segment keeps ceil(fraction * 16) patches: 2, 4, 8
    np.testing.assert_array_equal(res.masks.reshape(len(seg), -1).sum(1), np.tile([2, 4, 8], N_SUBSET))
    assert len(con) == res.k == 3 and sorted(con["concept"]) == [0, 1, 2]
    assert con["n_segments"].sum() == len(seg)
    assert (con["n_segments"].diff().dropna() <= 0).all()  # concept 0 is the largest
    assert con["share_fake"].between(0, 1).all() and con["mean_p_fake"].between(0, 1).all()
    src = bundle.images.set_index("image_id")
    for row in con.itertuples():
        part = seg[seg["concept"] == row.concept]
        assert row.n_images == part["image_id"].nunique()
        assert row.share_fake == pytest.approx((part["label"] == "fake").mean())
        assert row.mean_p_fake == pytest.approx(src.loc[part["image_id"], "p_fake"].mean(), rel=1e-5)
        assert len(row.dominant_dims) == 3 and len(set(row.dominant_dims)) == 3
        assert all(0 <= d < 16 for d in row.dominant_dims)
        assert len(row.exemplar_ids) == min(6, len(part)) == len(row.exemplar_fractions)
        # exemplars are the nearest segments of the concept, nearest first
        ex = seg.loc[row.exemplar_segments]
        assert (ex["concept"] == row.concept).all() and list(ex["image_id"]) == row.exemplar_ids
        assert ex["distance"].max() <= part["distance"].sort_values().iloc[len(ex) - 1] + 1e-9
        assert ex["distance"].is_monotonic_increasing
    # each segment is assigned to its nearest centroid and the distance is to that centroid
    z = seg[Z_COLUMNS].to_numpy(np.float64)
    d_all = np.linalg.norm(z[:, None] - res.centers[None].astype(np.float64), axis=2)
    np.testing.assert_array_equal(d_all.argmin(1), seg["concept"].to_numpy())
    np.testing.assert_allclose(d_all.min(1), seg["distance"], rtol=1e-4, atol=1e-5)

    # a segment's z is the distiller on the re-encoded masked image
    image_id = subset[-1]
    path = src.loc[image_id, "path"]
    base = tiny_encoder.preprocessor.resize_and_crop(decode_image(read_bytes(path), path))
    fake_map = bundle_maps(bundle, [image_id])[0, 16].astype(np.float32)
    masked = mask_image(base, fake_map, 0.25)
    z_ref, p_ref = bundle_distiller(bundle).predict(tiny_encoder.encode(tiny_encoder.preprocess([masked])).numpy())
    row = seg[(seg["image_id"] == image_id) & (seg["fraction"] == 0.25)]
    np.testing.assert_allclose(row[Z_COLUMNS].to_numpy()[0], z_ref[0], atol=1e-4)
    assert row["segment_p_fake"].iloc[0] == pytest.approx(p_ref[0], abs=1e-4)

    # exemplar crops: the masked segment, cropped to the bounding box of its kept patches
    crops = res.exemplar_crops(0, n=6)
    assert len(crops) == min(6, int(con.loc[0, "n_segments"]))
    for crop, s in zip(crops, con.loc[0, "exemplar_segments"]):
        keep = res.masks[s]
        rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
        assert crop.size == (8 * (cols[-1] - cols[0] + 1), 8 * (rows[-1] - rows[0] + 1))
        full = np.asarray(res.segment_image(s, crop=False))
        src_px = np.asarray(tiny_encoder.preprocessor.resize_and_crop(
            decode_image(read_bytes(src.loc[seg.loc[s, "image_id"], "path"]), "x")))
        r0, c0 = np.argwhere(keep)[0]
        np.testing.assert_array_equal(full[8 * r0:8 * r0 + 8, 8 * c0:8 * c0 + 8],
                                      src_px[8 * r0:8 * r0 + 8, 8 * c0:8 * c0 + 8])
    with pytest.raises(InputError):
        res.exemplar_crops(7)


def test_second_call_and_other_k_reuse_the_cached_embeddings(bundle, subset, tiny_encoder, encode_counter,
                                                             monkeypatch):
    ids = subset[:6]
    first = compute_concepts(bundle, ids, k=3, encoder=tiny_encoder)
    encoded = encode_counter["images"]
    assert encoded == 3 * len(ids)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder must not be loaded on a cache hit")

    monkeypatch.setattr(factory, "load_encoder", no_encoder)  # the one way a bundle's CLIP is loaded
    again = compute_concepts(bundle, ids, k=3)  # no encoder given: the cache answers
    assert encode_counter["images"] == encoded
    np.testing.assert_array_equal(again.segments[Z_COLUMNS].to_numpy(), first.segments[Z_COLUMNS].to_numpy())
    np.testing.assert_array_equal(again.segments["concept"], first.segments["concept"])

    two = compute_concepts(bundle, ids, k=2)
    assert encode_counter["images"] == encoded
    assert len(two.concepts) == 2 and two.concepts["n_segments"].sum() == 18
    np.testing.assert_array_equal(two.segments[Z_COLUMNS].to_numpy(), first.segments[Z_COLUMNS].to_numpy())

    # k is clamped to the number of segments
    many = compute_concepts(bundle, ids, k=50)
    assert encode_counter["images"] == encoded
    assert many.k == len(many.concepts) <= 18
    assert (many.concepts["n_segments"] >= 1).all()

    # other fractions are another cache entry: they need the encoder again
    with pytest.raises(AssertionError, match="must not be loaded"):
        compute_concepts(bundle, ids, fractions=(0.5,))
    one = compute_concepts(bundle, ids[:2], k=3, fractions=(0.5,), encoder=tiny_encoder)
    assert encode_counter["images"] == encoded + 2 and len(one.segments) == 2


def test_bad_input_is_named(bundle, subset):
    with pytest.raises(InputError, match="not in the bundle"):
        compute_concepts(bundle, ["no-such-id"])
    with pytest.raises(InputError):
        compute_concepts(bundle, [])
    with pytest.raises(InputError):
        compute_concepts(bundle, subset, fractions=(0.5, 1.5))
