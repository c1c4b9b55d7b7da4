"""The checks in the views' words (views.checks): sentences, tile notes and the per-dimension table, on reports
computed for real on the tiny bundle (what the checks cost a visitor: tests/views/test_cost.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from asap_core.method.bundle_models import bundle_distiller
from asap_core.storage.schema import FAKE_LOGIT, N_TARGETS
from asap_core.views import checks as vc
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def reports(tiny_bundle, tmp_path_factory):  # noqa: F811
    from asap_core.analyses.explanation_checks import faithfulness_report, sanity_report
    from tests.conftest_app import private_copy

    b = private_copy(tiny_bundle, tmp_path_factory.mktemp("views_checks") / "bundle")  # the shared one stays clean
    ids = b.images["image_id"].tolist()[:3]
    faith = faithfulness_report(b, ids, targets=[2, FAKE_LOGIT])
    return b, ids, faith, sanity_report(b, ids)


def test_ratio_words():
    assert vc.ratio_text(2.34) == "2.3x"
    assert vc.ratio_text(float("nan")) == "not measurable"


def test_trust_lines_say_what_is_measured_with_interval_and_images(reports):
    b, ids, faith, sanity = reports
    names = [""] * 16
    names[2] = "smooth skin"
    lines = vc.trust_lines(2, faith.summary, sanity.summary, names)
    row = faith.summary.set_index("target").loc[2]
    assert lines[0].startswith(f"**dim 2 · smooth skin · faithfulness to this model: {row['verdict']}**")
    assert vc.WHAT_IT_TESTS in lines[0] and "not whether the pattern is a real artifact" in lines[0]
    assert f"{len(ids)} images" in lines[0] and vc.ratio_text(float(row["ratio"])) in lines[0]
    assert "95% interval" in lines[0] and np.isfinite(row["ratio_low"])  # a bootstrap over the 3 images
    one = vc.trust_lines(2, faith.summary.assign(ratio_low=np.nan, ratio_high=np.nan, verdict="too few images to tell"),
                         None, names)[0]
    assert "too few images to tell" in one and "95% interval" not in one
    # the tiny bundle's CLIP is a random initialisation: not assessed, with the measured figures
    plain = lines[-1].replace("\\", "")  # the reason is escaped Markdown
    assert plain.startswith("**Sanity check: not assessed**: this CLIP is a random initialisation (rank corr")
    assert "rank correlation" in plain and "3 redraws" in plain and f"{len(ids)} images" in plain
    assert vc.trust_lines(5, None, None) == []


def test_tile_notes_carry_their_interval_and_flags_follow_the_reports(reports):
    b, ids, faith, sanity = reports
    flagged = vc.flagged_targets(sanity.summary)
    assert flagged == set() and vc.not_assessed(sanity.summary)  # random CLIP: not assessed, not flagged
    per = faith.per_image
    row = per[(per["image_id"] == ids[0]) & (per["target"] == FAKE_LOGIT)].iloc[0]
    note = vc.tile_note(ids[0], FAKE_LOGIT, per, {FAKE_LOGIT})
    if np.isfinite(row["ratio"]):
        assert f"{row['ratio']:.1f}x random ({max(row['ratio_low'], 0):.1f}-{row['ratio_high']:.1f})" in note
    assert note.endswith("fails sanity")
    assert vc.tile_note(ids[0], 7, per, set()) == ""  # target 7 was not computed, not flagged
    no_interval = per.assign(ratio_low=np.nan)
    assert "x random" not in vc.tile_note(ids[0], FAKE_LOGIT, no_interval, set())  # no interval, no note


def test_checks_table_has_one_row_per_computed_target(reports):
    b, ids, faith, sanity = reports
    table = vc.checks_table(faith.summary, sanity.summary, [""] * 16)
    assert list(table["target"]) == list(range(N_TARGETS))
    by = table.set_index("target")
    assert np.isfinite(by.loc[2, "x less left than random"]) and np.isnan(by.loc[7, "x less left than random"])
    assert set(table["sanity"]) == {"not assessed"} and np.isfinite(by.loc[2, "agreement with occlusion"])
    only_faith = vc.checks_table(faith.summary, None)
    assert list(only_faith["target"]) == [2, FAKE_LOGIT] and set(only_faith["sanity"]) == {""}


def test_curves_and_cascade_charts(reports):
    b, ids, faith, sanity = reports
    spec = vc.curves_chart(faith.curves, FAKE_LOGIT).to_dict()
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    assert set(data["order"]) == {"map's order", "random order", "random mask, same area"}
    assert data["x"].min() == 0 and data["x"].max() == 1
    assert vc.check_targets_for(3) == [3, FAKE_LOGIT] and vc.check_targets_for(FAKE_LOGIT) == [FAKE_LOGIT]
    spec = vc.cascade_chart(sanity.cascade, 3).to_dict()
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    assert list(dict.fromkeys(data["step_name"])) == ["classifier", "+ block 1", "+ block 0", "+ embeddings"]
    assert set(data["similarity"]) == {"rank correlation", "SSIM (looks the same)"}


def test_attention_tiles_carry_their_maps_checks(reports):
    from asap_core.method.relevance_store import bundle_maps
    from asap_core.views import attention as va

    b, ids, faith, sanity = reports
    w2 = va.head_weights(bundle_distiller(b))
    rows = va.attention_rows(b.images, ids, bundle_maps(b, ids), w2, b.thumbnails(ids))
    targets = vc.attention_check_targets(rows, k=2)
    assert FAKE_LOGIT in targets and all(int(r["order"][0]) in targets for r in rows)
    captions = vc.tile_captions(rows[0], faith.per_image, set(targets))
    assert len(captions) == len(rows[0]["tiles"]) and captions[0] == "image"  # the photo itself: no check
    assert all(c.startswith(t.caption) for c, t in zip(captions, rows[0]["tiles"]))
    assert sum(c.endswith("fails sanity") for c in captions) == sum(t.target in targets for t in rows[0]["tiles"])
    lines = vc.summary_lines(faith.summary, sanity.summary, targets)
    assert "faithfulness to this model" in lines[0]
    assert lines[-1].startswith("**fake logit · sanity check: not assessed**: this CLIP is a random initialisation")
    assert "rank correlation" in lines[-1]  # the measured figures, not a verdict by rule


def test_the_sentence_follows_the_verdict():
    def summary(ratio: float, low: float, high: float, verdict: str) -> pd.DataFrame:
        return pd.DataFrame([{"target": 4, "n_images": 12, "ratio": ratio, "ratio_low": low, "ratio_high": high,
                              "verdict": verdict, "deletion_abc": 0.1, "occlusion_rho": 0.61, "occlusion_low": 0.4,
                              "occlusion_high": 0.8}])

    lines = vc.trust_lines(4, summary(2.0, 1.5, 2.6, "better than random"), None)
    assert lines[0].startswith("**dim 4 · faithfulness to this model: better than random**: removing patches in "
                               "the map's order leaves 2.0x less of the dimension's value than removing them in a "
                               "random order (95% interval 1.5 to 2.6, 12 images).")
    assert lines[1].startswith("**Agreement with occlusion: +0.61**") and "95% interval +0.40 to +0.80, 12 images" in \
        lines[1]
    assert "not clearly better than random**" in vc.trust_lines(4, summary(1.05, 0.9, 1.2,
                                                                           "not clearly better than random"), None)[0]
    fake = summary(3.0, 2.0, 4.0, "better than random").assign(target=FAKE_LOGIT)
    assert "less of the fake probability" in vc.trust_lines(FAKE_LOGIT, fake, None)[0]
