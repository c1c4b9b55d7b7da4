"""Hostile inputs: strips and panoramas that CLIP preprocessing would blow up to gigapixels (a 276-byte
65500 x 1 PNG took 14 GB in ``analyze``), and files rewritten while a run reads them.

Every file here is made by the tests. Memory is checked three ways: every Pillow resize is recorded and
must stay within ``MAX_RESIZED_CROPS`` crops; the GPU tensor path must not interpolate anything large;
and a subprocess measures its peak resident memory over the whole decode path (Pillow allocates in C,
which ``tracemalloc`` does not see).
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.inputs.imageio import CHANGED_REASON, decode_image, file_sha1, read_bytes
from asap_core.model import embedding
from asap_core.model.embedding import crop_uint8, decode_batch, embed_files, resize_crop_tensors
from asap_core.model.preprocess import MAX_RESIZED_CROPS, ClipPreprocessor, resize_output_size
from asap_core.storage.cache import RowStore
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)

# (Pillow format, suffix, the geometries it can store): WebP stops at 16383 px, JPEG at 65500
FORMATS = {
    "PNG": (".png", [(65500, 1), (1, 20000), (30000, 3), (3, 30000)]),
    "GIF": (".gif", [(65500, 1), (1, 20000)]),
    "BMP": (".bmp", [(65500, 1), (1, 20000), (3, 30000)]),
    "TIFF": (".tif", [(65500, 1), (1, 20000)]),
    "WEBP": (".webp", [(16383, 1), (1, 16383)]),
    "JPEG": (".jpg", [(65500, 1), (1, 20000), (30000, 3)]),
}
PREPROCESSORS = [ClipPreprocessor(224, 224), ClipPreprocessor(224, 256), ClipPreprocessor(336, 336)]


def _gradient(w: int, h: int) -> np.ndarray:
    """``[h, w, 3]`` uint8 that varies along both sides (so crops and resizes are not trivially flat)."""
    x = np.arange(w * h, dtype=np.int64).reshape(h, w)
    return np.stack([x % 251, (x // 7) % 253, (x * 3 + np.arange(h)[:, None] * 50) % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> list[str]:
    """One file per format and extreme geometry (16 files, a few KB to 270 KB each)."""
    root = tmp_path_factory.mktemp("hostile")
    paths = []
    for fmt, (suffix, sizes) in FORMATS.items():
        for w, h in sizes:
            p = root / f"{fmt.lower()}_{w}x{h}{suffix}"
            Image.fromarray(_gradient(w, h)).save(p, fmt)
            paths.append(str(p))
    return paths


@pytest.fixture
def resize_sizes(monkeypatch) -> list[tuple[int, int]]:
    """Records the output size of every ``Image.resize`` (Pillow's thumbnail goes through it too)."""
    sizes: list[tuple[int, int]] = []
    real = Image.Image.resize

    def recording(self, size, *args, **kw):
        sizes.append(tuple(size))
        return real(self, size, *args, **kw)

    monkeypatch.setattr(Image.Image, "resize", recording)
    return sizes


def _largest(sizes: list[tuple[int, int]]) -> int:
    return max((w * h for w, h in sizes), default=0)


def test_resize_and_crop_of_strips_resizes_a_few_crops_at_most(hostile_files, resize_sizes):
    """Every format and geometry, three preprocessors (one zero-pads): the crop has the model's size and
    no resize on the way makes more than ``MAX_RESIZED_CROPS`` crops (the full resize: up to 4.9 Gpx)."""
    for path in hostile_files:
        image = decode_image(read_bytes(path), path)
        for pre in PREPROCESSORS:
            resize_sizes.clear()
            out = pre.resize_and_crop(image)
            assert out.size == (pre.crop_size, pre.crop_size), path
            full = resize_output_size(*image.size, pre.size)
            assert pre.crops_before_resizing(*image.size) and full[0] * full[1] > 10 ** 6
            assert _largest(resize_sizes) <= MAX_RESIZED_CROPS * pre.crop_size ** 2, (path, resize_sizes)


def test_zero_padding_is_kept_when_a_strip_is_cropped_first():
    """size 224 < crop 256: the short side is padded with zeros (pixel 0) as for any image; the long side
    is cut; the pixels inside equal the full resize's within one level (tiny image: affordable both ways)."""
    pre = ClipPreprocessor(224, 256)
    image = Image.fromarray(_gradient(2000, 8))
    assert pre.crops_before_resizing(*image.size)
    got = np.asarray(pre.resize_and_crop(image)).astype(int)
    full = np.asarray(image.resize((56000, 224), Image.Resampling.BICUBIC)).astype(int)
    expected = np.zeros((256, 256, 3), int)
    expected[16:240] = full[:, 27872:28128]
    assert got.shape == (256, 256, 3) and (got[:16] == 0).all() and (got[240:] == 0).all()
    assert np.abs(got - expected).max() <= 1


def _full_then_crop(pre: ClipPreprocessor, image: Image.Image) -> np.ndarray:
    """The exact path forced: full bicubic resize, then the centre crop (zero padding on short sides)."""
    nw, nh = resize_output_size(*image.size, pre.size)
    c = pre.crop_size
    left, top = (nw - c) // 2, (nh - c) // 2
    canvas = Image.new(image.mode, (max(nw, c), max(nh, c)))
    canvas.paste(image.resize((nw, nh), Image.Resampling.BICUBIC), (max(-left, 0), max(-top, 0)))
    left, top = max(left, 0), max(top, 0)
    return np.asarray(canvas.crop((left, top, left + c, top + c))).astype(int)


def _smooth(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    base = (128 + 60 * np.sin(xx / 37.0) + 40 * np.cos(yy / 23.0))[..., None] + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("content", ["smooth", "noise"])
@pytest.mark.slow
def test_crop_first_equals_the_full_resize_up_to_one_level(content):
    """Where the full resize is still affordable (3000 x 200 and the like), cropping first gives the same
    uint8 pixels but for the rounding of Pillow's float32 box corners. Measured here (2.8 M values each):
    smooth photo-like content 118 differ (4 in 100,000), random noise 358 (13 in 100,000), by one level;
    noise on other shapes reaches two levels on single values (tests/model/test_preprocess.py allows two)."""
    rng = np.random.default_rng(0)
    shapes = [(3000, 200), (200, 3000), (1000, 50), (50, 1000), (2000, 3), (3, 2000), (17, 300), (900, 100)]
    differing, total, worst = 0, 0, 0
    for w, h in shapes:
        image = (_smooth(w, h, rng) if content == "smooth"
                 else Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for pre in (ClipPreprocessor(224, 224), ClipPreprocessor(224, 256), ClipPreprocessor(32, 32)):
            if not pre.crops_before_resizing(w, h):  # e.g. 3000 x 200 at 32 px: a downscale, resized whole
                continue
            diff = np.abs(np.asarray(pre.resize_and_crop(image)).astype(int) - _full_then_crop(pre, image))
            differing, total, worst = differing + int((diff > 0).sum()), total + diff.size, max(worst, diff.max())
    assert worst <= (1 if content == "smooth" else 2)
    assert differing / total < (1e-4 if content == "smooth" else 3e-4)


def test_ordinary_aspect_ratios_keep_the_exact_path(resize_sizes):
    """Photos (shortest side >= size, any ratio) and upscales up to 4:1 are resized whole, as before."""
    pre = ClipPreprocessor(224, 224)
    for w, h in [(3000, 4000), (12000, 3000), (300, 40000), (100, 400), (56, 224), (50, 50)]:
        assert not pre.crops_before_resizing(w, h)
    resize_sizes.clear()
    pre.resize_and_crop(Image.new("RGB", (100, 400)))
    assert resize_sizes == [(224, 896)]


def test_decode_batch_of_strips_is_bounded_with_thumbnails(hostile_files, resize_sizes):
    """The embedding pass's decoder on every hostile file: all decode, crops [n, 3, S, S], thumbnails whose
    longest side is 128, and no resize beyond a few crops."""
    pre = ClipPreprocessor(224, 224)
    items = [(i, p, file_sha1(p)) for i, p in enumerate(hostile_files)]
    res = decode_batch(items, pre)
    assert res.failed == [] and res.rows == list(range(len(hostile_files)))
    assert res.pixels.shape == (len(hostile_files), 3, 224, 224)
    for blob in res.thumbs:
        assert max(Image.open(io.BytesIO(blob)).size) == 128
    assert _largest(resize_sizes) <= MAX_RESIZED_CROPS * 224 ** 2


_PEAK_SCRIPT = r"""
import json, resource, sys
from asap_core.inputs.imageio import file_sha1
from asap_core.model.embedding import decode_batch
from asap_core.model.preprocess import ClipPreprocessor

paths = sys.argv[1:]
items = [(i, p, file_sha1(p)) for i, p in enumerate(paths)]
pre = ClipPreprocessor(224, 224)
decode_batch(items[:1], pre)  # imports and first-use allocations before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open("/proc/self/status") as fh:  # a regression fails fast here instead of taking the machine's memory
    vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))
res = decode_batch(items, pre)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"failed": res.failed, "delta_mb": (peak - before) / 1024}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units and /proc are Linux's")
def test_decode_path_peak_memory_in_a_subprocess(hostile_files):
    """Decoding all hostile files at 224 px raises the peak resident memory of a fresh process by a few MB
    (the full resizes would take 1-13 GB each)."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *hostile_files], capture_output=True, text=True,
                         cwd=root, timeout=120, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    assert r["failed"] == [] and r["delta_mb"] < 100, r


def test_embed_files_on_strips(tiny_encoder, hostile_files, tmp_path, resize_sizes):
    """The embedding pass (decode threads) stores a row and a thumbnail for every hostile file."""
    ids = [file_sha1(p) for p in hostile_files]
    emb, thumbs = RowStore(tmp_path, "emb", (64,)), RowStore(tmp_path, "thumbs")
    failures = embed_files(lambda: tiny_encoder, tiny_encoder.preprocessor, hostile_files, ids, emb, thumbs,
                           batch_size=4, num_workers=2, decoder="thread")
    assert failures == [] and emb.missing(ids) == [] and thumbs.missing(ids) == []
    assert np.isfinite(emb.get(ids)).all()
    assert _largest(resize_sizes) <= MAX_RESIZED_CROPS * tiny_encoder.preprocessor.crop_size ** 2


def test_gpu_tensor_path_hands_strips_to_pillow(monkeypatch):
    """``resize_crop_tensors`` (nvJPEG's resize) never interpolates a strip to its full resize: it cuts
    it in Pillow, bit-equal to ``crop_uint8``; ordinary images still go through ``interpolate``."""
    import torch.nn.functional as F

    seen: list[tuple] = []
    real = F.interpolate

    def recording(x, *args, **kw):
        seen.append((tuple(x.shape), kw.get("size")))
        return real(x, *args, **kw)

    monkeypatch.setattr(F, "interpolate", recording)
    pre = ClipPreprocessor(224, 224)
    strip, photo = _gradient(65500, 1), _gradient(300, 200)
    tensors = [torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in (strip, photo)]
    crops, thumbs = resize_crop_tensors(tensors, pre, thumb_side=128)
    assert crops.shape == (2, 3, 224, 224) and len(thumbs) == 2
    assert torch.equal(crops[0], torch.from_numpy(crop_uint8(Image.fromarray(strip), pre)))
    resized = [size for shape, size in seen if size is not None]
    assert max(h * w for h, w in resized) <= MAX_RESIZED_CROPS * 224 ** 2, seen


def test_nvjpeg_reader_sends_strips_and_changed_files_to_pillow(hostile_files, tmp_path):
    """nvJPEG's reader keeps plain JPEGs for the GPU; a JPEG strip goes to Pillow (decoded there, crop-first),
    and a JPEG rewritten since it was hashed fails with the changed-file reason."""
    from concurrent.futures import ThreadPoolExecutor

    photo = tmp_path / "photo.jpg"
    Image.fromarray(_gradient(300, 200)).save(photo)
    changed = tmp_path / "changed.jpg"
    Image.fromarray(_gradient(300, 200)).save(changed)
    stale = file_sha1(changed)
    Image.fromarray(_gradient(200, 300)).save(changed)
    strip = next(p for p in hostile_files if p.endswith("jpeg_65500x1.jpg"))
    items = [(0, str(photo), file_sha1(photo)), (1, strip, file_sha1(strip)), (2, str(changed), stale)]
    with ThreadPoolExecutor(1) as pool:
        nv = embedding._NvjpegDecoder(ClipPreprocessor(224, 224), torch.device("cpu"), pool, thumb_side=16,
                                      draft_size=None)
        jpegs, cpu = nv.read(items)
        nv.thumb_pool.shutdown()
    assert [j[0] for j in jpegs] == [0]
    assert cpu.rows == [1] and cpu.failed == [(2, str(changed), CHANGED_REASON)]


# ----------------------------------------------------------------------------- files rewritten mid-run


@pytest.fixture
def photos(tmp_path) -> list[str]:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("decoder,workers", [("inline", 0), ("thread", 2)])
def test_file_rewritten_after_hashing_is_skipped_and_not_stored(tiny_encoder, photos, tmp_path, decoder, workers):
    """Ids taken, then one file rewritten (new pixels): that file fails with the changed-file reason, no
    embedding or thumbnail is stored under its stale id, the others embed as usual."""
    ids = [file_sha1(p) for p in photos]
    Image.new("RGB", (40, 50), (255, 0, 0)).save(photos[2])
    emb, thumbs = RowStore(tmp_path, "emb", (64,)), RowStore(tmp_path, "thumbs")
    failures = embed_files(lambda: tiny_encoder, tiny_encoder.preprocessor, photos, ids, emb, thumbs,
                           batch_size=4, num_workers=workers, decoder=decoder)
    assert failures == [(photos[2], CHANGED_REASON)]
    assert emb.missing(ids) == [ids[2]] and thumbs.missing(ids) == [ids[2]]
    expected = tiny_encoder.encode_images([decode_image(read_bytes(p), p) for p in photos]).numpy()
    kept = [i for i in range(len(photos)) if i != 2]
    np.testing.assert_allclose(emb.get([ids[i] for i in kept]), expected[kept], atol=1e-5)


def test_relevance_pass_skips_a_rewritten_file(tiny_encoder, photos, tmp_path):
    """The relevance pass decodes through the same checked reader: no map under the stale id."""
    import pandas as pd

    from asap_core.method.distiller import Distiller, DistillerConfig
    from asap_core.method.relevance_store import compute_missing_maps, map_store

    ids = [file_sha1(p) for p in photos]
    Image.new("RGB", (40, 50), (0, 0, 255)).save(photos[4])
    torch.manual_seed(0)
    dist = Distiller(DistillerConfig(embed_dim=64, proj_dim=64)).eval()
    store = map_store(tmp_path, "enc", dist.fingerprint, "last-block", tiny_encoder.patch_side)
    failures = compute_missing_maps(store, tiny_encoder, dist, pd.DataFrame({"image_id": ids, "path": photos}),
                                    "last-block", batch_size=4, decoder="inline")
    assert failures == [(photos[4], CHANGED_REASON)] and store.missing(ids) == [ids[4]]


def test_projection_sample_is_cut_to_the_model_input_and_checked(tiny_encoder, photos):
    """The projection stage keeps crops (not full-size decodes) and passes over a rewritten file."""
    from asap_core.pipeline.stages import _sample_images

    ids = [file_sha1(p) for p in photos]
    Image.new("RGB", (40, 50), (0, 255, 0)).save(photos[0])
    pre = tiny_encoder.preprocessor
    idx, sample = _sample_images(photos, ids, 10, 0, pre)
    assert sorted(idx) == [1, 2, 3, 4, 5]
    assert all(im.size == (pre.crop_size, pre.crop_size) for im in sample)


@pytest.mark.slow
def test_analyze_skips_a_file_rewritten_between_hash_and_embed(tiny_clip_dir, small_folder, tmp_path, monkeypatch):
    """End to end: a file rewritten after the hash stage is listed as skipped with the reason, left out of
    the bundle, and the shared cache holds no embedding under its stale id (a later run is not poisoned)."""
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.pipeline.stages import embedding_store_name
    from asap_core.storage.bundle import Bundle

    data = tmp_path / "data"
    shutil.copytree(small_folder, data)
    victim = sorted((data / "real").glob("*.jpg"))[3]
    from asap_core.pipeline import stages as stages_module

    real_hash_stage = stages_module.hash_stage
    stale: dict[str, str] = {}

    def hash_then_rewrite(ctx, scan):
        images = real_hash_stage(ctx, scan)
        stale["id"] = images.loc[images["path"] == str(victim), "image_id"].item()
        Image.new("RGB", (48, 48), (255, 255, 0)).save(victim, quality=95)
        return images

    monkeypatch.setattr(stages_module, "hash_stage", hash_then_rewrite)  # the local engine's stage
    opts = AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(tmp_path / "cache"), num_workers=0,
                          batch_size=16, projection_samples=16)
    report = analyze(data, tmp_path / "bundle", opts)
    assert (str(victim), CHANGED_REASON) in report.skipped
    bundle = Bundle.open(report.bundle)
    assert str(victim) not in set(bundle.images["path"]) and stale["id"] not in set(bundle.images["image_id"])
    store = RowStore(tmp_path / "cache", embedding_store_name(bundle.encoder_info.cache_key, torch.float32), (64,))
    assert store.missing([stale["id"]]) == [stale["id"]]


@pytest.mark.parametrize("size", [(65500, 1), (1, 20000), (9000, 3)])
def test_laundering_a_strip_is_bounded(size, resize_sizes):
    """Laundering cuts a strip to its centre (long side <= 4 x short) before resizing and re-encoding."""
    from asap_core.analyses.laundering import MAX_ASPECT, launder

    image = Image.fromarray(_gradient(*size))
    out = launder(image, 75, 2.0)
    short = min(size)
    assert max(out.size) <= 2 * MAX_ASPECT * short + 2 and min(out.size) == 2 * short
    assert _largest(resize_sizes) <= (2 * MAX_ASPECT * short + 2) * 2 * short


def test_bundle_never_decodes_new_pixels_under_an_old_id(tiny_bundle, tmp_path):  # noqa: F811
    """``Bundle.decode`` of a file rewritten since the analysis: the thumbnail (asked for) or a worded error."""
    from asap_core.errors import BundleError
    from asap_core.storage.bundle import Bundle

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    b = Bundle.open(copy)
    image_id, path = b.images[["image_id", "path"]].iloc[0]
    original = Path(path).read_bytes()
    try:
        Image.new("RGB", (40, 40), (255, 0, 0)).save(path)                 # same path, other pixels
        with pytest.raises(BundleError, match="changed while it was being analysed"):
            b.decode(image_id, "its laundering")
        thumb = b.decode(image_id, "its concept crop", thumbnail_fallback=True)
        assert np.asarray(thumb)[..., 0].mean() < 250 or np.asarray(thumb)[..., 1].mean() > 5  # not the red square
    finally:
        Path(path).write_bytes(original)
