"""Embedding stage: decode image files while the model encodes, store every finished batch.

Pipeline (one run of :func:`embed_files`)::

    files --[decoder: threads | processes | nvJPEG]--> uint8 crops [n, 3, S, S] + thumbnails
          --[normalise on the model's device]--> model (fp32 CPU / bf16 GPU) --> embeddings [n, D]
          --> embed_store / thumb_store (one Parquet shard per batch)

- On a GPU, decoders run ahead of the model by at most ``prefetch`` batches, so memory stays flat however
  many files there are (benchmarks/memory_flat.py).
- On CPU the model's matrix products already fill every core, split statically over torch's threads: a
  decode thread running beside them preempts one of them and the other waits for it, so every
  millisecond of decoding costs the model more than a millisecond. There each batch is decoded when the
  model asks for it, by one thread per core, while the model waits (``thread`` decoder on a CPU device):
  wall time = model time + decode time / cores (measured against a decoder running ahead:
  benchmarks/RESULTS.md).
- Workers hand back **uint8** crops (4x less to move than float32); normalisation happens on the model's
  device with the same float32 arithmetic as ``ClipPreprocessor.to_array`` (bit-identical on CPU).
- ``decoder="auto"``: on CPU decode *threads*, one per core, on demand (Pillow releases the GIL while
  decoding and resizing); on a GPU ``nvjpeg`` when torchvision is installed, else one decode *process*
  per core but one.
- Exact for an fp32 model (the CPU default): full JPEG decode and Pillow's bicubic resize, the pixels
  equal ``encoder.preprocess``. Approximations only where the model is approximate anyway (bf16: GPU
  default, CPU opt-in): JPEG ``draft`` (DCT-domain downscale) in Pillow workers, and nvJPEG + a torch
  antialiased bicubic resize (``fast_decode=None`` means: on for bf16, off for fp32).
- On a GPU, host -> device copies go through pinned memory without blocking, and the embeddings of
  batch k are copied back while batch k+1 runs.
- Each file is read once and its bytes are checked against its image id before they are decoded
  (``imageio.read_checked``): a file rewritten since the run hashed it fails with
  ``imageio.CHANGED_REASON`` and nothing is stored under the stale id.
- Memory per decode worker: one full-size decode at a time, then the crop and the thumbnail. Strips and
  panoramas resize only their centre crop (``ClipPreprocessor.crops_before_resizing``), in Pillow on
  every path (nvJPEG hands them to Pillow).
"""
from __future__ import annotations

import io
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImageLoadError
from ..inputs.imageio import decode_image, make_thumbnail, pixel_limit, read_checked
from ..storage.cache import RowSink, RowStore
from ..storage.schema import THUMB_SIDE
from .device import (
    choose_batch_size,
    compile_enabled,
    compiled_forward,
    configure_threads,
    cpu_cores,
    keep_freed_memory,
    to_device,
    to_pinned_host,
)
from .preprocess import ClipPreprocessor, resize_output_size

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from .encoder import ClipEncoder

Progress = Callable[[int, int], None]
Item = tuple[int, str, str | None]  # (index into the caller's paths, path, expected image id or None)
DECODERS = ("auto", "inline", "thread", "process", "nvjpeg")
_JPEG_MAGIC = b"\xff\xd8\xff"


# ----------------------------------------------------------------------------- CPU decoding (Pillow)


@dataclass
class DecodedBatch:
    """Decoded items of one batch.

    ``rows``: indices (into the caller's ``paths``) of the decoded items; ``pixels``: their centre crops
    ``[n, 3, S, S]`` uint8 (numpy, or a torch tensor already on the model's device); ``thumbs``: JPEG
    bytes (nvJPEG path: futures of them); ``failed``: ``(index, path, reason)``.
    """

    rows: list[int] = field(default_factory=list)
    pixels: Any = None
    thumbs: list[bytes | Future[bytes]] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.failed)


