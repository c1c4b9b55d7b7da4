"""Relevance maps: batched VJP equals a one-target-at-a-time reference; planted artifacts are found where planted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.errors import InputError
from asap_core.method.distiller import Distiller, DistillerConfig
from asap_core.method.relevance import (
    AttentionRelevance,
    overlay,
    relevance_for_images,
    relevance_maps,
    upsample_map,
)
from asap_core.storage.schema import N_TARGETS, TARGET_NAMES
from tests.conftest import planted_image

SIDE = 4  # tiny CLIP: 32 px, patch 8
PATCH = 8


def _random_distiller(seed: int = 0, scale: float = 10.0) -> Distiller:
    """Random distiller with weights scaled up so the gradients are not tiny."""
    torch.manual_seed(seed)
    d = Distiller(DistillerConfig(embed_dim=64, proj_dim=64), projection=None)
    with torch.no_grad():
        d.dims.weight.mul_(scale)
        d.head.weight.mul_(3.0)
    return d.eval()


def _reference(encoder, distiller, pixel_values: torch.Tensor, method: str) -> torch.Tensor:
    """Plain implementation: one fresh forward + one backward per target, the formula written out."""
    b = pixel_values.shape[0]
    t = SIDE * SIDE + 1
    out = torch.zeros(b, N_TARGETS, t - 1)
    for k in range(N_TARGETS):
        px = pixel_values.clone().requires_grad_(True)
        emb, atts = encoder.embed(px, output_attentions=True)
        z, logit = distiller(emb)
        target = torch.cat([z, logit[:, None]], dim=1)[:, k].sum()  # images are independent: sum = per-image grads
        if method == "last-block":
            (g,) = torch.autograd.grad(target, atts[-1])
            out[:, k] = (g * atts[-1]).clamp(min=0).mean(dim=1)[:, 0, 1:]
        else:
            grads = torch.autograd.grad(target, atts)
            r = torch.eye(t).expand(b, t, t)
            for g, a in zip(grads, atts):
                r = r + (g * a).clamp(min=0).mean(dim=1) @ r
            out[:, k] = r[:, 0, 1:]
    return out.reshape(b, N_TARGETS, SIDE, SIDE)


@pytest.mark.parametrize("method", ["last-block", "rollout"])
@pytest.mark.slow
def test_batched_vjp_equals_per_target_reference(tiny_encoder, method):
    torch.manual_seed(1)
    px = torch.randn(3, 3, 32, 32)
    dist = _random_distiller()
    maps = relevance_maps(tiny_encoder, dist, px, method=method)
    assert maps.shape == (3, N_TARGETS, SIDE, SIDE) and maps.dtype == torch.float32 and maps.device.type == "cpu"
    ref = _reference(tiny_encoder, dist, px, method)
    assert ref.abs().max() > 1e-3  # non-trivial, so the comparison can fail
    assert (ref > 0).float().mean() > 0.5
    assert (maps - ref).abs().max().item() <= 1e-4
    assert (maps >= 0).all()
    # images differ, so their maps differ (catches a batch mix-up)
    assert (maps[0] - maps[1]).abs().max() > 1e-4


def test_attribute_targets_and_errors(tiny_encoder):
    torch.manual_seed(2)
    px = torch.randn(2, 3, 32, 32)
    dist = _random_distiller(seed=3)
    explainer = AttentionRelevance(tiny_encoder, dist)
    full = explainer.attribute(px)
    assert full.shape == (2, 17, SIDE, SIDE)
    sub = explainer.attribute(px, target=[16, 3])
    assert torch.allclose(sub, full[:, [16, 3]], atol=1e-6)
    one = explainer.attribute(px, target=16)
    assert one.shape == (2, 1, SIDE, SIDE) and torch.allclose(one[:, 0], full[:, 16], atol=1e-6)
    assert len(TARGET_NAMES) == N_TARGETS == 17 and TARGET_NAMES[16] == "fake logit"
    with pytest.raises(InputError):
        explainer.attribute(px, target=17)
    with pytest.raises(InputError):
        AttentionRelevance(tiny_encoder, dist, method="gradcam")
    assert explainer.attribute(px[:0]).shape == (0, 17, SIDE, SIDE)


def test_works_under_inference_mode_and_with_sdpa_encoder(tiny_clip_dir, tiny_encoder):
    from asap_core.model.encoder import ClipEncoder

    torch.manual_seed(4)
    px = torch.randn(2, 3, 32, 32)
    dist = _random_distiller(seed=5)
    expected = relevance_maps(tiny_encoder, dist, px)
    with torch.inference_mode():
        px_inf = px.clone()  # an inference tensor
        got = relevance_maps(tiny_encoder, dist, px_inf)
    assert torch.allclose(got, expected, atol=1e-6)
    sdpa = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")
    assert sdpa.vision_model.config._attn_implementation == "sdpa"
    got = relevance_maps(sdpa, dist, px, method="rollout")
    assert torch.allclose(got, relevance_maps(tiny_encoder, dist, px, method="rollout"), atol=1e-5)
    assert sdpa.vision_model.config._attn_implementation == "sdpa"  # restored


# ------------------------------------------------------------------ planted artifact


@pytest.mark.slow
def test_planted_artifact_is_found_at_its_patch(tiny_encoder):
    """Fit the fake logit to "checkerboard somewhere" vs clean; the fake-logit map must point at the patch.

    Findings (tiny random CLIP, seed 0): the fit separates the classes (train acc ~1.0); the last-block
    fake-logit map's argmax is the artifact patch for all 16 positions, while the raw CLS attention of the
    last block never is, and a distiller whose head is negated (reads "clean") does not point there:
    localisation comes from the gradient-weighted relevance of the target, not from attention alone.
    Flipping the map upside-down or transposing it breaks the match, which pins the orientation.
    """
    rng = np.random.default_rng(0)
    n = 120
    train = [planted_image(rng, None) for _ in range(n)] + \
            [planted_image(rng, int(rng.integers(SIDE * SIDE))) for _ in range(n)]
    y = torch.tensor([0.0] * n + [1.0] * n)
    emb = tiny_encoder.encode_images(train)
    torch.manual_seed(0)
    dist = Distiller(DistillerConfig(embed_dim=64, proj_dim=64), projection=None)
    opt = torch.optim.Adam(dist.parameters(), lr=1e-2)
    for _ in range(300):
        _, logit = dist(emb)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((logit > 0).float() == y).float().mean() > 0.9  # the artifact is learnable here

    pos = np.arange(32) % (SIDE * SIDE)  # every position, twice, on fresh backgrounds
    px = tiny_encoder.preprocess([planted_image(rng, int(p)) for p in pos])
    maps = relevance_maps(tiny_encoder, dist, px, method="last-block")[:, 16].numpy()  # [32, 4, 4]
    assert maps.shape == (32, SIDE, SIDE) and maps.max() > 0

    def hits(m: np.ndarray) -> float:
        return float((m.reshape(len(m), -1).argmax(1) == pos).mean())

    assert hits(maps) >= 0.7
    assert hits(maps[:, ::-1]) < 0.3  # row 0 is the top: an upside-down map misses
    assert hits(maps.transpose(0, 2, 1)) < 0.5
    with torch.no_grad():
        _, atts = tiny_encoder.embed(px, output_attentions=True)
    assert hits(atts[-1].mean(1)[:, 0, 1:].reshape(-1, SIDE, SIDE).numpy()) < 0.5  # attention alone does not
    with torch.no_grad():
        dist.head.weight.neg_()
    negated = relevance_maps(tiny_encoder, dist, px, method="last-block")[:, 16].numpy()
    assert hits(negated) < 0.5


# ------------------------------------------------------------------ batching helper and display


@pytest.mark.slow
def test_relevance_for_images_batches_equal_one_call(tiny_encoder):
    rng = np.random.default_rng(3)
    images = [planted_image(rng, int(rng.integers(16))) for _ in range(7)]
    dist = _random_distiller(seed=7)
    seen: list[tuple[int, int]] = []
    batched = relevance_for_images(tiny_encoder, dist, images, "rollout", batch_size=3,
                                   progress=lambda done, total: seen.append((done, total)))
    whole = relevance_maps(tiny_encoder, dist, tiny_encoder.preprocess(images), "rollout").numpy()
    assert batched.shape == (7, 17, SIDE, SIDE) and batched.dtype == np.float16
    np.testing.assert_allclose(batched.astype(np.float32), whole, rtol=2e-3, atol=1e-5)
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert relevance_for_images(tiny_encoder, dist, [], "last-block").shape == (0, 17, SIDE, SIDE)


def test_upsample_map_matches_torch_bilinear_and_keeps_orientation():
    rng = np.random.default_rng(0)
    m = rng.random((7, 7)).astype(np.float32)
    up = upsample_map(m, 224)
    ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(224, 224), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    assert up.shape == (224, 224) and up.dtype == np.float32
    np.testing.assert_allclose(up, ref, atol=1e-5)
    top = np.zeros((4, 4), np.float32)
    top[0] = 1.0
    up = upsample_map(top, 32)
    assert up[:8].mean() > 0.8 and up[-8:].max() == 0.0
    np.testing.assert_allclose(upsample_map(np.full((3, 3), 2.5), 10), 2.5)


def test_overlay_colours_the_relevant_region():
    img = Image.fromarray(np.full((40, 60, 3), 128, np.uint8))  # non-square: centre square 40 x 40
    m = np.zeros((4, 4), np.float32)
    m[0, 3] = 1.0  # top-right patch
    out = overlay(img, m, alpha=0.6)
    arr = np.asarray(out).astype(int)
    assert out.mode == "RGB" and out.size == (40, 40)
    tr, bl = arr[:5, -5:].reshape(-1, 3).mean(0), arr[-5:, :5].reshape(-1, 3).mean(0)
    assert tr[0] > tr[2] + 50  # hot = red
    assert bl[2] > bl[0] + 50  # cold = blue
    same = overlay(img, m, alpha=0.0)
    assert np.array_equal(np.asarray(same), np.full((40, 40, 3), 128, np.uint8))


def test_display_helpers_import_without_torch():
    """The app shows stored maps from a bundle without torch installed."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np; from PIL import Image\n"
            "from asap_core.method.relevance import overlay, upsample_map\n"
            "from asap_core.storage.schema import TARGET_NAMES\n"
            "print(overlay(Image.new('RGB', (20, 20)), np.eye(4)).size, upsample_map(np.eye(4), 8).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert out.returncode == 0, out.stderr
    assert "(20, 20) (8, 8)" in out.stdout


