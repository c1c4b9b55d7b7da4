"""Pattern view: planted-artifact impact vs random regions, the pattern store, ranking and export."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.analyses.patterns import (
    Pattern,
    PatternStore,
    contact_sheet,
    export_patterns,
    pattern_from_concept,
    pattern_from_selection,
    pattern_impact,
    rank_patterns,
    region_masks,
)
from asap_core.errors import InputError
from asap_core.inputs.imageio import decode_image, read_bytes
from asap_core.method.distiller import Distiller, DistillerConfig
from asap_core.pipeline.analyze import AnalyzeOptions, analyze
from asap_core.storage.bundle import Bundle

# every test here needs the module's own analysis (a distiller fitted to confidence, then analyze)
pytestmark = pytest.mark.slow

SIDE = 4  # the tiny CLIP: 32 px input, 8 px patches
PLANTED = np.zeros((SIDE, SIDE), bool)
PLANTED[:2, :2] = True  # make_image paints the top-left third of every fake: patches (0..1, 0..1)


def confident_distiller(folder, encoder, steps: int = 300) -> Distiller:
    """A distiller (identity projection) fitted to a confident fit on ``folder`` (full-batch BCE, fixed seed).

    The pipeline's trainer stops at the first epoch with validation AUC 1.0, which on this perfectly
    separable toy data leaves p_fake within 0.01 of 0.5; impact in p_fake units needs a confident detector.
    """
    files = sorted(folder.rglob("*.jpg"))
    emb = encoder.encode_images([decode_image(read_bytes(f), f) for f in files])
    y = torch.tensor(["fake" in f.relative_to(folder).parts for f in files], dtype=torch.float32)
    torch.manual_seed(0)
    d = Distiller(DistillerConfig(embed_dim=encoder.embed_dim, proj_dim=encoder.embed_dim))
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    for _ in range(steps):
        _, logit = d(emb)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return d.eval()


@pytest.fixture(scope="module")
def bundle(tiny_clip_dir, small_folder, tiny_encoder, tmp_path_factory) -> Bundle:
    """small_folder (fakes carry a bright top-left square) analysed with a confidently fitted distiller."""
    tmp = tmp_path_factory.mktemp("patterns")
    confident_distiller(small_folder, tiny_encoder).save_pretrained(tmp / "distiller")
    analyze(small_folder, tmp / "bundle", AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(tmp / "cache"),
                                                          num_workers=0, distiller=str(tmp / "distiller")))
    b = Bundle.open(tmp / "bundle")
    assert b.meta["encoder"]["patch_side"] == SIDE
    return b


@pytest.fixture(scope="module")
def fakes(bundle) -> list[str]:
    return bundle.images.loc[bundle.images["label"] == "fake", "image_id"].tolist()


def random_region_pattern(ids: list[str], seed: int = 1) -> Pattern:
    """Per image 4 patches drawn uniformly: the same area as the planted pattern, anywhere."""
    rng = np.random.default_rng(seed)
    masks = {}
    for i in ids:
        m = np.zeros(SIDE * SIDE, bool)
        m[rng.choice(SIDE * SIDE, 4, replace=False)] = True
        masks[i] = m.reshape(SIDE, SIDE)
    return Pattern("random regions", ids, masks=masks)


def test_planted_artifact_has_larger_impact_than_random_regions(bundle, fakes, tiny_encoder):
    assert bundle.images.groupby("label")["p_fake"].mean()["fake"] > 0.9  # the detector learned the square
    planted = pattern_impact(bundle, Pattern("planted", fakes, masks={i: PLANTED for i in fakes}), tiny_encoder)
    rand = pattern_impact(bundle, random_region_pattern(fakes), tiny_encoder)
    # masking the square out lowers p_fake far more than masking the same area elsewhere
    assert planted["impact"] > rand["impact"] + 0.2
    assert planted["excess"] > 0.2 and planted["excess"] > 5 * planted["excess_se"]
    assert abs(rand["excess"]) < 0.1
    assert planted["impact_logit"] > rand["impact_logit"] + 2.0
    assert planted["n_flipped"] > rand["n_flipped"] and planted["n_flipped"] > planted["n_flipped_random"]
    assert planted["mean_area"] == rand["mean_area"] == 4.0
    t = planted["table"]
    assert len(t) == len(fakes) and list(t["image_id"]) == fakes and (t["area"] == 4).all()
    # the unmasked re-encoding reproduces the bundle's own p_fake (same preprocessing path)
    bundle_p = bundle.images.set_index("image_id").loc[fakes, "p_fake"].to_numpy()
    np.testing.assert_allclose(t["p_fake"], bundle_p, atol=1e-4)
    np.testing.assert_allclose(t["drop"], t["p_fake"] - t["p_fake_masked"], atol=1e-12)
    assert planted["n_flipped"] == int(((t["p_fake"] >= 0.5) != (t["p_fake_masked"] >= 0.5)).sum())


def test_selection_uses_top_quarter_of_fake_logit_map(bundle, fakes, tiny_encoder):
    sel = pattern_from_selection("fake selection", fakes, note="all fakes")
    regions = region_masks(bundle, sel, tiny_encoder)
    assert regions.shape == (len(fakes), SIDE, SIDE) and (regions.reshape(len(fakes), -1).sum(1) == 4).all()
    res = pattern_impact(bundle, sel, tiny_encoder)
    rand = pattern_impact(bundle, random_region_pattern(fakes, seed=2), tiny_encoder)
    # the relevance maps point at the artifact often enough that their regions matter more than chance
    assert res["excess"] > 3 * res["excess_se"] and res["excess"] > rand["excess"]


def test_impact_is_cached_by_content(bundle, fakes, tiny_encoder, encode_counter):
    p = Pattern("cached", fakes[:6], masks={i: PLANTED for i in fakes[:6]})
    first = pattern_impact(bundle, p, tiny_encoder, n_random=2, random_state=5)
    calls = encode_counter
    calls["images"] = 0  # count from here: the calls above computed the table
    renamed = Pattern("renamed", fakes[:6], note="other note", masks={i: PLANTED for i in fakes[:6]})
    again = pattern_impact(bundle, renamed, tiny_encoder, n_random=2, random_state=5)
    assert calls["images"] == 0 and again["name"] == "renamed"
    assert again["impact"] == pytest.approx(first["impact"], abs=1e-12)
    pattern_impact(bundle, p, tiny_encoder, n_random=2, random_state=6)  # another seed: computed
    assert calls["images"] == 6 * (2 + 2)


def test_store_roundtrip_and_errors(bundle, fakes):
    store = PatternStore(bundle)
    masks = {i: np.random.default_rng(k).random((SIDE, SIDE)) > 0.5 for k, i in enumerate(fakes[:3])}
    a = Pattern("Bright corner / top-left", fakes[:3], "concept", "the square", masks=masks)
    b = pattern_from_selection("plain selection", fakes[3:5])
    path = store.add(a)
    store.add(b)
    assert path.parent == bundle.cache_dir / "patterns" and path.suffix == ".json"
    json.loads(path.read_text())  # plain JSON
    assert store.names() == ["Bright corner / top-left", "plain selection"]
    back = store.get("Bright corner / top-left")
    assert back.note == "the square" and back.source == "concept" and back.image_ids == fakes[:3]
    for i in fakes[:3]:
        np.testing.assert_array_equal(back.masks[i], masks[i])
    assert store.get("plain selection").masks is None
    with pytest.raises(InputError):
        store.add(a)
    store.add(Pattern(a.name, fakes[:1], note="replaced"), overwrite=True)
    assert store.get(a.name).note == "replaced"
    assert store.delete("plain selection") and not store.delete("plain selection")
    assert store.names() == [a.name]
    with pytest.raises(InputError):
        store.add(Pattern("unknown", ["not-an-id"]))
    with pytest.raises(InputError):
        store.add(Pattern("wrong side", fakes[:1], masks={fakes[0]: np.ones((7, 7), bool)}))
    with pytest.raises(InputError):
        Pattern("missing masks", fakes[:2], masks={fakes[0]: PLANTED})
    with pytest.raises(InputError):
        Pattern("", fakes[:1])
    store.delete(a.name)


def test_rank_and_export(bundle, fakes, tiny_encoder, tmp_path):
    planted = Pattern("planted", fakes, masks={i: PLANTED for i in fakes})
    rand = random_region_pattern(fakes)
    ranking = rank_patterns(bundle, [rand, planted], tiny_encoder)
    assert list(ranking["name"]) == ["planted", "random regions"] and list(ranking["rank"]) == [1, 2]
    assert ranking["excess"].is_monotonic_decreasing
    paths = export_patterns(bundle, [planted, rand], tmp_path / "export", encoder=tiny_encoder)
    names = [p.name for p in paths]
    assert names[:3] == ["patterns.json", "patterns.csv", "pattern_images.csv"]
    assert all(p.is_file() for p in paths)
    meta = json.loads((tmp_path / "export" / "patterns.json").read_text())
    assert [r["name"] for r in meta["patterns"]] == ["planted", "random regions"]
    assert meta["patterns"][0]["impact"]["excess"] == pytest.approx(ranking.loc[0, "excess"])
    assert Pattern.from_dict(meta["patterns"][0]).masks[fakes[0]].tolist() == PLANTED.tolist()
    rows = list(csv.DictReader(open(tmp_path / "export" / "patterns.csv")))
    assert [r["name"] for r in rows] == ["planted", "random regions"]
    assert rows[0]["image_ids"].split(";") == fakes and float(rows[0]["n_flipped"]) >= 1
    per = list(csv.DictReader(open(tmp_path / "export" / "pattern_images.csv")))
    assert len(per) == 2 * len(fakes)
    sheets = [p for p in paths if p.suffix == ".png"]
    assert len(sheets) == 2
    im = Image.open(sheets[0])
    assert im.format == "PNG" and im.width > 8 * 96 and im.height > 3 * 96  # 24 thumbnails, 8 per row
    # region patches keep their thumbnail colours (inside the orange outline); the rest is dimmed
    def tile(pattern):
        return np.asarray(contact_sheet(bundle, pattern, cell=96).convert("L"), np.float64)[26:26 + 96, 4:4 + 96]

    plain = tile(pattern_from_selection("one", fakes[:1]))
    marked = tile(Pattern("one", fakes[:1], masks={fakes[0]: PLANTED}))
    np.testing.assert_allclose(marked[4:44, 4:44], plain[4:44, 4:44], atol=1)
    assert marked[52:92, 52:92].mean() < 0.6 * plain[52:92, 52:92].mean()


def test_pattern_from_concept(bundle, fakes, tiny_encoder):
    from asap_core.analyses.concepts import compute_concepts

    ids = fakes[:4] + bundle.images.loc[bundle.images["label"] == "real", "image_id"].tolist()[:4]
    res = compute_concepts(bundle, ids, k=2, encoder=tiny_encoder)
    p = pattern_from_concept(res, 0, "concept zero")
    seg = res.segments[res.segments["concept"] == 0]
    assert p.source == "concept" and set(p.image_ids) == set(seg["image_id"]) and "concept 0" in p.note
    for i in p.image_ids:
        nearest = seg[seg["image_id"] == i].sort_values("distance").iloc[0]
        np.testing.assert_array_equal(p.masks[i], res.masks[int(nearest["segment"])])
    out = pattern_impact(bundle, p, tiny_encoder)
    assert out["n_images"] == len(p.image_ids) and np.isfinite(out["impact"])
    with pytest.raises(InputError):
        pattern_from_concept(res, 99, "nope")
