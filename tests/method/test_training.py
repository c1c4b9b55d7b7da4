"""Training epochs of bounded size: beyond ``epoch_rows`` training rows an epoch is that many rows of a
permutation that runs on, so the cost between two early-stopping checks no longer grows with N, and the
distiller it gives is as good as the one trained on whole passes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from asap_core.method.training import DistillerTrainer, epoch_orders
from tests.pipeline.test_scale_paths import _labelled_embeddings


def test_small_splits_get_a_fresh_permutation_each_epoch_as_before():
    """At most ``size`` rows: every epoch is a permutation of all of them, the same draws as one
    ``rng.permutation`` per epoch (what training did before epochs were bounded)."""
    rows = np.arange(3, 40, 3)
    got = list(itertools.islice(epoch_orders(np.random.default_rng(7), rows, size=len(rows)), 4))
    ref = np.random.default_rng(7)
    for order in got:
        np.testing.assert_array_equal(order, ref.permutation(rows))


@pytest.mark.parametrize("size", [3, 4, 7])
def test_large_splits_draw_each_row_once_per_pass(size):
    """More rows than ``size``: every epoch holds ``size`` rows, and each run of ``len(rows)`` rows drawn in
    a row (one pass) holds every row once."""
    rows = np.arange(100, 122)  # 22 rows
    orders = list(itertools.islice(epoch_orders(np.random.default_rng(0), rows, size), 30))
    assert {len(o) for o in orders} == {size}
    drawn = np.concatenate(orders)
    for p in range(len(drawn) // len(rows)):
        np.testing.assert_array_equal(np.sort(drawn[p * len(rows):(p + 1) * len(rows)]), rows)


def test_an_epoch_is_at_most_epoch_rows_of_the_training_split(monkeypatch):
    """``fit`` hands each epoch ``epoch_rows`` training rows (never a validation row), not the whole split."""
    embeds, y, _ = _labelled_embeddings(3000, 16)
    projection = np.linalg.qr(np.random.default_rng(5).normal(size=(16, 12)))[0].T.astype(np.float32)
    seen: list[np.ndarray] = []
    original = DistillerTrainer._epoch

    def recording(self, model, s, opt, order):
        seen.append(order)
        return original(self, model, s, opt, order)

    monkeypatch.setattr(DistillerTrainer, "_epoch", recording)
    t = DistillerTrainer(projection=projection, random_state=0, max_epochs=5, patience=5, epoch_rows=500).fit(embeds, y)
    assert len(seen) == 5 and {len(o) for o in seen} == {500}
    assert not np.isin(np.concatenate(seen), t.val_index_).any()
    assert np.isin(np.concatenate(seen), t.train_index_).all()


@pytest.mark.slow
def test_bounded_epochs_train_as_well_as_whole_passes():
    """On a set where the validation AUC has room to differ, epochs of 1,024 rows reach the AUC of whole
    passes over the 4,800 training rows within 0.01, with the same split."""
    embeds, y, gens = _labelled_embeddings(6000, 32, seed=3)
    projection = np.linalg.qr(np.random.default_rng(5).normal(size=(32, 24)))[0].T.astype(np.float32)
    fits = {rows: DistillerTrainer(projection=projection, random_state=0, max_epochs=80, patience=10,
                                   epoch_rows=rows).fit(embeds, y, generators=gens) for rows in (1024, 10**9)}
    bounded, whole = fits[1024], fits[10**9]
    auc_bounded, auc_whole = bounded.metrics_["val"]["roc_auc"], whole.metrics_["val"]["roc_auc"]
    assert 0.6 < auc_whole < 0.99
    assert abs(auc_bounded - auc_whole) <= 0.01
    np.testing.assert_array_equal(bounded.val_index_, whole.val_index_)
