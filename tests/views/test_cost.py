"""What a visitor's on-demand work costs (``views.cost``, the one pricing of the app): the checks' forward passes
bound what the checks really run, and every price grows with the work, in map images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asap_core.method.sanity import DEFAULT_SEEDS
from asap_core.views import cost


def test_forwards_per_image_bounds_what_the_checks_really_run(tiny_encoder, monkeypatch):
    from asap_core.method.faithfulness import DeletionInsertion
    from asap_core.model.encoder import ClipEncoder
    from tests.method.test_faithfulness import _random_distiller

    seen: list[int] = []
    original = ClipEncoder.embed
    monkeypatch.setattr(ClipEncoder, "embed", lambda self, px, **kw: (seen.append(len(px)), original(self, px))[1])
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = np.random.default_rng(0).random((2, 2, 4, 4))  # one map per requested target
    metric = DeletionInsertion(tiny_encoder, _random_distiller(0))  # the defaults the app runs
    metric.evaluate(px, maps, target=[3, 16])
    metric.occlusion(px)
    bound = 2 * cost.forwards_per_image(2, n_patches=16)
    assert 0.8 * bound <= sum(seen) <= bound


def test_the_checks_cost_their_passes_in_map_images():
    checks = cost.checks_cost
    assert checks(4, 2, 4) > checks(2, 2, 4) > checks(2, 1, 4) > checks(0, 0, 4)  # more targets, more images
    assert checks(1, 2, 0) == -(-cost.forwards_per_image(2) // cost.MAP_PASSES)
    assert checks(0, 0, 1) == DEFAULT_SEEDS * (1 + cost.ASSUMED_BLOCKS)  # redraws of a cascade of maps
    assert checks(1, 2, 0, n_missing_maps=3) == checks(1, 2, 0) + 3  # the maps under test, not stored yet


@pytest.mark.parametrize(("n_words", "maps"), [(0, 1), (1, 1), (10, 1), (11, 2), (25, 3)])
def test_ranking_words_costs_a_map_per_ten_words_and_at_least_one(n_words, maps):
    assert cost.words_cost(n_words) == maps


def test_laundering_pays_for_maps_only():
    assert cost.laundering_cost(8, 3, 5, with_maps=False) == 0  # p_fake only: a few forward passes
    assert cost.laundering_cost(8, 3, 5, with_maps=True) == 8 * 3 + 5  # every laundered map, the originals missing
    assert cost.laundered_view_cost(0) == 1 and cost.laundered_view_cost(1) == 2
    assert cost.maps_cost(7) == 7 and cost.maps_cost(-1) == 0
    assert cost.as_maps(cost.MAP_PASSES + 1) == 2