def crop_uint8(image, preprocessor: ClipPreprocessor, out: np.ndarray | None = None) -> np.ndarray:
    """CLIP resize + centre crop of a PIL image as uint8 ``[3, S, S]`` (grey broadcast to 3 channels).

    ``normalize(crop) == preprocessor.to_array(image)`` bit for bit (same resize, same float32 ops).
    """
    pix = np.asarray(preprocessor.resize_and_crop(image))  # [S, S] or [S, S, 3]
    c = preprocessor.crop_size
    if out is None:
        out = np.empty((3, c, c), dtype=np.uint8)
    out[:] = pix[None] if pix.ndim == 2 else pix.transpose(2, 0, 1)
    return out


def thumbnail_bytes(image, side: int = THUMB_SIDE) -> bytes:
    """JPEG thumbnail (longest side ``side``) via ``make_thumbnail``, box-reduced first by the integer
    factor that keeps the longest side >= ``side`` (Lanczos over the full image would cost as much as the
    CLIP resize itself)."""
    k = max(image.size) // side
    if k >= 2:
        image = image.reduce(k)
    return make_thumbnail(image, side)


def decode_batch(items: Sequence[Item], preprocessor: ClipPreprocessor, thumb_side: int = THUMB_SIDE,
                 draft_size: int | None = None) -> DecodedBatch:
    """Decode ``(index, path, image_id)`` items into uint8 crops and thumbnails; failures are collected, not
    raised. Each file is read once and its bytes checked against ``image_id`` (``imageio.read_checked``; a
    ``None`` id is not checked).

    ``draft_size``: JPEG DCT-domain downscale (see ``imageio.decode_image``); ``None`` decodes exactly.
    """
    c = preprocessor.crop_size
    pixels = np.empty((len(items), 3, c, c), dtype=np.uint8)
    res = DecodedBatch()
    for idx, path, image_id in items:
        try:
            image = decode_image(read_checked(path, image_id), path, draft_size=draft_size)
            crop_uint8(image, preprocessor, out=pixels[len(res.rows)])
            if thumb_side:
                res.thumbs.append(thumbnail_bytes(image, thumb_side))
            res.rows.append(idx)
        except ImageLoadError as exc:
            res.failed.append((idx, path, exc.reason))
        except Exception as exc:
            res.failed.append((idx, path, f"could not be decoded ({type(exc).__name__}: {exc})"))
    res.pixels = pixels[:len(res.rows)]
    return res


def merge(parts: Sequence[DecodedBatch]) -> DecodedBatch:
    """Concatenate the chunks of one batch (numpy pixels)."""
    if len(parts) == 1:
        return parts[0]
    out = DecodedBatch()
    for p in parts:
        out.rows += p.rows
        out.thumbs += p.thumbs
        out.failed += p.failed
    out.pixels = np.concatenate([p.pixels for p in parts])
    return out


# ----------------------------------------------------------------------------- normalisation


