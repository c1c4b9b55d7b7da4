"""The checks in the views' words (views.checks): sentences, tile notes, the per-dimension table and the
cost charged to a visitor, on reports computed for real on the tiny bundle."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from asap_core.storage.schema import FAKE_LOGIT, N_TARGETS
from asap_core.views import checks as vc
from conftest_app import tiny_bundle  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def reports(tiny_bundle):  # noqa: F811
    from asap_core.analyses.explanation_checks import faithfulness_report, sanity_report
    from asap_core.storage.bundle import Bundle

    b = Bundle.open(tiny_bundle)
    ids = b.images["image_id"].tolist()[:3]
    faith = faithfulness_report(b, ids, targets=[2, FAKE_LOGIT])
    return b, ids, faith, sanity_report(b, ids)


def test_forwards_per_image_bounds_what_the_curves_really_run(tiny_encoder, monkeypatch):
    from asap_core.method.faithfulness import DeletionInsertion
    from asap_core.model.encoder import ClipEncoder
    from test_faithfulness import _random_distiller

    seen: list[int] = []
    original = ClipEncoder.embed
    monkeypatch.setattr(ClipEncoder, "embed", lambda self, px, **kw: (seen.append(len(px)), original(self, px))[1])
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = np.random.default_rng(0).random((2, 2, 4, 4))  # one map per requested target
    DeletionInsertion(tiny_encoder, _random_distiller(0), steps=16, n_random=4).evaluate(px, maps, target=[3, 16])
    assert 0.8 * 2 * vc.forwards_per_image(2) <= sum(seen) <= 2 * vc.forwards_per_image(2)
    # the charge is the passes in relevance-map images: more targets, more images, more cost
    assert vc.check_charge(4, 2, 4) > vc.check_charge(2, 2, 4) > vc.check_charge(2, 1, 4) > vc.check_charge(0, 0, 4)
    assert vc.check_charge(1, 2, 0) == -(-vc.forwards_per_image(2) // vc.MAP_PASSES)


def test_ratio_words():
    assert vc.ratio_text(2.34) == "2.3x more faithful than random"
    assert vc.ratio_text(1.02) == "no more faithful than random"
    assert vc.ratio_text(0.5).startswith("less faithful than random")
    assert "not measurable" in vc.ratio_text(float("nan"))


def test_trust_lines_name_the_dimension_and_carry_the_report(reports):
    b, ids, faith, sanity = reports
    names = [""] * 16
    names[2] = "smooth skin"
    lines = vc.trust_lines(2, faith.summary, sanity.summary, names)
    assert len(lines) == 2 and lines[0].startswith("**dim 2 · smooth skin: its maps are ")
    ratio = float(faith.summary.set_index("target").loc[2, "ratio"])
    assert vc.ratio_text(ratio) in lines[0]
    # the tiny bundle's CLIP is a random initialisation: the sanity verdict must say the maps mean nothing
    assert lines[1].startswith("**Fails the sanity check**") and "randomly initialised" in lines[1]
    assert vc.trust_lines(5, None, None) == []


def test_tile_notes_and_flags_follow_the_reports(reports):
    b, ids, faith, sanity = reports
    flagged = vc.flagged_targets(sanity.summary)
    assert flagged == set(range(N_TARGETS))  # random CLIP: every target
    per = faith.per_image
    row = per[(per["image_id"] == ids[0]) & (per["target"] == FAKE_LOGIT)].iloc[0]
    note = vc.tile_note(ids[0], FAKE_LOGIT, per, flagged)
    if np.isfinite(row["ratio"]):
        assert f"{row['ratio']:.1f}x random" in note
    assert note.endswith("fails sanity")
    assert vc.tile_note(ids[0], 7, per, set()) == ""  # target 7 was not computed, not flagged


def test_checks_table_has_one_row_per_computed_target(reports):
    b, ids, faith, sanity = reports
    table = vc.checks_table(faith.summary, sanity.summary, [""] * 16)
    assert list(table["target"]) == list(range(N_TARGETS))
    by = table.set_index("target")
    assert np.isfinite(by.loc[2, "x more faithful than random"]) and np.isnan(by.loc[7, "x more faithful than random"])
    assert set(table["sanity"]) == {"fails"}
    only_faith = vc.checks_table(faith.summary, None)
    assert list(only_faith["target"]) == [2, FAKE_LOGIT] and set(only_faith["sanity"]) == {""}


def test_curves_chart_plots_the_three_deletion_orders(reports):
    b, ids, faith, sanity = reports
    spec = vc.curves_chart(faith.curves, FAKE_LOGIT).to_dict()
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    assert set(data["order"]) == {"map's order", "random order", "random mask, same area"}
    assert data["x"].min() == 0 and data["x"].max() == 1
    assert vc.check_targets_for(3) == [3, FAKE_LOGIT] and vc.check_targets_for(FAKE_LOGIT) == [FAKE_LOGIT]


def test_attention_tiles_carry_their_maps_checks(reports):
    from asap_core.method.relevance_store import bundle_maps
    from asap_core.views import attention as va

    b, ids, faith, sanity = reports
    w2 = va.head_weights(b.distiller)
    rows = va.attention_rows(b.images, ids, bundle_maps(b, ids), w2, b.thumbnails(ids))
    targets = vc.attention_check_targets(rows, k=2)
    assert FAKE_LOGIT in targets and all(int(r["order"][0]) in targets for r in rows)
    captions = vc.tile_captions(rows[0], faith.per_image, vc.flagged_targets(sanity.summary))
    assert len(captions) == len(rows[0]["tiles"]) and captions[0] == "image"  # the photo itself: no check
    assert all(c.endswith("fails sanity") for c in captions[1:])  # random CLIP: every map flagged
    assert all(c.startswith(t.caption) for c, t in zip(captions, rows[0]["tiles"]))


def test_the_sentence_follows_the_ratio():
    def summary(ratio: float, beats: bool) -> pd.DataFrame:
        return pd.DataFrame([{"target": 4, "n_images": 12, "ratio": ratio, "beats_random": beats,
                              "deletion_abc": 0.1}])

    assert "2.0x more faithful than random**: removing patches in the map's order lowers it faster than" in \
        vc.trust_lines(4, summary(2.0, True), None)[0]
    assert "within the noise" in vc.trust_lines(4, summary(2.0, False), None)[0]
    assert "no more faithful than random**: removing patches in the map's order lowers it about as fast as" in \
        vc.trust_lines(4, summary(1.02, False), None)[0]
    assert "more slowly than" in vc.trust_lines(4, summary(0.5, False), None)[0]
