"""Deletion / insertion curves (method.faithfulness): the curves are the model's values on the masked images,
a planted artifact's fake-logit maps beat random by a stated margin while a random-region control does not,
Quantus' region perturbation gives the same deletion curve, and the bundle-level report is cached."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from asap_core.errors import InputError
from asap_core.method.faithfulness import (CURVES, DeletionInsertion, image_figures, model_targets,
                                           normalise_curves, patch_counts, summarise)
from asap_core.storage.schema import FAKE_LOGIT, N_TARGETS
from conftest import planted_image

SIDE = 4  # tiny CLIP: 32 px, patch 8
PATCH = 8
#: Acceptance 1: the fake-logit maps of a planted artifact must beat a random patch order by at least this
#: area between the normalised deletion curves (random minus map, x in [0, 1]); the random-region control
#: must stay below it; the same for the ratio "k times more faithful than random". Measured (24 images): 0.16 +-
#: 0.02 and 1.44 for the maps, 0.01 +- 0.03 and 1.01 for the control (benchmarks/RESULTS.md section 19).
MARGIN = 0.1
RATIO = 1.25


@functools.lru_cache(maxsize=2)
def planted_detector(encoder, n: int = 120):
    """A distiller trained (``DistillerTrainer``) on "checkerboard somewhere" (fake) vs clean (real)."""
    from asap_core.method.training import DistillerTrainer

    rng = np.random.default_rng(0)
    images = [planted_image(rng, None) for _ in range(n)] + \
             [planted_image(rng, int(rng.integers(SIDE * SIDE))) for _ in range(n)]
    y = np.array([0] * n + [1] * n)
    trainer = DistillerTrainer(projection=np.eye(64, dtype=np.float32), seed=0).fit(
        encoder.encode_images(images).numpy(), y)
    assert trainer.metrics_["val"]["roc_auc"] > 0.95  # the artifact is learnable here
    return trainer.model_


def planted_fakes(encoder, n: int = 24, seed: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` fresh fakes (pixel values ``[n, 3, 32, 32]``) and their artifact positions ``[n]``."""
    rng = np.random.default_rng(seed)
    pos = rng.integers(SIDE * SIDE, size=n)
    return encoder.preprocess([planted_image(rng, int(p)) for p in pos]), pos


def _random_distiller(seed: int = 0):
    from asap_core.method.distiller import Distiller, DistillerConfig

    torch.manual_seed(seed)
    d = Distiller(DistillerConfig(embed_dim=64, proj_dim=64), projection=None)
    with torch.no_grad():
        d.dims.weight.mul_(10.0)
    return d.eval()


# ----------------------------------------------------------------------------- the curves themselves


def test_curves_are_the_model_on_the_masked_images(tiny_encoder):
    torch.manual_seed(0)
    px = torch.randn(2, 3, 32, 32)
    dist = _random_distiller()
    maps = np.random.default_rng(0).random((2, 2, SIDE, SIDE))
    res = DeletionInsertion(tiny_encoder, dist, steps=4, n_random=2).evaluate(px, maps, target=[3, FAKE_LOGIT])
    assert res.curves.shape == (2, 2, len(CURVES), 5) and res.deletion.shape == (2, 2, 5)
    np.testing.assert_allclose(res.x, [0, 0.25, 0.5, 0.75, 1.0])
    assert list(patch_counts(49, 16)[:4]) == [0, 3, 6, 9] and patch_counts(49, 16)[-1] == 49
    full = model_targets(tiny_encoder, dist, px).numpy()[:, [3, FAKE_LOGIT]]
    empty = model_targets(tiny_encoder, dist, torch.zeros(1, 3, 32, 32)).numpy()[0, [3, FAKE_LOGIT]]
    for c in range(len(CURVES)):  # every curve starts at the image (deletion) or at the baseline (insertion)
        start, end = (full, empty) if "deletion" in CURVES[c] else (empty, full)
        np.testing.assert_allclose(res.curves[:, :, c, 0], np.broadcast_to(start, (2, 2)), atol=1e-5)
        np.testing.assert_allclose(res.curves[:, :, c, -1], np.broadcast_to(end, (2, 2)), atol=1e-5)
    # step 2 of image 1, target 16: the 8 most relevant patches set to 0 (deletion) / only they kept (insertion)
    top = np.argsort(-maps[1, 1].reshape(-1), kind="stable")[:8]  # k_2 = round(2 * 16 / 4)
    keep = np.zeros(16, bool)
    keep[top] = True
    up = torch.from_numpy(keep.reshape(4, 4)).repeat_interleave(PATCH, 0).repeat_interleave(PATCH, 1)
    deleted = model_targets(tiny_encoder, dist, (px[1] * ~up)[None]).numpy()[0, FAKE_LOGIT]
    inserted = model_targets(tiny_encoder, dist, (px[1] * up)[None]).numpy()[0, FAKE_LOGIT]
    assert abs(res.deletion[1, 1, 2] - deleted) < 1e-5 and abs(res.insertion[1, 1, 2] - inserted) < 1e-5
    assert abs(res.deletion[1, 1, 2] - res.deletion[1, 1, 1]) > 1e-6  # the masks change something