@lru_cache(maxsize=16)
def _norm_constants(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` ``[3, 1, 1]`` float32 on ``device``, made once (a per-batch copy to a GPU would
    wait for the device)."""
    import torch

    std_, mean_ = np.asarray(std, dtype=np.float64), np.asarray(mean, dtype=np.float64)
    scale = torch.from_numpy((1.0 / (255.0 * std_)).astype(np.float32).reshape(3, 1, 1)).to(device)
    shift = torch.from_numpy((mean_ / std_).astype(np.float32).reshape(3, 1, 1)).to(device)
    return scale, shift


def normalize(pixels: torch.Tensor, preprocessor: ClipPreprocessor) -> torch.Tensor:
    """uint8 crops ``[n, 3, S, S]`` -> float32 CLIP pixel values on the same device.

    ``x * (1 / (255 std)) - mean / std`` in float32, exactly as ``ClipPreprocessor.to_array``.
    """
    import torch

    scale, shift = _norm_constants(tuple(preprocessor.mean), tuple(preprocessor.std), str(pixels.device))
    x = pixels.to(torch.float32)
    x.mul_(scale)
    x.sub_(shift)
    return x


# ----------------------------------------------------------------------------- GPU decoding (nvJPEG)


@dataclass
class HostThumb:
    """A thumbnail ``[3, h, w]`` uint8 on the host; when it comes from a GPU, ``ready`` is the CUDA event
    after which its (non-blocking) copy is complete. ``encode()`` waits for it, then makes the JPEG."""

    pixels: Any
    ready: Any = None

    def encode(self) -> bytes:
        from PIL import Image

        if self.ready is not None:
            self.ready.synchronize()
        chw = np.asarray(self.pixels)
        return make_thumbnail(Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))), max(chw.shape[1:]))


def resize_crop_tensors(images: Sequence[torch.Tensor], preprocessor: ClipPreprocessor,
                        thumb_side: int | None = THUMB_SIDE) -> tuple[torch.Tensor, list[HostThumb]]:
    """uint8 images ``[3, H_i, W_i]`` (any device) -> CLIP crops ``[n, 3, S, S]`` uint8 (input order) and
    thumbnails (``HostThumb``, longest side ``thumb_side``, antialiased bilinear; none if ``thumb_side``
    is None).

    Images of equal size are resized together (one antialiased bicubic ``interpolate`` per size, not one
    per image). Close to Pillow's bicubic (a few uint8 levels), not bit-equal. On a GPU nothing here waits
    for the device: crops are gathered with a device-side index, thumbnails are copied to pinned host
    memory without blocking (``HostThumb.ready``).
    """
    import torch

    n, c = len(images), preprocessor.crop_size
    if n == 0:
        return torch.zeros(0, 3, c, c, dtype=torch.uint8), []
    dev = images[0].device
    thumbs: list = [None] * n
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
    parts, order = [], []
    for idx in groups.values():
        batch = torch.stack([images[i] for i in idx])  # [g, 3, h, w] uint8
        parts.append(_resize_crop_group(batch, preprocessor))
        order += idx
        if thumb_side:
            for i, thumb in zip(idx, _group_thumbnails(batch, thumb_side)):
                thumbs[i] = thumb
    crops = torch.cat(parts) if len(parts) > 1 else parts[0]
    if order != list(range(n)):  # back to input order
        inverse = [0] * n
        for pos, i in enumerate(order):
            inverse[i] = pos
        perm = torch.tensor(inverse)
        crops = crops[perm.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else perm]
    return crops, (thumbs if thumb_side else [])


def _resize_crop_group(batch: torch.Tensor, preprocessor: ClipPreprocessor) -> torch.Tensor:
    """Images of one size ``[g, 3, h, w]`` uint8 -> CLIP crops ``[g, 3, S, S]`` uint8 on the same device
    (antialiased bicubic resize of the shortest side, centre crop, zero padding as the processor does)."""
    import torch
    import torch.nn.functional as F

    h, w, c = int(batch.shape[-2]), int(batch.shape[-1]), preprocessor.crop_size
    if preprocessor.crops_before_resizing(w, h):  # a strip: the full resize would be gigapixels; Pillow crops first
        return _pillow_crops(batch, preprocessor)
    new_w, new_h = resize_output_size(w, h, preprocessor.size)
    resized = batch
    if (new_h, new_w) != (h, w):
        x = F.interpolate(batch.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        resized = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - c) // 2, (new_w - c) // 2
    src_t, src_l = max(top, 0), max(left, 0)
    dst_t, dst_l = max(-top, 0), max(-left, 0)
    hh, ww = min(c, new_h), min(c, new_w)
    crop = torch.zeros(len(batch), 3, c, c, dtype=torch.uint8, device=batch.device)  # zero = the processor's padding
    crop[:, :, dst_t:dst_t + hh, dst_l:dst_l + ww] = resized[:, :, src_t:src_t + hh, src_l:src_l + ww]
    return crop


def _pillow_crops(batch: torch.Tensor, preprocessor: ClipPreprocessor) -> torch.Tensor:
    """``[g, 3, h, w]`` uint8 -> CLIP crops ``[g, 3, S, S]`` uint8 on the same device, through
    ``ClipPreprocessor.resize_and_crop`` on the host (for strips, which it resizes crop-first)."""
    import torch
    from PIL import Image

    host = batch.permute(0, 2, 3, 1).cpu().numpy()
    crops = np.stack([crop_uint8(Image.fromarray(np.ascontiguousarray(im)), preprocessor) for im in host])
    return torch.from_numpy(crops).to(batch.device)


def _group_thumbnails(batch: torch.Tensor, side: int) -> list[HostThumb]:
    """Thumbnails (longest side ``side``, antialiased bilinear) of images of one size ``[g, 3, h, w]`` uint8;
    from a GPU copied to pinned host memory without waiting (``HostThumb.ready``)."""
    import torch
    import torch.nn.functional as F

    h, w = int(batch.shape[-2]), int(batch.shape[-1])
    s = side / max(h, w)
    small = batch
    if s < 1:
        th, tw = max(1, round(h * s)), max(1, round(w * s))
        small = F.interpolate(batch.float(), size=(th, tw), mode="bilinear", antialias=True,
                              align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    ready = None
    if batch.device.type == "cuda":
        small = small.to("cpu", non_blocking=True)  # pinned destination, copied asynchronously
        ready = torch.cuda.Event()
        ready.record()
    return [HostThumb(small[j], ready) for j in range(len(batch))]


def nvjpeg_available() -> bool:
    """True when torchvision's nvJPEG decoder (``decode_jpeg(..., device='cuda')``) can be used."""
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def _probe_jpeg(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` when ``data`` is a plain JPEG that nvJPEG decodes like Pillow (RGB or grey,
    upright, within Pillow's pixel limit), else None (the Pillow path takes it and words any error)."""
    if not data.startswith(_JPEG_MAGIC):
        return None
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))  # header only; raises on bombs and garbage
        if im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):
            return None
        if (limit := pixel_limit()) is not None and im.width * im.height > limit:
            return None  # over the pixel budget: the Pillow path refuses it in words
        if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: nvJPEG ignores it
            return None
        return im.size
    except Exception:
        return None