@pytest.mark.parametrize("decoder,workers", [("inline", 0), ("thread", 1)])
def test_precomputed_maps_equal_direct_maps_and_name_bad_files(tiny_encoder, tmp_path, decoder, workers):
    """The relevance pass decodes through the embedding stage's decoder: same maps as from PIL images."""
    import pandas as pd

    from asap_core.method.relevance_store import compute_missing_maps
    from asap_core.storage.cache import RowStore

    rng = np.random.default_rng(5)
    images = [planted_image(rng, int(rng.integers(16))) for _ in range(7)]
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"im{i}.png"))
        im.save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = pd.DataFrame({"image_id": [f"id{i}" for i in range(8)], "path": paths + [str(tmp_path / "broken.png")]})
    dist = _random_distiller(seed=7)
    store = RowStore(tmp_path / "cache", "maps", (N_TARGETS, SIDE, SIDE))
    seen: list[tuple[int, int]] = []
    failures = compute_missing_maps(store, tiny_encoder, dist, rows, "last-block", batch_size=3,
                                    progress=lambda d, t: seen.append((d, t)), decoder=decoder, num_workers=workers)
    assert [p for p, _ in failures] == [str(tmp_path / "broken.png")]
    assert store.missing(rows["image_id"]) == ["id7"]
    # the same batches as the store's (3, 3, then 1: the broken file decodes to nothing), so that batched
    # matrix products round alike and the maps must be equal to the bit: the decode paths are the same
    direct = relevance_for_images(tiny_encoder, dist, images, "last-block", batch_size=3)
    np.testing.assert_array_equal(store.get([f"id{i}" for i in range(7)]), direct)
    assert seen[0] == (0, 8) and seen[-1] == (8, 8)
    assert compute_missing_maps(store, tiny_encoder, dist, rows.iloc[:7], "last-block") == []  # all cached