def test_perturbed_copies_go_through_in_batches_and_figures_are_reproducible(tiny_encoder, monkeypatch):
    from asap_core.model.encoder import ClipEncoder

    sizes: list[int] = []
    original = ClipEncoder.embed
    monkeypatch.setattr(ClipEncoder, "embed", lambda self, px, **kw: (sizes.append(len(px)), original(self, px))[1])
    torch.manual_seed(1)
    px = torch.randn(3, 3, 32, 32)
    maps = np.random.default_rng(1).random((3, N_TARGETS, SIDE, SIDE))
    metric = DeletionInsertion(tiny_encoder, _random_distiller(1), steps=16, n_random=4, batch_size=64)
    res = metric.evaluate(px, maps, seeds=[7, 8, 9])
    bound = 2 + 2 * 15 * (N_TARGETS + 2 * 4)
    assert sum(sizes) <= 3 * bound and max(sizes) == 64
    assert sum(s < 64 for s in sizes) <= 3  # one partial batch per image at most
    again = metric.evaluate(px[1:2], maps[1:2], seeds=[8])  # an image's figures do not depend on its batch
    np.testing.assert_allclose(again.curves[0], res.curves[1], atol=1e-5)
    table = res.summary()
    assert list(table["target"]) == list(range(N_TARGETS)) and table["n_images"].min() == 3
    with pytest.raises(InputError, match="attributions"):
        metric.evaluate(px, maps[:, :3])


def test_figures_normalise_per_image_and_target():
    x = np.linspace(0, 1, 5)
    c = np.zeros((1, 2, len(CURVES), 5))
    c[0, 0, :] = [10, 8, 6, 4, 2]  # image 10, baseline 2: deletion linear -> AUC 0.5
    c[0, 0, 0] = [10, 2, 2, 2, 2]  # the map's deletion drops in the first step
    c[0, 0, 1] = [2, 10, 10, 10, 10]  # the map's insertion rises in the first step
    c[0, 0, 3] = c[0, 0, 5] = [2, 4, 6, 8, 10]
    c[0, 1] = 5.0  # a target that does not react: NaN, not a division by 0
    norm = normalise_curves(c)
    np.testing.assert_allclose(norm[0, 0, 0], [1, 0, 0, 0, 0])
    assert np.isnan(norm[0, 1]).all()
    fig = image_figures(c, x)
    np.testing.assert_allclose(fig["deletion_auc"][0, 0], 0.125)
    np.testing.assert_allclose(fig["deletion_abc"][0, 0], 0.375)
    np.testing.assert_allclose(fig["insertion_abc"][0, 0], 0.375)
    np.testing.assert_allclose(fig["ratio"][0, 0], 0.5 / 0.125)
    table = summarise(c, x, [0, FAKE_LOGIT])
    assert table.loc[1, "n_images"] == 0 and np.isnan(table.loc[1, "ratio"])


# ----------------------------------------------------------------------------- acceptance 1


def test_planted_artifact_maps_beat_random_and_a_random_region_control_does_not(tiny_encoder):
    """Acceptance 1: the fake-logit maps of fakes carrying a planted checkerboard delete the fake logit faster
    than a random patch order by at least ``MARGIN`` (area between the normalised curves); maps that point at a
    random region instead do not."""
    from asap_core.method.relevance import relevance_maps

    dist = planted_detector(tiny_encoder)
    px, pos = planted_fakes(tiny_encoder)
    maps = relevance_maps(tiny_encoder, dist, px)[:, [FAKE_LOGIT]].numpy()
    metric = DeletionInsertion(tiny_encoder, dist, steps=16, n_random=4)
    row = metric.evaluate(px, maps, target=FAKE_LOGIT).summary().iloc[0]
    assert row["n_images"] == len(pos)
    assert row["deletion_abc"] >= MARGIN, row.to_dict()
    assert row["deletion_abc_mask"] >= MARGIN and row["insertion_abc"] >= MARGIN and row["ratio"] >= RATIO
    assert row["beats_random"]

    rng = np.random.default_rng(5)
    control = rng.random(maps.shape) * 0.01
    control.reshape(len(pos), -1)[np.arange(len(pos)), rng.integers(SIDE * SIDE, size=len(pos))] += 1.0
    ctrl = metric.evaluate(px, control, target=FAKE_LOGIT).summary().iloc[0]
    assert ctrl["deletion_abc"] < MARGIN and ctrl["ratio"] < RATIO, ctrl.to_dict()
    assert row["deletion_abc"] - ctrl["deletion_abc"] >= MARGIN