class _NvjpegDecoder:
    """Files -> uint8 crops on the GPU. Threads read the bytes (and decode non-JPEGs with Pillow);
    nvJPEG decodes the JPEGs of a batch in few calls (at most ``max_pixels`` source pixels per call,
    so 12-megapixel photos in a batch of 1024 do not fill the GPU); resize, crop and thumbnails run
    on the GPU, the thumbnails' JPEG encoding in the reader threads."""

    max_pixels = 1 << 28  # per nvJPEG call: 268 Mpx, 0.8 GB of decoded RGB

    def __init__(self, preprocessor: ClipPreprocessor, device: torch.device, pool: ThreadPoolExecutor,
                 thumb_side: int, draft_size: int | None) -> None:
        self.pre, self.device, self.pool = preprocessor, device, pool
        self.thumb_side, self.draft_size = thumb_side, draft_size
        # thumbnails get their own threads: behind the queued reads they would hold up store()
        self.thumb_pool = ThreadPoolExecutor(max(1, pool._max_workers), thread_name_prefix="asap-thumb")

    def read(self, items: Sequence[Item]) -> tuple[list[tuple[int, str, str | None, bytes, int]], DecodedBatch]:
        """(JPEGs for the GPU as (index, path, image id, bytes, pixels), the rest decoded by Pillow). In a
        worker thread.

        The bytes are checked against the item's image id; strips and panoramas go to Pillow, which
        resizes their crop only (``ClipPreprocessor.crops_before_resizing``)."""
        jpegs, other = [], []
        for idx, path, image_id in items:
            try:
                data = read_checked(path, image_id)
            except ImageLoadError:
                other.append((idx, path, image_id))  # decode_batch words the failure
                continue
            size = _probe_jpeg(data)
            if size is None or self.pre.crops_before_resizing(*size):
                other.append((idx, path, image_id))
            else:
                jpegs.append((idx, path, image_id, data, size[0] * size[1]))
        return jpegs, decode_batch(other, self.pre, self.thumb_side, self.draft_size)

    def _decode(self, group: list[tuple[int, str, str | None, bytes, int]]) -> tuple[list, list[int], list[Item]]:
        """nvJPEG on one group -> (images [3, H, W] on the GPU, their indices, items it refused)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        datas = [torch.from_numpy(np.frombuffer(d, np.uint8).copy()) for _, _, _, d, _ in group]
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)), [g[0] for g in group], []
        except Exception:
            images, rows, refused = [], [], []
            for (i, p, image_id, _, _), t in zip(group, datas):
                try:
                    images.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
                    rows.append(i)
                except Exception:
                    refused.append((i, p, image_id))
            return images, rows, refused

    def finish(self, read_results: Sequence[tuple[list, DecodedBatch]]) -> DecodedBatch:
        """GPU-decode the JPEGs of one batch; merge with the Pillow part (pixels: CUDA uint8 tensor)."""
        import torch

        jpegs = [j for r in read_results for j in r[0]]
        cpu_parts = [r[1] for r in read_results]
        res = DecodedBatch()
        crops, rows, thumbs, refused = [], [], [], []
        start = 0
        while start < len(jpegs):  # groups of at most max_pixels source pixels
            end, px = start, 0
            while end < len(jpegs) and (end == start or px + jpegs[end][4] <= self.max_pixels):
                px += jpegs[end][4]
                end += 1
            images, r, bad = self._decode(jpegs[start:end])
            c, t = resize_crop_tensors(images, self.pre, self.thumb_side)
            del images
            crops.append(c.to(self.device))
            rows += r
            thumbs += t
            refused += bad
            start = end
        if refused:
            cpu_parts.append(decode_batch(refused, self.pre, self.thumb_side, self.draft_size))
        cpu = merge(cpu_parts) if cpu_parts else DecodedBatch(pixels=np.zeros((0, 3, 1, 1), np.uint8))
        if cpu.rows:
            crops.append(to_device(torch.from_numpy(cpu.pixels), self.device))
        side = self.pre.crop_size
        res.rows = rows + cpu.rows
        futures: list[bytes | Future[bytes]] = [self.thumb_pool.submit(t.encode) for t in thumbs]
        res.thumbs = futures + cpu.thumbs  # futures: see store()
        res.failed = cpu.failed
        res.pixels = torch.cat(crops) if crops else torch.zeros(0, 3, side, side, dtype=torch.uint8,
                                                                  device=self.device)
        return res


# ----------------------------------------------------------------------------- orchestration


#: Most decode threads by default: each holds one full decode while it works (about 90 MB for a 12 MP photo,
#: with what malloc keeps), so the decoders' memory stays bounded on many-core machines.
MAX_DECODE_THREADS = 8


def default_workers(decoder: str, cores: int | None = None) -> int:
    """Decode workers for a decoder kind.

    ``thread``: one per core, at most ``MAX_DECODE_THREADS`` (on a CPU device they decode while the model
    waits, see the module docstring; beside a GPU they run ahead). ``process`` (GPU model): one per core
    but one (the main process feeds the GPU). ``nvjpeg``: 2 to 8 threads for reading files.
    """
    n = cores or cpu_cores()
    if decoder == "thread":
        return min(n, MAX_DECODE_THREADS)
    if decoder == "process":
        return max(1, n - 1)
    if decoder == "nvjpeg":
        return min(8, max(2, n // 2))
    return 0


def resolve_decoder(decoder: str, device: torch.device) -> str:
    """``auto`` -> ``nvjpeg`` (CUDA + torchvision), ``process`` (CUDA), ``thread`` (CPU)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "nvjpeg" and (device.type != "cuda" or not nvjpeg_available()):
        decoder = "auto"
    if decoder != "auto":
        return decoder
    if device.type == "cuda":
        return "nvjpeg" if nvjpeg_available() else "process"
    return "thread"


