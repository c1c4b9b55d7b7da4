"""Single image: an upload against an open bundle (p_fake, neighbours, cell, maps); uploads only."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from asap_core.analyses.single_image import analyse_upload, clear_memo, nearest_images
from asap_core.errors import ImageLoadError, InputError
from asap_core.hosting import HostedPolicy
from asap_core.inputs.imageio import read_bytes
from asap_core.method.bundle_models import bundle_distiller
from asap_core.method.relevance_store import bundle_maps
from asap_core.storage.bundle import Bundle
from asap_core.storage.state_store import BUDGETS
from tests.conftest import make_image
from tests.conftest_app import private_copy, tiny_bundle  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Bundle:  # noqa: F811
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("single") / "bundle")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_upload_of_a_bundle_image_finds_itself(bundle, tiny_encoder):
    row = bundle.images[bundle.images["label"] == "fake"].iloc[2]
    res = analyse_upload(bundle, "copy.jpg", read_bytes(row["path"]), encoder=tiny_encoder, k_neighbours=5)
    assert res.in_bundle and res.image_id == row["image_id"]
    assert res.p_fake == pytest.approx(float(row["p_fake"]), abs=1e-4) and res.pred == row["pred"]
    np.testing.assert_allclose(res.z, row[[f"z{i}" for i in range(16)]].to_numpy(np.float32), atol=1e-4)
    nb = res.neighbours
    assert len(nb) == 5 and list(nb["rank"]) == [1, 2, 3, 4, 5]
    assert nb["image_id"].iloc[0] == row["image_id"] and nb["distance"].iloc[0] < 1e-3
    assert nb["distance"].is_monotonic_increasing
    assert res.cell == int(row["cell"])
    assert res.maps.shape == (17, 4, 4) and res.maps.dtype == np.float32
    np.testing.assert_allclose(res.maps, bundle_maps(bundle, [row["image_id"]], encoder=tiny_encoder)[0],
                               rtol=1e-2, atol=1e-4)
    assert res.confidence == pytest.approx(abs(2 * res.p_fake - 1))
    assert res.map_xy == pytest.approx((nb["map_x"].mean(), nb["map_y"].mean()))


def test_new_upload_neighbours_are_the_nearest_in_z(bundle, tiny_encoder, encode_counter):
    clear_memo()
    image = make_image(np.random.default_rng(123), fake=True)
    data = _png(image)
    res = analyse_upload(bundle, "new.png", data, encoder=tiny_encoder, k_neighbours=8)
    assert not res.in_bundle
    d = np.linalg.norm(bundle.z - res.z[None], axis=1)
    np.testing.assert_allclose(np.sort(d)[:8], res.neighbours["distance"], rtol=1e-5, atol=1e-6)
    assert set(res.neighbours["image_id"]) == set(bundle.images["image_id"].iloc[np.argsort(d)[:8]])
    nearest = bundle.images.set_index("image_id").loc[res.neighbours["image_id"].iloc[0]]
    assert res.cell == int(nearest["cell"])
    # p_fake is the distiller on this image's own embedding
    emb = tiny_encoder.encode_images([image]).numpy()
    assert res.p_fake == pytest.approx(float(bundle_distiller(bundle).predict(emb)[1][0]), abs=1e-6)
    # a second call (an app rerun) reuses embedding and maps from memory
    encode_counter["images"] = 0
    again = analyse_upload(bundle, "new.png", data, encoder=tiny_encoder, k_neighbours=3)
    assert encode_counter["images"] == 0 and len(again.neighbours) == 3 and again.p_fake == res.p_fake
    assert len(nearest_images(bundle, res.z, k=10_000)) == len(bundle.images)


def test_uploads_only_and_limits(bundle, tiny_encoder, tmp_path, set_env):
    with pytest.raises(InputError, match="URLs are not fetched"):
        analyse_upload(bundle, "x.jpg", "https://example.com/x.jpg", encoder=tiny_encoder)
    with pytest.raises(ImageLoadError):
        analyse_upload(bundle, "broken.jpg", b"not an image at all", encoder=tiny_encoder)
    with pytest.raises(ImageLoadError):
        analyse_upload(bundle, "empty.jpg", b"", encoder=tiny_encoder)
    with pytest.raises(InputError):
        analyse_upload(bundle, "x.png", _png(make_image(np.random.default_rng(0), False)), encoder=tiny_encoder,
                       k_neighbours=0)
    data = _png(make_image(np.random.default_rng(5), False))
    policy = HostedPolicy(bundle_root=tmp_path, max_upload_bytes=len(data) - 1, relevance_budget=1,
                          state_url=f"sqlite:///{tmp_path / 'state.sqlite3'}")
    with pytest.raises(InputError, match="limit"):
        analyse_upload(bundle, "big.png", data, encoder=tiny_encoder, policy=policy)
    with pytest.raises(InputError):
        analyse_upload(bundle, "notes.txt", data, encoder=tiny_encoder, policy=policy)
    policy.max_upload_bytes = 10 * len(data)
    clear_memo()
    res = analyse_upload(bundle, "ok.png", data, encoder=tiny_encoder, policy=policy)
    with policy.store.engine.connect() as conn:  # budgets are charged by the app, not here
        assert 0.0 <= res.p_fake <= 1.0 and conn.execute(BUDGETS.select()).first() is None
    # the analysis reads no settings: the hosted limits apply through the policy its caller passes
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_MAX_UPLOAD_MB=str(len(data) / 2 / 1024 / 1024))
    assert analyse_upload(bundle, "ok.png", data, encoder=tiny_encoder).image_id == res.image_id
    with pytest.raises(InputError, match="limit"):
        analyse_upload(bundle, "ok.png", data, encoder=tiny_encoder, policy=HostedPolicy.from_settings())
