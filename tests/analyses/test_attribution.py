"""Generator attribution: the distiller's generator head on z, confusion matrices (all fakes and held out),
bundles with and without generators."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.analyses.attribution import (
    attribution_accuracy,
    confusion_matrix,
    generator_names,
    generator_predictions,
    has_generator_head,
    validation_mask,
)
from asap_core.errors import InputError
from asap_core.method.bundle_models import bundle_distiller
from asap_core.pipeline.analyze import AnalyzeOptions, analyze
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import Z_COLUMNS
from tests.conftest import SHARED_DATA

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


@pytest.mark.slow
def test_distiller_head_attributes_known_generators(gen_bundle):
    assert has_generator_head(gen_bundle) and generator_names(gen_bundle) == sorted(COLOURS)
    cm = confusion_matrix(gen_bundle)
    names = sorted(COLOURS)
    assert list(cm.index) == names and list(cm.columns) == names
    assert (cm.sum(axis=1) == PER_GENERATOR).all()
    acc = attribution_accuracy(cm)
    chance = 1 / len(names)
    assert acc >= chance + 0.4, cm  # the head learned the generators' colours (measured: 1.0)
    assert acc == pytest.approx(np.trace(cm.to_numpy()) / cm.to_numpy().sum())
    # held out: the trainer's validation fakes, recovered and checked against the stored metric
    val = validation_mask(gen_bundle)
    assert val is not None and val.sum() == gen_bundle.metrics["val"]["n"]
    held = confusion_matrix(gen_bundle, held_out_only=True)
    n_val_fakes = int((val & (gen_bundle.images["label"] == "fake").to_numpy()).sum())
    assert held.to_numpy().sum() == n_val_fakes > 0
    assert attribution_accuracy(held) == pytest.approx(gen_bundle.metrics["generator_val_accuracy"])
    assert attribution_accuracy(held) > chance, held
    frac = confusion_matrix(gen_bundle, normalize=True)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    pred = generator_predictions(gen_bundle, with_probabilities=True)
    assert len(pred) == len(gen_bundle.images) and list(pred["image_id"]) == list(gen_bundle.images["image_id"])
    probs = pred[[f"p_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred["probability"], probs.max(axis=1), atol=1e-6)
    fakes = (gen_bundle.images["label"] == "fake").to_numpy()
    np.testing.assert_array_equal(pred["held_out"].to_numpy(), ~fakes | val)
    # the colour key: "real" where the detector says real, else the predicted generator
    said_real = pred["pred"] == "real"
    assert (pred.loc[said_real, "attribution"] == "real").all()
    assert (pred.loc[~said_real, "attribution"] == pred.loc[~said_real, "predicted_generator"]).all()
    full = confusion_matrix(gen_bundle, only_fakes=False)
    assert list(full.index) == ["real", *names] and full.to_numpy().sum() == len(gen_bundle.images)
    five = pred.loc[pred["label"] == "fake", "image_id"].iloc[:5].tolist() + pred["image_id"].iloc[:2].tolist()
    sub = confusion_matrix(gen_bundle, image_ids=five)
    assert sub.to_numpy().sum() == len(set(five) & set(pred.loc[pred["label"] == "fake", "image_id"]))


@pytest.mark.slow
def test_predictions_are_the_distiller_head_on_z(gen_bundle):
    d = bundle_distiller(gen_bundle)
    pred = generator_predictions(gen_bundle, with_probabilities=True)
    with torch.no_grad():
        expect = torch.softmax(d.generator_logits(torch.tensor(gen_bundle.z)), dim=1).numpy()
    np.testing.assert_allclose(pred[[f"p_{n}" for n in d.config.generator_names]].to_numpy(), expect, atol=1e-5)
    assert list(pred["predicted_generator"]) == [d.config.generator_names[k] for k in expect.argmax(1)]


@pytest.mark.slow
def test_split_that_does_not_match_the_stored_metric_is_not_claimed(gen_bundle, monkeypatch):
    """A bundle whose stored generator accuracy disagrees with the recomputed split: no held-out claim."""
    metrics = dict(gen_bundle.metrics)
    val = validation_mask(gen_bundle)
    acc = attribution_accuracy(confusion_matrix(gen_bundle, held_out_only=True))
    metrics["generator_val_accuracy"] = acc - 0.5
    monkeypatch.setitem(gen_bundle.meta, "metrics", metrics)
    assert val is not None and validation_mask(gen_bundle) is None
    pred = generator_predictions(gen_bundle)
    fakes = (gen_bundle.images["label"] == "fake").to_numpy()
    np.testing.assert_array_equal(pred["held_out"].to_numpy(), ~fakes)


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
    assert not has_generator_head(b) and generator_names(b) == [] and validation_mask(b) is None
    with pytest.raises(InputError, match="no generator head"):
        generator_predictions(b)
    with pytest.raises(InputError):
        confusion_matrix(b)


@pytest.mark.skipif(not (SHARED_DATA / "forensynths_ranking").is_dir(), reason="shared data absent")
@pytest.mark.slow
def test_forensynths_confusion_matrix(tiny_clip_dir, tmp_path):
    """Tiny random CLIP: mechanics, not meaning (the 10 x 10 matrix of the distiller's head is produced)."""
    analyze(SHARED_DATA / "forensynths_ranking", tmp_path / "b", _opts(tiny_clip_dir, tmp_path / "cache"))
    b = Bundle.open(tmp_path / "b")
    gens = sorted(p.name for p in (SHARED_DATA / "forensynths_ranking" / "fake").iterdir() if p.is_dir())
    assert has_generator_head(b) and generator_names(b) == gens
    cm = confusion_matrix(b)
    assert cm.shape == (10, 10) and list(cm.index) == gens and list(cm.columns) == gens
    assert (cm.sum(axis=1) == 20).all()
    acc = attribution_accuracy(cm)
    held = confusion_matrix(b, held_out_only=True)
    assert validation_mask(b) is not None and 0 < held.to_numpy().sum() < 200
    held_acc = attribution_accuracy(held)
    print(f"forensynths_ranking, tiny CLIP, distiller head: accuracy {acc:.3f} on all 200 fakes, "
          f"{held_acc:.3f} on the {held.to_numpy().sum()} held-out fakes (chance 0.1)")
    assert acc > 0.15
    assert np.isfinite(b.images[Z_COLUMNS].to_numpy()).all()