def _jpeg_share(paths: Sequence[str], todo: Sequence[int], sample: int = 256) -> float:
    """Fraction of ``.jpg``/``.jpeg`` names among (a spread sample of) the files to embed."""
    step = max(1, len(todo) // sample)
    names = [str(paths[i]).lower() for i in todo[::step]]
    return sum(n.endswith((".jpg", ".jpeg")) for n in names) / max(1, len(names))


def approximate_decoding(model_dtype: torch.dtype) -> bool:
    """Whether JPEG ``draft`` / nvJPEG shortcuts may be used for a model in ``model_dtype``: only where the
    model is approximate anyway (bf16); an fp32 model gets exact pixels (bit-equal to ``preprocess``)."""
    import torch

    return model_dtype != torch.float32


def decodes_on_demand(kind: str, device: torch.device) -> bool:
    """Whether a batch is decoded only when the model takes it: ``inline``, and ``thread`` beside a CPU
    model (a decoder running ahead there would take cores from the model: see the module docstring)."""
    return kind == "inline" or (kind == "thread" and device.type == "cpu")


class _Prefetcher:
    """Submits decode work for batches in order and hands back ``DecodedBatch``es in the same order.

    At most ``prefetch`` batches are submitted and not yet taken (bounded memory). ``inline``, and
    ``thread`` on a CPU device, decode a batch only when it is taken (``on_demand``): nothing runs
    beside the model.
    """

    def __init__(self, kind: str, workers: int, preprocessor: ClipPreprocessor, device: torch.device,
                 thumb_side: int, draft_size: int | None) -> None:
        self.kind, self.workers, self.pre = kind, max(1, workers), preprocessor
        self.thumb_side, self.draft_size = thumb_side, draft_size
        self.on_demand = decodes_on_demand(kind, device)
        self.pending: deque = deque()
        self.pool: Any = None
        self.nv: _NvjpegDecoder | None = None
        if kind == "thread":
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="asap-decode")
        elif kind == "process":
            self.pool = mp.get_context("spawn").Pool(self.workers)
        elif kind == "nvjpeg":
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="asap-read")
            self.nv = _NvjpegDecoder(preprocessor, device, self.pool, thumb_side, draft_size)

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, items: list[Item]) -> None:
        if self.on_demand:  # decoded in take(): one batch in memory at a time
            self.pending.append((self.kind, items))
        else:
            self.pending.append((self.kind, self._start(items)))

    def _start(self, items: list[Item]) -> list:
        """Hand ``items`` to the workers, one interleaved chunk each; returns their futures."""
        args = (self.pre, self.thumb_side, self.draft_size)
        chunks = [items[k::self.workers] for k in range(self.workers) if items[k::self.workers]]
        if self.nv is not None:  # set exactly when kind is nvjpeg
            return [self.pool.submit(self.nv.read, ch) for ch in chunks]
        if self.kind == "thread":
            return [self.pool.submit(decode_batch, ch, *args) for ch in chunks]
        return [self.pool.apply_async(decode_batch, (ch, *args)) for ch in chunks]

    def take(self) -> DecodedBatch:
        kind, job = self.pending.popleft()
        if kind == "inline":
            return decode_batch(job, self.pre, self.thumb_side, self.draft_size)
        if self.on_demand:  # thread on CPU: all workers on this batch now, the model waits
            job = self._start(job)
        if self.nv is not None:  # set exactly when kind is nvjpeg
            return self.nv.finish([f.result() for f in job])
        if kind == "thread":
            return merge([f.result() for f in job])
        return merge([f.get() for f in job])

    def close(self) -> None:
        if self.kind == "process":
            self.pool.terminate()
        elif self.pool is not None:
            if not self.on_demand:  # on demand, pending batches are still item lists: nothing started
                for _, job in self.pending:
                    for f in job:
                        f.cancel()
            self.pool.shutdown(wait=True)
            if self.nv is not None:
                self.nv.thumb_pool.shutdown(wait=True)


