"""Peak memory of one upload decode per format, just under the hosted pixel budget (one upload must not
take the server's memory).

    python benchmarks/decode_memory.py [--side 8000] [--work /tmp/asap-decode-mem]

Writes one image per format at ``side x (side - 1)`` pixels (63.99 Mpx at the default, just under the
64 Mpx ``ASAP_MAX_UPLOAD_PIXELS``; a WebP row at 32 Mpx too, under ``imageio.WEBP_BUDGET_SHARE``): PNG RGBA,
PNG 16-bit grey, WebP lossless RGBA, TIFF RGBA, GIF (palette), BMP RGB and JPEG RGB, made of colour fields
with noise. Each is then decoded in a fresh subprocess, twice:

- ``before``: ``decode_image`` of the commit before the bounded decode (``git show HEAD~:asap_core/inputs/imageio.py``
  when ``--before-rev`` is given, else skipped): a full-size decode and ``to_rgb`` on full-size copies;
- ``after``: ``analyses.single_image.check_upload`` then ``decode_upload`` with ``ASAP_HOSTED=1``: the header
  check, then the bounded decode reduced to ``imageio.WORKING_SIDE``.

Prints a table: format, file size, decoded size, peak RSS growth (``VmHWM`` after the decode minus the RSS
before it, the peak reset through ``/proc/self/clear_refs``; MB) and seconds, per variant.
The figure to bound is the server's growth per upload (< 1 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

FORMATS = [("PNG RGBA", "png", "RGBA", {}), ("PNG 16-bit grey", "png", "I;16", {}),
           ("WebP RGBA lossless", "webp", "RGBA", {"lossless": True, "quality": 0, "method": 0}),
           ("WebP RGBA lossless, 32 Mpx", "webp", "RGBA", {"lossless": True, "quality": 0, "method": 0}),
           ("TIFF RGBA", "tiff", "RGBA", {"compression": "tiff_deflate"}), ("GIF", "gif", "P", {}),
           ("BMP RGB", "bmp", "RGB", {}), ("JPEG RGB", "jpg", "RGB", {"quality": 90})]

CHILD = r"""
import io, json, resource, sys, time, warnings, importlib.util
sys.path.insert(0, sys.argv[1])
path, variant, old = sys.argv[2], sys.argv[3], sys.argv[4]
data = open(path, "rb").read()
from asap_core.analyses.single_image import check_upload, decode_upload
from asap_core.inputs import imageio
if variant == "before":
    spec = importlib.util.spec_from_file_location("asap_core.inputs._before", old)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    run = lambda: mod.decode_image(data, path)
else:
    name = "upload" + path[path.rindex("."):]
    run = lambda: (check_upload(name, data), decode_upload(name, data))[1]
warnings.simplefilter("ignore")
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from the current RSS
before = hwm()
t = time.perf_counter()
try:
    im = run(); size = list(im.size); err = None
except Exception as exc:
    size, err = None, f"{type(exc).__name__}: {exc}"
secs = time.perf_counter() - t
growth = (hwm() - before) / 1024
print(json.dumps({"size": size, "growth_mb": growth, "s": secs, "error": err}))
"""


def make_image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    """Colour fields (a coarse random grid, upscaled) with a little noise, in ``mode``."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (h // 500 + 1, w // 500 + 1, 4), dtype=np.uint8), "RGBA")
    im = coarse.resize((w, h), Image.Resampling.NEAREST)
    if mode == "RGBA":
        return im
    if mode == "I;16":
        return im.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    if mode == "P":
        return im.convert("RGB").quantize(16)
    return im.convert(mode)


def measure(path: Path, variant: str, old: str) -> dict:
    env = {**os.environ, "ASAP_HOSTED": "1" if variant == "after" else "0", "ASAP_BUNDLE_ROOT": str(path.parent),
           "ASAP_MAX_UPLOAD_MB": "400"}  # the decoder's memory is measured, not the byte limit (a 64 Mpx BMP: 192 MB)
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), variant, old], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"size": None, "growth_mb": float("nan"), "s": float("nan"), "error": out.stderr.strip()[-200:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--work", default=None)
    ap.add_argument("--before-rev", default=None, help="git revision whose imageio.py is the 'before' decoder")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="asap-decode-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    old = ""
    if args.before_rev:
        old = str(work / "imageio_before.py")
        show = ["git", "-C", str(ROOT), "show", f"{args.before_rev}:asap_core/inputs/imageio.py"]
        Path(old).write_text(subprocess.run(show, capture_output=True, text=True, check=True).stdout)
    w, h = args.side, args.side - 1
    print(f"{w} x {h} = {w * h / 1e6:.2f} Mpx per image; peak RSS growth of one decode in a fresh process\n")
    print("| format | file | decoded (after) | before: MB | before: s | after: MB | after: s |")
    print("|---|---|---|---|---|---|---|")
    for k, (label, ext, mode, kw) in enumerate(FORMATS):
        path = work / f"img{k}.{ext}"
        iw, ih = (int(w / 2 ** 0.5), int(w / 2 ** 0.5) - 1) if "32 Mpx" in label else (w, h)  # WEBP_BUDGET_SHARE
        if not path.exists():
            make_image(mode, iw, ih, k).save(path, **kw)
        rows = {v: measure(path, v, old) for v in (["before"] if old else []) + ["after"]}
        b, a = rows.get("before"), rows["after"]
        bcols = (f"{b['growth_mb']:.0f} | {b['s']:.1f}" if b and not b["error"]
                 else (b["error"][:40] if b else "- | -"))
        acols = f"{a['growth_mb']:.0f} | {a['s']:.1f}" if not a["error"] else a["error"][:60] + " | -"
        print(f"| {label} | {path.stat().st_size / 1e6:.1f} MB | {a['size']} | {bcols} | {acols} |", flush=True)


if __name__ == "__main__":
    main()
