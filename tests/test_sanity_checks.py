"""Model-parameter randomisation (method.sanity): maps that ignore the model are flagged, a random CLIP's maps are
flagged, the trained detector of a planted artifact is not, and the shared models are never changed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from asap_core.method.sanity import (RANK_THRESHOLD, ParameterRandomisation, randomised_distiller,
                                     randomised_last_block, sanity_verdict, spearman_maps)
from asap_core.storage.schema import FAKE_LOGIT, N_TARGETS

from test_faithfulness import SIDE, _random_distiller, planted_detector, planted_fakes


def test_spearman_maps_is_scipys_rank_correlation_per_map():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 2, SIDE, SIDE)), rng.random((3, 2, SIDE, SIDE))
    b[0, 0] = a[0, 0] * 2 + 1  # same order
    b[1, 1] = np.round(b[1, 1], 1)  # ties
    got = spearman_maps(a, b)
    assert got.shape == (3, 2)
    for i in range(3):
        for k in range(2):
            assert got[i, k] == pytest.approx(spearmanr(a[i, k].ravel(), b[i, k].ravel())[0], abs=1e-12)
    assert got[0, 0] == pytest.approx(1.0)
    assert np.isnan(spearman_maps(a[:1, :1], np.zeros((1, 1, SIDE, SIDE))))[0, 0]


def test_verdict_is_one_function_of_the_figures_and_the_encoder():
    ok = sanity_verdict(0.1, 0.3, encoder_random=False)
    assert not ok.flagged and "change" in ok.reason
    high = sanity_verdict(0.9, 0.2, encoder_random=False)
    assert high.flagged and "distiller (0.90)" in high.reason and "last block" not in high.reason
    assert sanity_verdict(0.2, RANK_THRESHOLD + 0.01, encoder_random=False).flagged
    rand = sanity_verdict(0.0, 0.0, encoder_random=True)
    assert rand.flagged and "randomly initialised" in rand.reason
    assert sanity_verdict(math.nan, math.nan, encoder_random=False).flagged


def test_randomised_copies_leave_the_shared_models_alone(tiny_encoder):
    dist = _random_distiller(3)
    fp = dist.fingerprint
    before = {k: v.clone() for k, v in tiny_encoder.vision_model.state_dict().items()}
    rd = randomised_distiller(dist, 0)
    assert rd.fingerprint != fp and dist.fingerprint == fp
    assert rd.fingerprint == randomised_distiller(dist, 0).fingerprint != randomised_distiller(dist, 1).fingerprint
    assert torch.equal(rd.projection, dist.projection)  # the fixed projection is kept
    re = randomised_last_block(tiny_encoder, 0)
    layers, layers2 = (e.vision_model.vision_model.encoder.layers for e in (tiny_encoder, re))
    assert layers2[0].self_attn.q_proj.weight is layers[0].self_attn.q_proj.weight  # shared, not copied
    assert not torch.equal(layers2[-1].self_attn.q_proj.weight, layers[-1].self_attn.q_proj.weight)
    assert re.cache_key != tiny_encoder.cache_key and re.vision_model is not tiny_encoder.vision_model
    torch.manual_seed(0)
    px = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(re.encode(px), tiny_encoder.encode(px), atol=1e-3)
    impl = tiny_encoder.vision_model.config._attn_implementation
    from asap_core.method.relevance import AttentionRelevance

    assert AttentionRelevance(re, dist, "rollout").attribute(px).abs().max() > 0  # eager on the copy only
    assert tiny_encoder.vision_model.config._attn_implementation == impl
    after = tiny_encoder.vision_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_maps_that_ignore_the_model_are_flagged(tiny_encoder):
    """Acceptance 2 (a): a map function that does not depend on the weights (here: each patch's brightness)
    gives the same maps after either randomisation, rank correlation 1: flagged for every target."""
    def brightness(encoder, distiller, px, idx):
        per_patch = px.mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2))  # [B, 4, 4]
        return per_patch[:, None].expand(-1, len(idx), -1, -1)

    px, _ = planted_fakes(tiny_encoder, n=6)
    res = ParameterRandomisation(tiny_encoder, _random_distiller(4), explain=brightness,
                                 encoder_random=False).evaluate(px)
    table = res.summary()
    assert len(table) == N_TARGETS and table["flagged"].all()
    np.testing.assert_allclose(table[["rho_distiller", "rho_last_block"]].to_numpy(), 1.0)


def test_trained_detector_is_not_flagged_and_a_random_clip_is(tiny_encoder):
    """Acceptance 2 (b): the fake-logit maps of the distiller trained on planted artifacts change when its
    weights or the encoder's last block are randomised (mean rank correlation at most ``RANK_THRESHOLD``):
    not flagged. The tiny CLIP is itself a random initialisation (the demo's fallback): read from its
    ``info.source``, the same maps are flagged, whatever the correlations."""
    dist = planted_detector(tiny_encoder)
    px, _ = planted_fakes(tiny_encoder)
    assert tiny_encoder.info.source == "random"
    as_trained = ParameterRandomisation(tiny_encoder, dist, "last-block", encoder_random=False)
    res = as_trained.evaluate(px, target=FAKE_LOGIT)
    row = res.summary().iloc[0]
    assert res.rho.shape == (len(px), 1, 2)
    assert row["rho_distiller"] <= RANK_THRESHOLD and row["rho_last_block"] <= RANK_THRESHOLD, row.to_dict()
    assert not row["flagged"]
    rand = ParameterRandomisation(tiny_encoder, dist, "last-block").evaluate(px, target=FAKE_LOGIT).summary().iloc[0]
    assert rand["encoder_random"] and rand["flagged"] and "randomly initialised" in rand["reason"]
    assert rand["rho_distiller"] == pytest.approx(row["rho_distiller"])