def test_last_block_records_autograd_only_in_the_last_layer(tiny_encoder):
    """last-block relevance: layers before the last run without autograd, the last one on the class token,
    and the shared model's attention implementation is never switched."""
    layers = tiny_encoder.vision_model.vision_model.encoder.layers
    seen: list[tuple[int, bool, int]] = []
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o, n=n: seen.append((n, o.requires_grad, o.shape[1])))
             for n, layer in enumerate(layers)]
    impl = tiny_encoder.vision_model.config._attn_implementation
    try:
        torch.manual_seed(4)
        maps = AttentionRelevance(tiny_encoder, _random_distiller(seed=5), "last-block").attribute(
            torch.randn(2, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    assert maps.shape == (2, N_TARGETS, SIDE, SIDE) and maps.abs().max() > 0
    last = len(layers) - 1
    assert [n for n, _, _ in seen] == list(range(len(layers)))
    assert all(not grad and tokens == SIDE * SIDE + 1 for n, grad, tokens in seen if n < last)
    assert [(grad, tokens) for n, grad, tokens in seen if n == last] == [(True, 1)]
    assert tiny_encoder.vision_model.config._attn_implementation == impl


def test_maps_from_the_last_layer_input_equal_maps_from_pixels(tiny_encoder):
    """``attribute_from_last_input`` starts where the embedding pass stopped: the same maps as from the
    pixels (exactly for the float32 input, to float16 rounding for the kept float16 copy)."""
    torch.manual_seed(6)
    px = torch.randn(3, 3, 32, 32)
    explainer = AttentionRelevance(tiny_encoder, _random_distiller(seed=8), "last-block")
    with torch.inference_mode():
        _, last = tiny_encoder.image_forward(px, with_last_input=True)
        ref = explainer.attribute(px)
        got = explainer.attribute_from_last_input(last)
        got16 = explainer.attribute_from_last_input(last.half(), target=[16, 0])
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, atol=1e-6 * float(ref.abs().max()), rtol=1e-5)
    torch.testing.assert_close(got16, ref[:, [16, 0]], atol=5e-3 * float(ref.abs().max()), rtol=0)
    with pytest.raises(InputError, match="last-block"):
        AttentionRelevance(tiny_encoder, _random_distiller(), "rollout").attribute_from_last_input(last)
    with pytest.raises(InputError, match="last_input must be"):
        explainer.attribute_from_last_input(last[:, 1:])


def test_relevance_pass_starts_from_the_kept_last_inputs(tiny_encoder, tmp_path):
    """``embed_files`` keeps the last layer's input; the relevance pass then needs neither the files nor
    layers 0..L-2 for those images, decodes the others, and ``precompute_relevance`` deletes the rows."""
    import pandas as pd

    from asap_core.method.relevance_store import last_input_store, map_store, precompute_relevance
    from asap_core.model.embedding import embed_files
    from asap_core.model.encoder import inspect_checkpoint
    from asap_core.storage.cache import RowStore

    rng = np.random.default_rng(9)
    images = [planted_image(rng, int(rng.integers(16))) for _ in range(7)]
    paths = [str(tmp_path / f"im{i}.png") for i in range(7)]
    for im, p in zip(images, paths):
        im.save(p)
    ids = [f"id{i}" for i in range(7)]
    info = inspect_checkpoint(str(tiny_encoder.model_id))
    kept = last_input_store(tmp_path / "cache", info, tiny_encoder.dtype)
    plain = RowStore(tmp_path / "cache", "emb-plain", (64,))
    embed_files(lambda: tiny_encoder, tiny_encoder.preprocessor, paths[:5], ids[:5], plain, RowStore(tmp_path, "t1"),
                batch_size=3, num_workers=0)
    emb = RowStore(tmp_path / "cache", "emb", (64,))
    embed_files(lambda: tiny_encoder, tiny_encoder.preprocessor, paths[:5], ids[:5], emb, RowStore(tmp_path, "t2"),
                batch_size=3, num_workers=0, last_input_store=kept)
    np.testing.assert_array_equal(emb.get(ids[:5]), plain.get(ids[:5]))  # keeping it changes no embedding
    assert kept.missing(ids) == ids[5:]
    rows = kept.get(ids[:5])
    assert rows.dtype == np.float16 and rows.shape == (5, SIDE * SIDE + 1, info.hidden_size)
    with torch.no_grad():
        _, last = tiny_encoder.image_forward(tiny_encoder.preprocess(images[:5]), with_last_input=True)
    np.testing.assert_allclose(rows.astype(np.float32), last.numpy(), rtol=1e-3, atol=1e-3)

    for p in paths[:5]:  # the kept images are not read again
        Path(p).unlink()
    dist = _random_distiller(seed=3)
    seen: list[tuple[int, int]] = []
    store = precompute_relevance(tmp_path / "cache", info, lambda: tiny_encoder, dist,
                                 pd.DataFrame({"image_id": ids, "path": paths}), "last-block",
                                 progress=lambda d, t: seen.append((d, t)), decoder="inline", last_inputs=kept)
    assert store.dir == map_store(tmp_path / "cache", info.cache_key, dist.fingerprint, "last-block", SIDE).dir
    assert store.missing(ids) == []
    direct = relevance_for_images(tiny_encoder, dist, images, "last-block").astype(np.float32)
    got = store.get(ids).astype(np.float32)
    np.testing.assert_array_equal(got[5:], direct[5:])  # decoded: the pixel path, exactly
    np.testing.assert_allclose(got[:5], direct[:5], rtol=0, atol=5e-3 * float(np.abs(direct).max()))
    assert seen[0] == (0, 7) and seen[-1] == (7, 7)
    assert kept.missing(ids) == ids  # used, then deleted
