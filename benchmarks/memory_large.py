"""Peak memory of ``analyze`` on camera-size photos and on strips/panoramas: it must stay flat.

    python benchmarks/memory_large.py                              # this checkout
    git worktree add /tmp/old <commit>                             # an older checkout, beside this one
    python benchmarks/memory_large.py --old /tmp/old               # before (old) and after (this checkout)

Writes into ``--scratch`` (default /tmp/perf_large, never the repository), once:

- ``photos/``: ``--photos`` (500) camera-size JPEGs, 4000 x 3000 and 3000 x 4000, smooth random colour
  fields plus Gaussian noise (sigma 6) at quality 85: 1.8 MB each, as a phone's; half in real/, half in fake/.
- ``extreme/``: strips and panoramas in every format (65500 x 1 and 1 x 20000 PNG, GIF, BMP, TIFF, JPEG;
  30000 x 3 and 3 x 30000; 16383 x 1 and 1 x 16383 WebP) beside 16 ordinary 640 x 480 JPEGs (so that a
  run where every strip fails still has images to train on).
- ``idle/``: 12 small JPEGs: the baseline, i.e. the process with its imports, the model and every stage
  but (almost) no data.
- ``tiny224/``: a random CLIP with a 224 px input (``pipeline.demo.write_random_clip``, patch 32), so each
  crop is as large as for ViT-B/32 while the model costs next to nothing.

Each folder is analysed by ``python -m asap_core analyze`` in a fresh subprocess with an empty cache (CPU,
default options: thread decoder, one thread per core). Peak RSS: the maximum of the process's own peak
(``wait4``) and of the resident memory of it plus its children, sampled from /proc every 20 ms. The
delta is the peak minus the idle folder's peak with the same code; "proj. s" is the projection stage's time
as ``analyze`` reports it. ``--old`` checkouts run under an
address-space cap (``--old-cap-gb``), so that a 13 GB resize fails instead of taking the machine's memory;
the table counts the skipped files and says when the run itself failed.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_flat import tree_rss_mb

HERE = Path(__file__).resolve().parents[1]
# (format, suffix, sizes): WebP stores at most 16383 px a side, libjpeg 65500
STRIPS = [("PNG", ".png", [(65500, 1), (1, 20000), (30000, 3), (3, 30000)]),
          ("GIF", ".gif", [(65500, 1), (1, 20000)]),
          ("BMP", ".bmp", [(65500, 1), (1, 20000)]),
          ("TIFF", ".tif", [(65500, 1), (1, 20000)]),
          ("WEBP", ".webp", [(16383, 1), (1, 16383)]),
          ("JPEG", ".jpg", [(65500, 1), (1, 20000), (30000, 3)])]


def _label_dir(root: Path, i: int) -> Path:
    d = root / ("real" if i % 2 == 0 else "fake")
    d.mkdir(parents=True, exist_ok=True)
    return d


def ensure_photos(root: Path, n: int) -> Path:
    """``n`` camera-size JPEGs (written once; ~0.25 s each)."""
    from PIL import Image

    if len(list(root.rglob("*.jpg"))) >= n:
        return root
    rng = np.random.default_rng(0)
    noise = {}
    for i in range(n):
        w, h = (4000, 3000) if i % 2 else (3000, 4000)
        if (w, h) not in noise:
            noise[(w, h)] = rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        field = rng.integers(0, 256, (h // 100 + 1, w // 100 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        pix = np.clip(base + np.roll(noise[(w, h)], int(rng.integers(0, w)), axis=1), 0, 255).astype(np.uint8)
        Image.fromarray(pix).save(_label_dir(root, i) / f"p{i:04d}.jpg", quality=85)
    return root


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.arange(w * h, dtype=np.int64).reshape(h, w)
    return np.stack([x % 251, (x // 7) % 253, (x * 3) % 256], -1).astype(np.uint8)


def ensure_extreme(root: Path) -> Path:
    """Strips in every format beside 16 ordinary images (written once)."""
    from PIL import Image

    if (root / "done").is_file():
        return root
    k = 0
    for fmt, suffix, sizes in STRIPS:
        for w, h in sizes:
            Image.fromarray(_gradient(w, h)).save(_label_dir(root, k) / f"{fmt.lower()}_{w}x{h}{suffix}", fmt)
            k += 1
    rng = np.random.default_rng(1)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(_label_dir(root, i) / f"o{i}.jpg")
    (root / "done").write_text("")
    return root


def ensure_idle(root: Path) -> Path:
    """12 small JPEGs: enough for every stage to run (the distiller's split needs a few per class)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(_label_dir(root, i) / f"i{i}.jpg")
    return root


def ensure_tiny_clip(path: Path) -> Path:
    if not (path / "config.json").is_file():
        from asap_core.pipeline.demo import write_random_clip

        write_random_clip(path, image_size=224, patch_size=32, hidden=32, layers=1, dim=64)
    return path


def _peak_of(proc: subprocess.Popen, interval: float = 0.02) -> tuple[float, int]:
    """(peak MB of ``proc`` and its children, exit status): /proc sampled every ``interval`` s, and the
    process's own peak from ``wait4``."""
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    thread.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return max(peak[0], usage.ru_maxrss / 1024), proc.returncode


def run_analyze(code: Path, data: Path, model: Path, scratch: Path, cap_gb: float | None,
                workers: int | None = None) -> dict:
    """One ``python -m asap_core analyze`` of ``data`` with the checkout ``code``, fresh cache and output
    (``workers``: decode threads, default one per core)."""
    run_dir = scratch / "runs" / f"{code.name}-{data.name}-{time.time_ns()}"
    run_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "asap_core", "analyze", str(data), "--out", str(run_dir / "bundle"),
           "--model", str(model), "--cache-dir", str(run_dir / "cache")]
    if workers:
        cmd += ["--workers", str(workers)]

    def limit() -> None:
        if cap_gb:
            cap = int(cap_gb * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
        peak, rc = _peak_of(proc)
    seconds = time.perf_counter() - t0
    text = (run_dir / "log.txt").read_text(errors="replace")
    skipped_lines = [line.strip() for line in text.splitlines() if line.strip().startswith("skipped ")]
    projection = re.search(r"projection ([0-9.]+)s", text)
    reasons = sorted({line.split(": ", 1)[-1][:60] for line in skipped_lines})
    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    shutil.rmtree(run_dir / "bundle", ignore_errors=True)
    return {"peak": peak, "rc": rc, "seconds": seconds, "skipped": len(skipped_lines), "reasons": reasons,
            "projection": float(projection.group(1)) if projection else float("nan"),
            "tail": text.strip().splitlines()[-3:] if rc else []}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", default="/tmp/perf_large")
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--old", default=None, help="an older checkout (git worktree) to run first, for before/after")
    ap.add_argument("--old-cap-gb", type=float, default=12.0, help="address-space cap of the old runs (GB)")
    ap.add_argument("--folders", default="photos,extreme", help="which folders to analyse")
    ap.add_argument("--workers", type=int, default=None,
                    help="decode threads (default one per core; e.g. 16 to see a 16-core machine's memory)")
    args = ap.parse_args(argv)
    scratch = Path(args.scratch)
    print(f"writing the folders into {scratch} (once) ...", flush=True)
    model = ensure_tiny_clip(scratch / "tiny224")
    folders = {"photos": ensure_photos(scratch / "photos", args.photos), "extreme": ensure_extreme(scratch / "extreme")}
    idle = ensure_idle(scratch / "idle")
    codes = ([(Path(args.old), "before", args.old_cap_gb)] if args.old else []) + [(HERE, "after", None)]
    print(f"python -m asap_core analyze, tiny CLIP (224 px input), CPU, {os.cpu_count()} cores, "
          f"{args.workers or os.cpu_count()} decode threads")
    print(f"{'folder':8s} {'code':6s} {'images':>6s} {'peak RSS MB':>11s} {'idle RSS MB':>11s} {'delta MB':>8s} "
          f"{'seconds':>7s} {'proj. s':>7s} {'skipped':>7s}")
    for code, label, cap in codes:
        base = run_analyze(code, idle, model, scratch, cap, args.workers)
        for name in args.folders.split(","):
            data = folders[name]
            n = sum(1 for p in data.rglob("*") if p.is_file() and p.name != "done")
            r = run_analyze(code, data, model, scratch, cap, args.workers)
            status = "" if r["rc"] == 0 else f"  run failed (exit {r['rc']}): {' | '.join(r['tail'])}"
            print(f"{name:8s} {label:6s} {n:6d} {r['peak']:11.0f} {base['peak']:11.0f} {r['peak'] - base['peak']:8.0f} "
                  f"{r['seconds']:7.1f} {r['projection']:7.1f} {r['skipped']:7d}{status}", flush=True)
            for reason in r["reasons"]:
                print(f"{'':15s} skipped because: {reason}")


if __name__ == "__main__":
    main()
