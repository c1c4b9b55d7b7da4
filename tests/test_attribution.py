"""Generator attribution: heads on z, out-of-fold confusion matrices, bundles with and without generators."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.attribution import (GeneratorAttributor, attribution_accuracy, confusion_matrix,
                                   generator_predictions, has_generator_head, resolve_head)
from asap_core.bundle import Z_COLUMNS, Bundle
from asap_core.errors import InputError
from asap_core.pipeline import AnalyzeOptions, analyze

from conftest import SHARED_DATA

COLOURS = {"gen_blue": (0, 0, 250), "gen_green": (0, 250, 0), "gen_red": (250, 0, 0)}
PER_GENERATOR = 8


def _opts(clip, cache) -> AnalyzeOptions:
    return AnalyzeOptions(model=str(clip), cache_dir=str(cache), num_workers=0, projection_samples=16)


@pytest.fixture(scope="module")
def gen_bundle(tiny_clip_dir, tmp_path_factory) -> Bundle:
    """24 real noise images; fakes from 3 generators, each painting a square of its own colour."""
    tmp = tmp_path_factory.mktemp("attribution")
    rng = np.random.default_rng(0)
    for i in range(3 * PER_GENERATOR):
        (tmp / "data" / "real").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 120, (48, 48, 3), dtype=np.uint8)).save(tmp / "data" / "real" / f"r{i}.png")
    for name, colour in COLOURS.items():
        d = tmp / "data" / "fake" / name
        d.mkdir(parents=True)
        for i in range(PER_GENERATOR):
            arr = rng.integers(0, 120, (48, 48, 3), dtype=np.uint8)
            arr[:16, :16] = colour
            Image.fromarray(arr).save(d / f"{name}_{i}.png")
    analyze(tmp / "data", tmp / "bundle", _opts(tiny_clip_dir, tmp / "cache"))
    return Bundle.open(tmp / "bundle")


def test_refit_head_attributes_known_generators(gen_bundle):
    assert has_generator_head(gen_bundle) and resolve_head(gen_bundle) == "refit"
    cm = confusion_matrix(gen_bundle)
    names = sorted(COLOURS)
    assert list(cm.index) == names and list(cm.columns) == names
    assert (cm.sum(axis=1) == PER_GENERATOR).all()
    acc = attribution_accuracy(cm)
    assert acc >= 0.85, cm  # out-of-fold: each fake predicted by a model that never saw it
    assert acc == pytest.approx(np.trace(cm.to_numpy()) / cm.to_numpy().sum())
    frac = confusion_matrix(gen_bundle, normalize=True)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    pred = generator_predictions(gen_bundle, with_probabilities=True)
    assert len(pred) == len(gen_bundle.images) and list(pred["image_id"]) == list(gen_bundle.images["image_id"])
    probs = pred[[f"p_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred["probability"], probs.max(axis=1), atol=1e-6)
    assert pred["out_of_fold"].all() and (pred["head"] == "refit").all()
    # the colour key: "real" where the detector says real, else the predicted generator
    said_real = pred["pred"] == "real"
    assert (pred.loc[said_real, "attribution"] == "real").all()
    assert (pred.loc[~said_real, "attribution"] == pred.loc[~said_real, "predicted_generator"]).all()
    full = confusion_matrix(gen_bundle, only_fakes=False)
    assert list(full.index) == ["real", *names] and full.to_numpy().sum() == len(gen_bundle.images)
    five = pred.loc[pred["label"] == "fake", "image_id"].iloc[:5].tolist() + pred["image_id"].iloc[:2].tolist()
    sub = confusion_matrix(gen_bundle, image_ids=five)
    assert sub.to_numpy().sum() == len(set(five) & set(pred.loc[pred["label"] == "fake", "image_id"]))


def test_distiller_head_is_read_on_z(gen_bundle):
    d = gen_bundle.distiller
    assert d.config.generator_names == tuple(sorted(COLOURS)) and has_generator_head(gen_bundle, "distiller")
    pred = generator_predictions(gen_bundle, head="distiller", with_probabilities=True)
    with torch.no_grad():
        expect = torch.softmax(d.generator_logits(torch.tensor(gen_bundle.z)), dim=1).numpy()
    np.testing.assert_allclose(pred[[f"p_{n}" for n in d.config.generator_names]].to_numpy(), expect, atol=1e-5)
    assert list(pred["predicted_generator"]) == [d.config.generator_names[k] for k in expect.argmax(1)]
    fakes = (gen_bundle.images["label"] == "fake").to_numpy()
    assert not pred["out_of_fold"].to_numpy()[fakes].any() and pred["out_of_fold"].to_numpy()[~fakes].all()
    cm = confusion_matrix(gen_bundle, head="distiller")
    assert cm.shape == (3, 3) and (cm.sum(axis=1) == PER_GENERATOR).all()


def test_attributor_out_of_fold_is_honest():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 16))
    y = np.repeat(["a", "b", "c"], 20)
    z = centres[np.repeat(np.arange(3), 20)] + rng.normal(0, 1, (60, 16))
    m = GeneratorAttributor(C=1.0).fit(z, y)
    assert m.classes_ == ["a", "b", "c"] and m.oof_
    assert (np.asarray(m.classes_)[m.oof_proba_.argmax(1)] == y).mean() > 0.95
    # names unrelated to z: the in-sample fit looks good, out-of-fold stays near chance (1/3)
    noise = rng.normal(0, 1, (60, 16))
    bad = GeneratorAttributor(C=100.0).fit(noise, y)
    in_sample = (np.asarray(bad.classes_)[bad.predict_proba(noise).argmax(1)] == y).mean()
    oof = (np.asarray(bad.classes_)[bad.oof_proba_.argmax(1)] == y).mean()
    assert oof < 0.5 and in_sample > oof + 0.25, (oof, in_sample)
    back = GeneratorAttributor.from_dict(m.to_dict())
    np.testing.assert_allclose(back.predict_proba(z), m.predict_proba(z))
    with pytest.raises(InputError):
        GeneratorAttributor().fit(z[:5], ["a"] * 5)


def test_bundle_without_generators_has_no_head(tiny_clip_dir, tmp_path):
    rng = np.random.default_rng(1)
    for label in ("real", "fake"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
            arr[:8, :8] = 250 if label == "fake" else arr[:8, :8]
            Image.fromarray(arr).save(tmp_path / "data" / label / f"{label}{i}.png")
    analyze(tmp_path / "data", tmp_path / "b", _opts(tiny_clip_dir, tmp_path / "cache"))
    b = Bundle.open(tmp_path / "b")
    assert not has_generator_head(b) and not has_generator_head(b, "distiller") and not has_generator_head(b, "refit")
    with pytest.raises(InputError):
        generator_predictions(b)
    with pytest.raises(InputError):
        confusion_matrix(b, head="no such head")


@pytest.mark.skipif(not (SHARED_DATA / "forensynths_ranking").is_dir(), reason="shared data absent")
def test_forensynths_confusion_matrix(tiny_clip_dir, tmp_path):
    """Tiny random CLIP: mechanics, not meaning (the 10 x 10 matrix is produced, out of fold)."""
    analyze(SHARED_DATA / "forensynths_ranking", tmp_path / "b", _opts(tiny_clip_dir, tmp_path / "cache"))
    b = Bundle.open(tmp_path / "b")
    gens = sorted(p.name for p in (SHARED_DATA / "forensynths_ranking" / "fake").iterdir() if p.is_dir())
    assert has_generator_head(b)
    cm = confusion_matrix(b)
    assert cm.shape == (10, 10) and list(cm.index) == gens and list(cm.columns) == gens
    assert (cm.sum(axis=1) == 20).all()
    acc = attribution_accuracy(cm)
    print(f"forensynths_ranking, tiny CLIP, refit head: out-of-fold attribution accuracy {acc:.3f} (chance 0.1)")
    assert acc > 0.15
    dist = confusion_matrix(b, head="distiller")
    assert dist.shape == (10, 10) and dist.to_numpy().sum() == 200
    assert np.isfinite(b.images[Z_COLUMNS].to_numpy()).all()