# ----------------------------------------------------------------------------- library cross-check


def test_quantus_region_perturbation_gives_the_same_deletion_curve(tiny_encoder):
    """Quantus' ``RegionPerturbation`` (MoRF, one ViT patch per region, baseline 0 in normalised pixels) records
    ``f(x) - f(x_k)`` after k regions: our deletion curve with one patch per step, to float rounding."""
    quantus = pytest.importorskip("quantus")

    class Targets(torch.nn.Module):
        def __init__(self, encoder, distiller) -> None:
            super().__init__()
            self.encoder, self.distiller = encoder, distiller

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model_targets(self.encoder, self.distiller, x)

    dist = _random_distiller(2)
    torch.manual_seed(2)
    px = torch.randn(3, 3, 32, 32)
    maps = np.random.default_rng(2).random((3, 1, SIDE, SIDE))  # no ties: both sorts give one order
    ours = DeletionInsertion(tiny_encoder, dist, steps=16, n_random=1).evaluate(px, maps, target=FAKE_LOGIT)
    metric = quantus.RegionPerturbation(patch_size=PATCH, regions_evaluation=SIDE * SIDE, order="morf",
                                        perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True,
                                        display_progressbar=False)
    a_batch = np.kron(maps, np.ones((PATCH, PATCH))).astype(np.float32)  # [3, 1, 32, 32], per pixel
    scores = metric(model=Targets(tiny_encoder, dist).eval(), x_batch=px.numpy(), y_batch=np.full(3, FAKE_LOGIT),
                    a_batch=a_batch, softmax=False, channel_first=True, device="cpu")
    theirs = np.stack([np.asarray(s) for s in scores])  # [3, 16]
    curve = ours.deletion[:, 0]
    np.testing.assert_allclose(curve[:, 0:1] - curve[:, 1:], theirs, atol=1e-4)
    assert np.abs(theirs).max() > 1e-2  # the comparison can fail


# ----------------------------------------------------------------------------- bundle level: analyze option, cache


@pytest.fixture(scope="module")
def checked_bundle(tmp_path_factory, tiny_clip_dir, small_folder):
    """``python -m asap_core analyze SMALL --faithfulness 4`` (no precomputed maps): the bundle and its stdout."""
    import contextlib
    import io

    from asap_core.cli import main
    from asap_core.storage.bundle import Bundle

    tmp = tmp_path_factory.mktemp("checks")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["analyze", str(small_folder), "--out", str(tmp / "bundle"), "--model", str(tiny_clip_dir),
                   "--cache-dir", str(tmp / "cache"), "--workers", "0", "--faithfulness", "4"])
    assert rc == 0
    return Bundle.open(tmp / "bundle"), out.getvalue()


@pytest.fixture
def no_compute(check_evaluations):
    """Counts the images each check evaluates (a cache hit evaluates none)."""
    return check_evaluations


def test_analyze_option_stores_both_checks_for_the_app(checked_bundle, no_compute):
    from asap_core.analyses.explanation_checks import analysis_checks, analysis_sample, read_summary

    bundle, stdout = checked_bundle
    assert "Explanation checks (4 images, last-block)" in stdout and "flags all targets (random CLIP)" in stdout
    assert bundle.options["faithfulness"] == 4
    ids = analysis_sample(bundle)
    labels = bundle.images.set_index("image_id").loc[ids, "label"]
    assert len(ids) == 4 and sorted(labels) == ["fake", "fake", "real", "real"]
    digest = read_summary(bundle)
    assert digest["image_ids"] == ids and len(digest["targets"]) == N_TARGETS and digest["encoder_random"]
    faith, sanity = analysis_checks(bundle)  # read from the bundle's cache: nothing computed
    assert no_compute == {"faithfulness": 0, "sanity": 0}
    assert list(faith.summary["target"]) == list(range(N_TARGETS)) and faith.summary["n_images"].max() == 4
    assert len(faith.per_image) == 4 * N_TARGETS and set(faith.curves["curve"]) == set(CURVES)
    assert sanity.summary["flagged"].all() and sanity.encoder_random  # the tiny CLIP is a random init
    assert (bundle.cache_dir / "explanation-checks.json").is_file()
    import contextlib
    import io

    from asap_core.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", str(bundle.path)]) == 0
    assert "Explanation checks (4 images, last-block)" in out.getvalue()  # info prints the stored digest


