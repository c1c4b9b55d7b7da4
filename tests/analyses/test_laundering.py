"""Laundering: resize + JPEG re-encoding, one row per image and setting, maps before / after."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from asap_core.analyses.laundering import launder, laundered_view, laundering_summary, laundering_table, map_correlation
from asap_core.errors import InputError
from asap_core.method.relevance_store import bundle_maps
from asap_core.storage.bundle import Bundle
from tests.conftest_app import private_copy, tiny_bundle  # noqa: F401  (fixture)

QUALITIES = (None, 90, 20)
SCALES = (1.0, 0.5)


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Bundle:  # noqa: F811
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("laundering") / "bundle")


@pytest.fixture(scope="module")
def ids(bundle) -> list[str]:
    im = bundle.images
    return (im.loc[im["label"] == "real", "image_id"].iloc[:3].tolist()
            + im.loc[im["label"] == "fake", "image_id"].iloc[:3].tolist())


def test_launder_resizes_and_recompresses():
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 64)[None, :, None] * np.ones((48, 1, 3))
    image = Image.fromarray(np.clip(smooth + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8))
    assert launder(image, None, 1.0).tobytes() == image.tobytes()  # the identity setting
    half = launder(image, None, 0.5)
    assert half.size == (32, 24) and half.mode == "RGB"
    assert launder(image, 50, 0.37).size == (round(64 * 0.37), round(48 * 0.37))
    assert launder(image, 75, 2.0).size == (128, 96)

    def err(q):
        return np.abs(np.asarray(launder(image, q, 0.5), np.float64) - np.asarray(half, np.float64)).mean()

    assert 0 < err(95) < err(50) < err(10)  # lower quality, larger JPEG error
    grey = image.convert("L")
    assert launder(grey, 80, 1.0).mode == "RGB"
    for q, s in ((0, 1.0), (101, 1.0), (90, 0.0), (90, -1.0), (90, 5.0)):
        with pytest.raises(InputError):
            launder(image, q, s)


@pytest.mark.slow
def test_table_has_one_row_per_image_and_setting(bundle, ids, tiny_encoder, encode_counter):
    table = laundering_table(bundle, ids, QUALITIES, SCALES, encoder=tiny_encoder, with_maps=True)
    n_set = len(QUALITIES) * len(SCALES)
    assert len(table) == len(ids) * n_set
    keys = list(zip(table["image_id"], table["quality"].astype(object), table["scale"]))
    assert len(set(keys)) == len(keys)
    assert list(table["image_id"].iloc[::n_set]) == ids  # image-major
    assert set(table.columns) >= {"image_id", "label", "quality", "scale", "p_fake", "p_fake_original", "delta",
                                  "flipped", "map_corr"}
    by_id = bundle.images.set_index("image_id")
    np.testing.assert_allclose(table["p_fake_original"], by_id.loc[table["image_id"], "p_fake"], atol=1e-4)
    np.testing.assert_allclose(table["delta"], table["p_fake"] - table["p_fake_original"], atol=1e-12)
    assert (table["flipped"] == ((table["p_fake"] >= 0.5) != (table["p_fake_original"] >= 0.5))).all()
    assert (table["label"].to_numpy() == by_id.loc[table["image_id"], "label"].to_numpy()).all()
    ident = table["quality"].isna() & (table["scale"] == 1.0)
    assert ident.sum() == len(ids)
    assert table.loc[ident, "delta"].abs().max() < 1e-6
    same = table.loc[ident, "map_corr"].dropna()  # NaN where the tiny random model's map is constant (all 0)
    assert len(same) >= len(ids) - 2
    np.testing.assert_allclose(same, 1.0, atol=1e-3)
    heavy = (table["quality"] == 20) & (table["scale"] == 0.5)
    assert (table.loc[heavy, "delta"].abs() > 0).all()
    corr = table["map_corr"].dropna()
    assert ((corr >= -1 - 1e-9) & (corr <= 1 + 1e-9)).all()
    assert table.loc[heavy, "map_corr"].mean() < 1 - 1e-3

    calls = encode_counter
    calls["images"] = 0  # count from here: the calls above computed the table
    again = laundering_table(bundle, ids, QUALITIES, SCALES, encoder=tiny_encoder, with_maps=True)
    assert calls["images"] == 0 and again.equals(table)  # served from the bundle cache
    small = laundering_table(bundle, ids[:2], (70,), (0.8,), encoder=tiny_encoder)
    assert len(small) == 2 and "map_corr" not in small and calls["images"] == 2 * 2  # originals + laundered


@pytest.mark.slow
def test_summary_per_setting(bundle, ids, tiny_encoder):
    table = laundering_table(bundle, ids, QUALITIES, SCALES, encoder=tiny_encoder, with_maps=True)
    summary = laundering_summary(table)
    assert len(summary) == len(QUALITIES) * len(SCALES) and (summary["n"] == len(ids)).all()
    y = (bundle.images.set_index("image_id").loc[ids, "label"] == "fake").to_numpy()
    p0 = bundle.images.set_index("image_id").loc[ids, "p_fake"].to_numpy()
    np.testing.assert_allclose(summary["roc_auc_original"], roc_auc_score(y, p0), atol=1e-6)
    row = summary[(summary["quality"] == 20) & (summary["scale"] == 0.5)].iloc[0]
    part = table[(table["quality"] == 20) & (table["scale"] == 0.5)]
    assert row["mean_abs_delta"] == pytest.approx(part["delta"].abs().mean())
    assert row["n_flipped"] == part["flipped"].sum()
    assert row["roc_auc"] == pytest.approx(roc_auc_score(part["label"] == "fake", part["p_fake"]))
    assert row["mean_map_corr"] == pytest.approx(part["map_corr"].mean())


def test_laundered_view_and_errors(bundle, ids, tiny_encoder):
    view = laundered_view(bundle, ids[-1], 30, 0.5, encoder=tiny_encoder)
    assert view["laundered"].size == (24, 24) and view["original"].size == (48, 48)
    assert view["maps"].shape == view["maps_original"].shape == (17, 4, 4)
    np.testing.assert_allclose(view["maps_original"], bundle_maps(bundle, [ids[-1]], encoder=tiny_encoder)[0])
    assert view["p_fake_original"] == pytest.approx(float(bundle.images.set_index("image_id").loc[ids[-1], "p_fake"]),
                                                    abs=1e-4)
    assert view["map_corr"] == pytest.approx(map_correlation(view["maps_original"][16], view["maps"][16]))
    assert np.isnan(map_correlation(np.ones((4, 4)), np.arange(16.0)))
    with pytest.raises(InputError):
        laundering_table(bundle, ["no-such-id"], encoder=tiny_encoder)
    with pytest.raises(InputError):
        laundering_table(bundle, ids, qualities=(), encoder=tiny_encoder)
    with pytest.raises(InputError):
        laundered_view(bundle, "no-such-id", 90, 1.0, encoder=tiny_encoder)