def decoded_batches(paths: Sequence[str], todo: Sequence[int], preprocessor: ClipPreprocessor, device: torch.device,
                    batch_size: int, *, ids: Sequence[str] | None = None, decoder: str = "auto",
                    num_workers: int | None = None, prefetch: int = 3, fast_decode: bool = False,
                    thumb_side: int = THUMB_SIDE) -> Generator[tuple[DecodedBatch, torch.Tensor | None], None, None]:
    """Decode ``paths[i]`` for ``i`` in ``todo``, ``batch_size`` at a time, ahead of the consumer (on a GPU;
    beside a CPU model when the consumer asks, with every core: ``decodes_on_demand``).

    ``ids[i]``: the image id taken when ``paths[i]`` was hashed; the bytes decoded are checked against it
    (``imageio.read_checked``), so a file rewritten since fails with ``imageio.CHANGED_REASON``.

    Yields, in order, each batch's ``DecodedBatch`` (rows, thumbnails if ``thumb_side``, failures) and its
    pixel values ``[n, 3, S, S]`` float32 on ``device``, normalised exactly as ``ClipPreprocessor`` does
    (``None`` when nothing in the batch decoded). At most ``prefetch`` batches wait decoded (bounded memory).
    The one decode path of the embedding and the relevance passes; see ``embed_files`` for the arguments.
    Close it (``contextlib.closing``) to stop the workers early.
    """
    import torch

    fast = bool(fast_decode)
    kind = resolve_decoder(decoder, device)
    if kind == "nvjpeg" and (not fast or (decoder == "auto" and _jpeg_share(paths, todo) < 0.5)):
        kind = "process"  # exact decoding asked for, or mostly PNG/WebP/...: Pillow in processes
    workers = default_workers(kind) if num_workers is None else int(num_workers)
    if workers <= 0:
        kind = "inline"
    draft = preprocessor.size if fast else None
    bs = max(1, int(batch_size))
    it = ([(i, paths[i], None if ids is None else ids[i]) for i in todo[s:s + bs]]
          for s in range(0, len(todo), bs))  # lazily: flat memory
    source = _Prefetcher(kind, workers, preprocessor, device, thumb_side, draft)
    try:
        for b in it:
            source.submit(b)
            if len(source) >= max(1, prefetch):
                break
        while len(source):
            dec = source.take()
            nxt = next(it, None)
            if nxt is not None:
                source.submit(nxt)
            px = None
            if dec.rows:
                px = dec.pixels if isinstance(dec.pixels, torch.Tensor) else torch.from_numpy(dec.pixels)
                if px.device.type != device.type:
                    px = to_device(px, device)
                px = normalize(px, preprocessor)
            yield dec, px
    finally:
        source.close()


