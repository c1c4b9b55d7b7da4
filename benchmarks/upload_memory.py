"""Memory of the hosted explorer's server while visitors upload camera-size photos and strips (a few
visitors must not exhaust it).

    python benchmarks/upload_memory.py [--photos 6] [--work /tmp/asap-upload-mem]

Serves the demo bundle (built once in ``--work``, random CLIP with a 64 px input) in hosted mode with
``ASAP_MAX_UPLOAD_MB=20`` and drives one headless Chromium through the Single image page: each upload is
analysed (embedding, 17 relevance maps, neighbours) and the page waits for its p_fake. Uploads, in order:
``--photos`` JPEGs of 4000 x 3000 (noise over colour fields, ~2 MB, as a phone's), then strips (65500 x 1 PNG,
1 x 20000 PNG, 30000 x 3 PNG, 65500 x 1 JPEG, 16383 x 1 WebP) that once took gigabytes to resize.

Prints the server's resident memory (VmRSS) when idle after the first page, after each upload, and its peak
(VmHWM), with the peak above idle: the figure to keep under 1.5 GB.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402
from load_test import build_demo_bundle  # noqa: E402

# done: no script run in progress and either a result (the p_fake metric) or an error box on the page
DONE_JS = """name => !document.querySelector("[data-testid='stStatusWidget'] button")
  && (document.querySelector("[data-testid='stMetric']")
      || document.querySelector("[data-testid='stAlertContentError']"))
  && document.body.innerText.includes(name)"""
OUTCOME_JS = """() => { const m = document.querySelector("[data-testid='stMetric']");
  const e = document.querySelector("[data-testid='stAlertContentError']");
  return e ? 'error: ' + e.innerText.slice(0, 80) : (m ? m.innerText.replace(/\\s+/g, ' ') : '?'); }"""


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_uploads(folder: Path, n_photos: int) -> list[Path]:
    """Camera-size JPEGs and strips in ``folder`` (written once)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_photos):
        p = folder / f"photo{i}.jpg"
        if not p.exists():
            base = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((100, 100, 1)))
            px = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(p, quality=85)
        out.append(p)
    strips = [("strip_65500x1.png", (65500, 1), "PNG"), ("strip_1x20000.png", (1, 20000), "PNG"),
              ("strip_30000x3.png", (30000, 3), "PNG"), ("strip_65500x1.jpg", (65500, 1), "JPEG"),
              ("strip_16383x1.webp", (16383, 1), "WEBP")]
    for name, (w, h), fmt in strips:
        p = folder / name
        if not p.exists():
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
            p.write_bytes(buf.getvalue())
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--work", type=Path, default=Path("/tmp/asap-upload-mem"))
    args = ap.parse_args(argv)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = build_demo_bundle(args.work)
    files = make_uploads(args.work / "uploads", args.photos)
    env = {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(bundle.parent), "ASAP_BUNDLE": bundle.name,
           "ASAP_CACHE_DIR": str(args.work / "cache"), "ASAP_MAX_UPLOAD_MB": "20",
           "ASAP_RELEVANCE_BUDGET": "100000"}
    procs: list = []
    rows = []
    with streamlit_server(env, args.work / "server.log", procs=procs) as url, sync_playwright() as p:
        pid = procs[0].pid
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(180000)
        page.goto(f"{url}/single")
        page.get_by_text("No image uploaded yet").wait_for()
        time.sleep(2)
        idle = _status_mb(pid, "VmRSS")
        rows.append(("idle (page open)", 0.0, idle, _status_mb(pid, "VmHWM"), ""))
        for f in files:
            t0 = time.perf_counter()
            page.locator("[data-testid='stMain'] input[type=file]").set_input_files(str(f))
            try:
                page.wait_for_timeout(1500)                             # the rerun has started by then
                page.wait_for_function(DONE_JS, arg=f.name, timeout=120000)
                outcome = page.evaluate(OUTCOME_JS)
            except PlaywrightTimeout:
                page.screenshot(path=str(args.work / f"timeout_{f.stem}.png"), full_page=True)
                outcome = "timeout (screenshot in --work)"
            rows.append((f.name, time.perf_counter() - t0, _status_mb(pid, "VmRSS"), _status_mb(pid, "VmHWM"),
                         outcome))
        browser.close()
    print(f"server pid {pid}; {len(files)} uploads; sizes in MB")
    print("| upload | file MB | s | server RSS MB | server peak (VmHWM) MB | page shows |")
    print("|---|---|---|---|---|---|")
    sizes = {f.name: f.stat().st_size / 2**20 for f in files}
    for name, secs, rss, hwm, outcome in rows:
        print(f"| {name} | {sizes.get(name, 0):.2f} | {secs:.1f} | {rss:.0f} | {hwm:.0f} | {outcome} |")
    peak = max(r[3] for r in rows)
    print(f"peak above idle: {peak - idle:.0f} MB (idle {idle:.0f} MB, peak {peak:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
