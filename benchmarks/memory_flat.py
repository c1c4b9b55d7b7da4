"""Peak memory of the embedding stage for 1k vs 20k images: it streams, so the peak stays flat.

    python benchmarks/memory_flat.py                       # sizes 1000 and 20000
    python benchmarks/memory_flat.py --sizes 1000,5000,20000 --decoder process

Writes small synthetic JPEGs (240x240) into ``SCRATCH/mem_jpgs`` once and a tiny random CLIP with a
224-pixel input (so a decoded image is as big as for ViT-B/32: 3x224x224) into ``SCRATCH/tiny224``.
Each size runs ``embed_files`` in a fresh subprocess with an empty cache and reports the peak resident
set size of that process (``getrusage``), the resident size right before the stage (model loaded), the
peak of the process plus its decode worker processes (sampled from /proc every 50 ms; shared pages
counted once per process), and what holding every decoded image would take.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ensure_images(folder: Path, n: int, side: int = 240) -> list[str]:
    """``n`` random-texture JPEGs (``side`` x ``side``), written only where missing."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        if not p.is_file():
            tile = np.roll(base, i, axis=(0, 1)) ^ np.uint8(i % 251)
            Image.fromarray(tile).resize((side, side), Image.Resampling.BILINEAR).save(p, quality=85)
    return [str(p) for p in paths]


def ensure_tiny_clip(model_dir: Path) -> Path:
    """A 1-layer random CLIP vision tower with a 224 px input (patch 32) and a default image processor."""
    if (model_dir / "config.json").is_file():
        return model_dir
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=224, patch_size=32, projection_dim=32)
    CLIPVisionModelWithProjection(cfg).save_pretrained(model_dir)
    CLIPImageProcessor().save_pretrained(model_dir)
    return model_dir


def _rss_now_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """Resident MB of ``pid`` and all its descendants (``/proc``; shared pages counted in each)."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")), 0) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


class _TreeSampler:
    """Samples ``tree_rss_mb`` of this process every ``interval`` s in a thread; ``peak`` is the max seen."""

    def __init__(self, interval: float = 0.05) -> None:
        import os
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(os.getpid(), interval), daemon=True)
        self._thread.start()

    def _run(self, pid: int, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, tree_rss_mb(pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from asap_core.model.embedding import embed_files
    from asap_core.model.encoder import ClipEncoder
    from asap_core.storage.cache import RowStore

    paths = ensure_images(Path(args.scratch) / "mem_jpgs", args.child)
    encoder = ClipEncoder.from_pretrained(str(Path(args.scratch) / "tiny224"), device="cpu")
    ids = [f"{i:06d}" for i in range(len(paths))]
    cache = Path(tempfile.mkdtemp(prefix="mem-cache-", dir=args.scratch))
    try:
        before = _rss_now_mb()
        sampler = _TreeSampler()
        t0 = time.perf_counter()
        failures = embed_files(lambda: encoder, encoder.preprocessor, paths, ids, RowStore(cache, "emb", (32,)),
                               RowStore(cache, "thumbs"), batch_size=args.batch_size, num_workers=args.workers,
                               decoder=args.decoder)
        seconds = time.perf_counter() - t0
        tree_peak = sampler.stop()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"n": len(paths), "failures": len(failures), "seconds": seconds, "rss_before_mb": before,
                      "peak_mb": peak_self, "tree_peak_mb": tree_peak}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,20000")
    ap.add_argument("--scratch", default="/tmp/perf")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--decoder", default="auto", help="auto | inline | thread | process")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        child(args)
        return
    scratch = Path(args.scratch)
    sizes = [int(s) for s in args.sizes.split(",")]
    ensure_tiny_clip(scratch / "tiny224")
    print(f"writing up to {max(sizes)} JPEGs into {scratch / 'mem_jpgs'} (once) ...", flush=True)
    ensure_images(scratch / "mem_jpgs", max(sizes))
    print(f"embed_files, tiny CLIP with 224 px input, batch {args.batch_size}, decoder {args.decoder}, "
          f"one fresh process per size")
    print(f"{'images':>7s} {'RSS before MB':>14s} {'peak RSS MB':>12s} {'peak - before':>14s} "
          f"{'+ workers MB':>13s} {'img/s':>7s} {'all pixels would be MB':>23s}")
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--scratch", str(scratch), "--batch-size",
               str(args.batch_size), "--decoder", args.decoder]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        all_px = n * 3 * 224 * 224 * 4 / 2**20
        print(f"{n:7d} {r['rss_before_mb']:14.0f} {r['peak_mb']:12.0f} {r['peak_mb'] - r['rss_before_mb']:14.0f} "
              f"{r['tree_peak_mb']:13.0f} {n / r['seconds']:7.0f} {all_px:23.0f}", flush=True)


if __name__ == "__main__":
    main()