def embed_files(load_encoder: Callable[[], ClipEncoder], preprocessor: ClipPreprocessor, paths: Sequence[str],
                ids: Sequence[str], embed_store: RowSink, thumb_store: RowSink,
                batch_size: int | None = 64, num_workers: int | None = None, prefetch: int = 3,
                progress: Progress | None = None, *, decoder: str = "auto", fast_decode: bool | None = None,
                compile: bool | None = None, thumb_side: int = THUMB_SIDE,
                last_input_store: RowStore | None = None) -> list[tuple[str, str]]:
    """Embed the images ``paths`` (ids ``ids``) that ``embed_store`` lacks; store embeddings and thumbnails.

    Each file's bytes are checked against its id before they are decoded: a file rewritten since it was
    hashed is returned as a failure (``imageio.CHANGED_REASON``) and nothing is stored for it.

    ``load_encoder()`` is called only if something is missing (a fully cached run never loads the model).
    Returns the failures as ``(path, reason)``. Each finished batch is stored at once (an interrupted run
    keeps it): thumbnails first, then the embeddings ``[n, D]`` float32, L2-normalised, equal to
    ``encoder.encode(encoder.preprocess(images))`` (bit-equal on CPU with the exact decoder).

    ``batch_size``: images per model call; ``None`` picks it (free GPU memory; 32 on CPU).
    ``num_workers``: decode workers (``None``: ``default_workers``; ``0``: decode in this thread, lazily).
    ``prefetch``: decoded batches allowed to wait for the model (memory bound).
    ``decoder``: one of ``DECODERS`` (see the module docstring). ``fast_decode``: JPEG ``draft`` in Pillow
    workers, nvJPEG on GPU; ``None`` = on where the model is approximate anyway (bf16: GPU, or CPU with
    ``--dtype bfloat16``), off for fp32 (exact, bit-equal embeddings). ``compile``: ``torch.compile`` the
    forward (``None``: ``$ASAP_COMPILE``, default off; a failed compile falls back to eager with a
    warning). On CPU, torch uses one thread per core.
    ``last_input_store``: also keep each embedded image's last-layer input ``[T, d]`` as float16 there
    (``relevance_store.last_input_store``), for the relevance pass that follows (batches whose values
    overflow float16 are left out; that pass recomputes them from the pixels).
    """
    missing = set(embed_store.missing(ids))  # one scan of the store, not one per id
    todo = [i for i, image_id in enumerate(ids) if image_id in missing]
    total = len(todo)
    failures: list[tuple[str, str]] = []
    if progress:
        progress(0, total)
    if not todo:
        return failures

    encoder = load_encoder()
    dev = encoder.device
    configure_threads(dev)
    keep_freed_memory(dev)
    bs = choose_batch_size(encoder, batch_size)
    encode = _batch_encoder(encoder, bs, compile, keep_last=last_input_store is not None)
    writer = _BatchWriter(embed_store, thumb_store, last_input_store, total, progress)
    fast = approximate_decoding(encoder.dtype) if fast_decode is None else bool(fast_decode)
    with closing(decoded_batches(paths, todo, preprocessor, dev, bs, ids=ids, decoder=decoder, num_workers=num_workers,
                                 prefetch=prefetch, fast_decode=fast, thumb_side=thumb_side)) as source:
        for dec, px in source:
            failures.extend((path, reason) for _, path, reason in dec.failed)
            writer.add([ids[i] for i in dec.rows], dec, encode(px) if px is not None else None)
        writer.flush()
    return failures