def test_reports_on_picked_images_compute_each_image_once(checked_bundle, no_compute):
    from asap_core.analyses.explanation_checks import (analysis_sample, checks_missing, faithfulness_report,
                                                       sanity_report)

    bundle, _ = checked_bundle
    sample = analysis_sample(bundle)
    extra = [i for i in bundle.images["image_id"] if i not in sample][:2]
    assert checks_missing(bundle, sample + extra) == {"faithfulness": extra, "sanity": extra}
    faith = faithfulness_report(bundle, sample + extra)
    sanity = sanity_report(bundle, sample + extra)
    assert no_compute == {"faithfulness": 2, "sanity": 2}  # only the images not checked at analyze time
    again = faithfulness_report(bundle, extra + sample)
    sanity_report(bundle, sample + extra)
    assert no_compute == {"faithfulness": 2, "sanity": 2}  # second call: nothing computed
    a = faith.per_image.set_index(["image_id", "target"]).sort_index()
    b = again.per_image.set_index(["image_id", "target"]).sort_index()
    np.testing.assert_allclose(a["deletion_abc"], b["deletion_abc"], equal_nan=True)
    assert len(sanity.per_image) == 6 * N_TARGETS
    with pytest.raises(InputError):
        faithfulness_report(bundle, ["not-an-id"])


def test_a_negative_sample_size_is_refused_before_any_work():
    from asap_core.pipeline.analyze import AnalyzeOptions

    with pytest.raises(InputError, match="--faithfulness -1"):
        AnalyzeOptions(faithfulness=-1).check()


def test_check_sample_is_seeded_balanced_and_order_free():
    import pandas as pd

    from asap_core.analyses.explanation_checks import check_sample

    images = pd.DataFrame({"image_id": [f"{i:03d}" for i in range(20)],
                           "label": ["fake"] * 3 + ["real"] * 15 + [None] * 2})
    pick = check_sample(images, 8, seed=1)
    assert len(pick) == 8 and len(set(pick)) == 8
    labels = images.set_index("image_id").loc[pick, "label"]
    assert (labels == "fake").sum() == 3 and labels.notna().all()  # 3 fakes only: reals fill in
    assert check_sample(images.iloc[::-1], 8, seed=1) == pick and check_sample(images, 8, seed=2) != pick
    assert check_sample(images, 0) == []


def test_a_view_can_ask_for_some_targets_and_the_rest_comes_later(checked_bundle, no_compute):
    from asap_core.analyses.explanation_checks import analysis_sample, checks_missing, faithfulness_report

    bundle, _ = checked_bundle
    sample = analysis_sample(bundle)
    extra = [i for i in bundle.images["image_id"] if i not in sample][2:4]
    some = faithfulness_report(bundle, extra, targets=[FAKE_LOGIT, 3, FAKE_LOGIT])
    assert list(some.summary["target"]) == [FAKE_LOGIT, 3] and len(some.per_image) == 4
    assert no_compute["faithfulness"] == 2
    assert checks_missing(bundle, extra, targets=[3])["faithfulness"] == []
    assert checks_missing(bundle, extra)["faithfulness"] == extra
    one = faithfulness_report(bundle, extra, targets=[FAKE_LOGIT])
    assert no_compute["faithfulness"] == 2  # cached
    full = faithfulness_report(bundle, extra)  # the other 15 targets of these images
    assert no_compute["faithfulness"] == 4 and list(full.summary["target"]) == list(range(N_TARGETS))
    a = full.per_image.set_index(["image_id", "target"]).loc[one.per_image.set_index(["image_id", "target"]).index]
    np.testing.assert_allclose(a["deletion_abc"], one.per_image["deletion_abc"], equal_nan=True)
    with pytest.raises(InputError, match="targets"):
        faithfulness_report(bundle, extra, targets=[17])
