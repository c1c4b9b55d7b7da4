"""Distiller: shapes, save/load round trip, and learning on separable data with near-orthonormal rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asap_core.errors import InputError, ModelLoadError
from asap_core.method.distiller import Distiller, DistillerConfig
from asap_core.method.training import DistillerTrainer, split_indices


def _separable(n: int = 500, d: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d))
    x[:, :4] += (2 * y[:, None] - 1) * 1.2
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _projection(p: int, d: int, seed: int = 1) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, p)))
    return q.T.astype(np.float32)


def test_forward_shapes_and_roundtrip(tmp_path):
    model = Distiller(DistillerConfig(embed_dim=64, proj_dim=48, n_generators=3, generator_names=("a", "b", "c")),
                      projection=torch.as_tensor(_projection(48, 64)))
    x = torch.randn(5, 64)
    z, logit = model(x)
    assert z.shape == (5, 16) and logit.shape == (5,)
    assert model.generator_logits(z).shape == (5, 3)
    model.save_pretrained(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.json", "distiller.safetensors"]
    loaded = Distiller.from_pretrained(tmp_path / "d")
    z2, logit2 = loaded(x)
    assert torch.allclose(z, z2) and torch.allclose(logit, logit2)
    assert loaded.config == model.config and loaded.config.generator_names == ("a", "b", "c")
    assert loaded.fingerprint == model.fingerprint


def test_trainer_parameters_copy_and_the_cache_key_outlives_the_rename():
    """``get_params`` builds an equal trainer; ``cache_params`` (what the distiller's cache key hashes) is the
    dict keys were written with before ``seed`` became ``random_state``, so fits cached then are still found."""
    from asap_core.method.training import EPOCH_ROWS, TRAINING_VERSION
    from asap_core.storage.cache import hash_key

    proj = _projection(48, 64)
    t = DistillerTrainer(proj, lr=1e-2, random_state=5, stream=True)
    assert t.get_params()["random_state"] == 5 and "seed" not in t.get_params()
    assert hash_key(DistillerTrainer(**t.get_params()).get_params()) == hash_key(t.get_params())
    before = {"version": TRAINING_VERSION, "projection": proj, "ortho_weight": 1.0, "lr": 1e-2, "weight_decay": 0.0,
              "batch_size": 256, "max_epochs": 300, "patience": 25, "val_fraction": 0.2, "seed": 5,
              "generator_weight": 0.5, "stream": True, "epoch_rows": EPOCH_ROWS}
    assert hash_key(t.cache_params()) == hash_key(before)
    assert hash_key(DistillerTrainer(proj, lr=1e-2, random_state=6, stream=True).cache_params()) != hash_key(before)


def test_from_pretrained_missing_folder_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no distiller"):
        Distiller.from_pretrained(tmp_path)


@pytest.mark.slow
def test_learns_separable_data_with_orthonormal_rows():
    x, y = _separable()
    trainer = DistillerTrainer(_projection(48, 64), random_state=0).fit(x, y)
    m = trainer.metrics_
    assert m["val"]["accuracy"] >= 0.9 and m["val"]["roc_auc"] >= 0.95
    assert m["max_offdiag_cos"] <= 0.1
    w = trainer.model_.dims.weight.detach()
    gram = w @ w.T
    assert torch.allclose(gram, torch.eye(16), atol=0.1)  # near-orthonormal rows, not only orthogonal
    # the classifier is not trivially constant
    _, p = trainer.model_.predict(x)
    assert 0.3 < (p >= 0.5).mean() < 0.7


@pytest.mark.slow
def test_without_penalty_rows_are_not_orthonormal():
    x, y = _separable()
    free = DistillerTrainer(_projection(48, 64), random_state=0, ortho_weight=0.0, max_epochs=60).fit(x, y)
    w = free.model_.dims.weight.detach()
    assert not torch.allclose(w @ w.T, torch.eye(16), atol=0.1)


@pytest.mark.slow
def test_generator_head_learns_known_generators():
    rng = np.random.default_rng(3)
    n, d = 600, 64
    y = rng.integers(0, 2, n)
    gen_idx = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d))
    x[:, :4] += (2 * y[:, None] - 1) * 1.2
    x[y == 1, 10 + gen_idx[y == 1]] += 3.0  # each generator leaves its own trace
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    gens = np.where(y == 1, np.array(["biggan", "sd", "dalle"])[gen_idx], None)
    t = DistillerTrainer(_projection(60, 64), random_state=0).fit(x, y, generators=gens)
    assert t.model_.config.generator_names == ("biggan", "dalle", "sd")
    assert t.metrics_["generator_val_accuracy"] >= 0.8


def test_one_class_is_a_clear_error():
    x, _ = _separable(40)
    with pytest.raises(InputError, match="needs real and fake"):
        DistillerTrainer(_projection(48, 64)).fit(x, np.ones(40, int))


def test_folder_split_is_respected():
    y = np.array([0, 1] * 10)
    split = np.array(["train"] * 14 + ["val"] * 6, dtype=object)
    tr, va = split_indices(y, split, 0.2, 0)
    assert set(va) == set(range(14, 20)) and set(tr) == set(range(14))
    tr2, va2 = split_indices(y, None, 0.2, 0)
    assert len(va2) == 4 and np.bincount(y[va2]).tolist() == [2, 2]


@pytest.mark.slow
def test_saturated_auc_still_trains_to_confident_predictions():
    """On perfectly separable data the val AUC is 1.0 after a few epochs; training must not stop there."""
    x, y = _separable(300)
    x[:, 0] += (2 * y - 1) * 3.0
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    t = DistillerTrainer(_projection(48, 64), random_state=0).fit(x, y)
    _, p = t.model_.predict(x)
    assert t.metrics_["val"]["roc_auc"] == 1.0
    assert np.abs(2 * p - 1).mean() > 0.8  # mean confidence, not p ~ 0.5
    assert t.metrics_["val"]["accuracy"] == 1.0