def _batch_encoder(encoder: ClipEncoder, batch_size: int, compile: bool | None, keep_last: bool) -> Callable:
    """``encode(pixels [n, 3, S, S] float32 on the device) -> (embeddings [n, D] float32 normalised, last
    layer's input [n, T, d] float16 or None, ready)``. On a GPU the outputs are pinned host copies still in
    flight: ``ready`` is the CUDA event after which they can be read (None on CPU)."""
    import torch

    forward = (compiled_forward(encoder.image_forward, batch_size, with_last_input=keep_last)
               if compile_enabled(compile) else partial(encoder.image_forward, with_last_input=keep_last))

    def encode(x: torch.Tensor) -> tuple:
        with torch.inference_mode():
            out = forward(x)
            emb, last = out if isinstance(out, tuple) else (out, None)  # a tuple exactly when keep_last
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
            last = last.to(torch.float16) if last is not None else None
        if encoder.device.type != "cuda":
            return emb, last, None
        emb, last = (to_pinned_host(t) for t in (emb, last))
        ready = torch.cuda.Event()
        ready.record()
        return emb, last, ready

    return encode


class _BatchWriter:
    """Stores each encoded batch (thumbnails, then kept last-layer inputs, then embeddings) and reports
    progress. A GPU batch (one with a ``ready`` event) is stored when the next batch has been queued, so its
    copy back overlaps with the model."""

    def __init__(self, embed_store: RowSink, thumb_store: RowSink, last_store: RowStore | None, total: int,
                 progress: Progress | None) -> None:
        self.embed_store, self.thumb_store, self.last_store = embed_store, thumb_store, last_store
        self.total, self.progress, self.done = total, progress, 0
        self.waiting: tuple | None = None

    def add(self, batch_ids: list[str], dec: DecodedBatch, encoded: tuple | None) -> None:
        """One decoded batch and its ``encode`` output (None when nothing in it decoded)."""
        self.flush()
        if encoded is None:
            self._advance(len(dec))
            return
        job = (batch_ids, dec.thumbs, *encoded, len(dec))
        if encoded[2] is not None:
            self.waiting = job
        else:
            self._store(job)

    def flush(self) -> None:
        """Store the batch still waiting for its copy back, if any."""
        if self.waiting is not None:
            job, self.waiting = self.waiting, None
            self._store(job)

    def _store(self, job: tuple) -> None:
        batch_ids, thumbs, emb, last, ready, n = job
        if ready is not None:
            ready.synchronize()
        self.thumb_store.put(batch_ids, [t.result() if isinstance(t, Future) else t for t in thumbs])
        if last is not None and self.last_store is not None:  # last is kept exactly when there is a store
            last = last.numpy()
            if np.isfinite(last).all():  # a batch that overflowed float16 is recomputed from the pixels later
                self.last_store.put(batch_ids, last)
        self.embed_store.put(batch_ids, emb.numpy().astype(np.float32, copy=False))
        self._advance(n)

    def _advance(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.total)
