"""Server-side timings of the explorer's interactive steps on synthetic bundles, and the server's memory with
several sessions open.

    python benchmarks/app_bench.py [--n 1000000] [--baseline 100000] [--sessions 4] [--repeat 3]
                                   [--work /tmp/app-bench] [--rebuild] [--thumb-px 128]

Writes a synthetic bundle of ``--n`` images (and one of ``--baseline`` images, 0 for none) through the real
``write_bundle``: random z with a planted real/fake direction, a random distiller, map positions from a
mixture of blobs binned by ``method.layout`` (``assign_cells``, ``default_grid``, ``cell_table``: the grid the
layout stage would choose), JPEG thumbnails (``--thumb-px`` px, about 4.5 kB at 128; a pool of 32, cycled,
each image storing its own copy) fed to ``write_bundle`` by a function, a row group at a time, as the write
stage feeds them from its store; random relevance maps for a few images in the bundle's map store.

Then, in this process, times what the pages compute through the app's own cached functions
(``app_pages.glue.data``, Streamlit's caches without a server) before Streamlit ships the result. "first" is
the first request (nothing cached for that bundle, cell or filter); "next" is the median of ``--repeat``
further requests of the same kind, each for another cell (a click on another cell; for the grid, another
cell's first request):

- open: ``Bundle.open``, the tables and the thumbnail index (once per server process and bundle)
- overview: cell table (after filters) -> pie slices -> Vega-Lite spec          target 2.0 s
- cell -> grid: members -> IsoMatch grid -> thumbnails -> data URIs -> spec     target 1.0 s
- grid -> maps: cached maps of the picked images -> 18 overlays each           target 1.0 s

Last (``--sessions``, 0 for none), ``streamlit run`` on the ``--n`` bundle and one headless Chromium
(``/usr/bin/chromium``) with one context per session, opened one after the other and kept open: the
overview (then a click on its largest cell), a cell's image grid from a link, the attention maps of three
images from a link, the overview regridded from a link. Prints each page's time until drawn in the browser
and the server's resident memory (``VmRSS``, ``VmHWM``) idle, after the first session and with all open.
Target: under 3 GB with 4 sessions.

Not a test; prints tables.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from asap_core.method.layout import assign_cells, cell_table, default_grid  # noqa: E402
from asap_core.storage.bundle import Bundle, write_bundle  # noqa: E402
from asap_core.storage.schema import IMAGE_COLUMNS, Z_COLUMNS, Counts, EncoderInfo  # noqa: E402
from asap_core.views import attention as va  # noqa: E402
from asap_core.views import overview as ov  # noqa: E402

PATCH_SIDE = 7
N_THUMBS = 32  # distinct thumbnails, cycled over the images
TARGETS = {"overview": 2.0, "grid": 1.0, "maps": 1.0}


def tiny_jpegs(k: int, side: int, seed: int = 0) -> list[bytes]:
    """``k`` distinct JPEGs of ``side`` x ``3 side / 4`` px (blurred noise, quality 75: about 4.5 kB at 128 px,
    the size of the analysis's photo thumbnails)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        px = rng.integers(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).filter(ImageFilter.GaussianBlur(0.8)).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def synthetic_images(n: int, w2: np.ndarray, b2: float, seed: int = 0) -> pd.DataFrame:
    """The image table of ``n`` synthetic images (``schema.IMAGE_COLUMNS``), binned on the default grid."""
    rng = np.random.default_rng(seed)
    fake = rng.random(n) < 0.5
    label = np.where(fake, "fake", "real").astype(object)
    shift = np.outer(np.where(fake, 0.6, -0.6), np.sign(w2)).astype(np.float32)
    z = rng.normal(size=(n, 16)).astype(np.float32) + shift
    p_fake = (1 / (1 + np.exp(-(z @ w2 + b2)))).astype(np.float32)
    pred = np.where(p_fake >= 0.5, "fake", "real").astype(object)
    centres = rng.random((40, 2)) * 0.8 + 0.1
    xy = np.clip(centres[rng.integers(0, 40, n)] + rng.normal(scale=0.06, size=(n, 2))
                 + np.where(fake, 0.05, -0.05)[:, None], 0, 1)
    grid = default_grid(n, xy)
    cell, col, row = assign_cells(xy, grid)
    gens = np.where(fake, np.where(rng.random(n) < 0.5, "gan_a", "diff_b"), None).astype(object)
    images = pd.DataFrame({
        "image_id": [hashlib.sha1(f"img{i}".encode()).hexdigest() for i in range(n)],
        "path": [f"/nonexistent/{i}.jpg" for i in range(n)],
        "relpath": [f"{lab}/{i}.jpg" for i, lab in enumerate(label)], "label": label, "generator": gens,
        "source": gens, "split": None, "p_fake": p_fake, "pred": pred,
        "correct": pd.array(pred == label, dtype="boolean"), "confidence": np.abs(2 * p_fake - 1).astype(np.float32),
        **{c: z[:, i] for i, c in enumerate(Z_COLUMNS)}, "map_x": xy[:, 0], "map_y": xy[:, 1],
        "cell": cell, "col": col, "row": row,
    })[list(IMAGE_COLUMNS)]
    images.attrs["grid"] = grid
    return images


def synthetic_bundle(out: Path, n: int, thumb_px: int = 64, seed: int = 0) -> Path:
    """Write a bundle of ``n`` synthetic images to ``out`` (random distiller, blob map, tiny thumbnails)."""
    import torch

    from asap_core.method.distiller import Distiller, DistillerConfig

    torch.manual_seed(seed)
    distiller = Distiller(DistillerConfig(embed_dim=64, proj_dim=32)).eval()
    w2 = distiller.head.weight.detach().numpy().reshape(-1)
    images = synthetic_images(n, w2, float(distiller.head.bias.detach().numpy()[0]), seed)
    grid = images.attrs.pop("grid")
    cells = cell_table(images, grid)
    pool = tiny_jpegs(N_THUMBS, thumb_px, seed)
    fake = int((images["label"] == "fake").sum())
    counts = Counts(found=n, used=n, real=n - fake, fake=fake, unlabelled=0, cells=len(cells))
    meta = {"encoder": EncoderInfo("synthetic-clip", "bench", 64, PATCH_SIDE, 224).to_dict(), "layout": "synthetic",
            "options": {"grid": grid}, "counts": counts.to_dict(), "metrics": {}, "skipped": []}
    fetch = lambda ids: [pool[int(i[:8], 16) % N_THUMBS] for i in ids]
    return write_bundle(out, meta, images, cells, fetch, distiller.save_pretrained)


def seed_maps(bundle: Bundle, ids: list[str], method: str = "last-block") -> None:
    """Random ``[17, 7, 7]`` maps for ``ids`` in the bundle's map store (so the maps step reads a cache)."""
    from asap_core.method.relevance_store import bundle_map_store

    store = bundle_map_store(bundle, method)
    todo = store.missing(ids)
    if todo:
        rng = np.random.default_rng(1)
        store.put(todo, rng.random((len(todo), 17, PATCH_SIDE, PATCH_SIDE)).astype(np.float16))


def ensure_bundle(out: Path, n: int, thumb_px: int, rebuild: bool) -> tuple[Bundle, float | None]:
    """The synthetic bundle of ``n`` images at ``out`` and the seconds it took to write (None: already there)."""
    t0 = time.perf_counter()
    if not rebuild and (out / "bundle.json").is_file() and Bundle.open(out).counts.used == n:
        return Bundle.open(out), None
    synthetic_bundle(out, n, thumb_px)
    return Bundle.open(out), time.perf_counter() - t0


def timed(fn, calls: list) -> tuple[float, float, float]:
    """(seconds of ``fn(calls[0])``, median seconds of ``fn(c)`` for the other ``calls``, this process's CPU
    seconds for ``fn(calls[0])``: on a shared machine the CPU time is what transfers to another host)."""
    out, cpu = [], 0.0
    for k, c in enumerate(calls):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(c)
        out.append(time.perf_counter() - t0)
        cpu = time.process_time() - c0 if k == 0 else cpu
    return out[0], statistics.median(out[1:]) if len(out) > 1 else float("nan"), cpu


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of process ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _cells_by_size(b: Bundle) -> list[int]:
    """The bundle's cells with at least 3 images, smallest first."""
    c = b.cells[b.cells["n"] >= 3].sort_values(["n", "cell"])
    return [int(x) for x in c["cell"]]


def server_steps(out: Path, repeat: int) -> tuple[list[tuple[str, float, float, float]], dict]:
    """``[(step, first s, rerun s, target s)]`` through ``app_pages.glue.data`` on the bundle at ``out``, and
    facts (images, cells, grid, open seconds, cell sizes)."""
    from app_pages.glue import data as D

    path = str(out)
    stamp = D.stamp(path)
    t0 = time.perf_counter()
    b = D.load_bundle(path, stamp)
    b.thumbnails([])  # the thumbnail index
    t_open = time.perf_counter() - t0
    grid, by_size = b.grid, _cells_by_size(b)
    mid, k = len(by_size) // 2, repeat + 1
    median_cells, big_cells = by_size[mid:mid + k], by_size[-k:][::-1]
    size = b.cells.set_index("cell")["n"]
    spread = by_size[:: max(1, len(by_size) // k)][:k]  # cells a visitor clicks on: the selection changes
    picks = {m: b.images.loc[b.images["cell"] == big_cells[0], "image_id"].tolist()[:m] for m in (3, 12)}
    seed_maps(b, picks[12])
    w2 = D.head_weights(path, stamp)

    def overview(filters: ov.Filters, g: int):
        return lambda sel: D.overview_spec(path, stamp, g, filters, (sel,))

    def page_rerun(sel):  # what the overview page computes on every rerun besides the (cached) spec
        D.filtered_cells(path, stamp, grid, ov.Filters())
        D.generator_choices(path, stamp)
        members = ov.selected_members(D.gridded(path, stamp, grid)[0], [sel], ov.Filters())
        D.thumbs(b, members["image_id"].head(12).tolist())

    def grid_step(cell):
        D.grid_for(path, stamp, grid, (cell,), ov.Filters())

    def maps_step(ids):
        maps = D.stored_maps(path, stamp, tuple(ids), "last-block")
        rows = D.image_rows(b, ids)
        va.attention_rows(rows, ids, maps, w2, b.thumbnails(ids))
        va.contribution_frame(rows, ids, w2)

    big = f"{min(int(size[big_cells[0]]), 400)} of {int(size[big_cells[0]]):,} shown"
    rows = [
        ("overview, all images (rerun: a click on another cell)", overview(ov.Filters(), grid), spread, "overview"),
        ("overview page, per-rerun work with a cell selected", page_rerun, spread, "overview"),
        ("overview, filter fake+wrong", overview(ov.Filters(label="fake", outcome="wrong"), grid), spread, "overview"),
        ("overview, regrid to 20x20", overview(ov.Filters(), 20), [c % 400 for c in spread], "overview"),
        (f"cell -> grid, median cell ({int(size[median_cells[0]]):,} images)", grid_step, median_cells, "grid"),
        (f"cell -> grid, largest cells ({big})", grid_step, big_cells, "grid"),
        ("grid -> maps, 3 images (cached maps)", maps_step, [picks[3]] * k, "maps"),
        ("grid -> maps, 12 images (cached maps)", maps_step, [picks[12]] * k, "maps"),
    ]
    timings = [(name, *timed(fn, calls), TARGETS[kind]) for name, fn, calls, kind in rows]
    facts = {"images": len(b.images), "cells": len(b.cells), "grid": grid, "open": t_open,
             "thumb_groups": b.thumb_reader.metadata.num_row_groups, "rss": rss_mb(), "hits": cache_hit_seconds(b)}
    return timings, facts


def cache_hit_seconds(b: Bundle) -> tuple[float, float]:
    """(seconds of an ``st.cache_data`` hit, of an ``st.cache_resource`` hit) returning a per-image frame shaped
    like ``attribution.generator_predictions`` (what ``glue.data.generator_data`` gives the overview page on each
    rerun): ``cache_data`` hands every call its own copy, ``cache_resource`` the shared object."""
    import streamlit as st

    im = b.images
    frame = pd.DataFrame({c: im[c].to_numpy(dtype=object) for c in ("image_id", "label", "generator", "pred")})
    frame = frame.assign(p_fake=im["p_fake"].to_numpy(np.float32), predicted_generator=frame["generator"],
                         probability=im["confidence"].to_numpy(np.float32), attribution=frame["pred"],
                         held_out=np.ones(len(im), bool))
    out = []
    for cache in (st.cache_data, st.cache_resource):
        fn = cache(lambda key: frame)
        fn(str(b.path))
        t0 = time.perf_counter()
        fn(str(b.path))
        out.append(time.perf_counter() - t0)
    return out[0], out[1]


def warm_up(out: Path) -> float:
    """One small request of each kind (imports: altair, sklearn, the distiller) before anything is timed."""
    from app_pages.glue import data as D
    from asap_core.views import grid as vg

    t0 = time.perf_counter()
    b = Bundle.open(out)
    cells = b.cells.head(5)
    ov.overview_chart(ov.pie_slices(cells), b.grid).to_dict()
    members = b.images[b.images["cell"] == int(cells["cell"].iloc[0])].head(20)
    layout, n_rows, n_cols = vg.grid_layout(members)
    vg.grid_chart(vg.with_thumbs(layout, b.thumbnails(layout["image_id"].tolist())), n_rows, n_cols).to_dict()
    D.head_weights(str(out), D.stamp(str(out)))
    return time.perf_counter() - t0


def session_plan(b: Bundle) -> list[tuple[str, str, str]]:
    """``(what, URL suffix, what to wait for)`` of each browser session: the overview, a cell's image grid, the
    attention maps of three images, the overview on another grid (links open the pages directly)."""
    by_size = _cells_by_size(b)
    big, mid = by_size[-1], by_size[len(by_size) // 2]
    ids = b.images.loc[b.images["cell"] == big, "image_id"].tolist()[:3]
    seed_maps(b, ids)
    return [("overview, then a click on its largest cell", "/", f"cell:{big}"),
            (f"image grid of cell {mid} (link)", f"/?cell={mid}&page=images", "grid"),
            ("attention maps of 3 images (link)", f"/?images={','.join(i[:10] for i in ids)}&page=attention",
             "maps"),
            ("overview on a 20x20 grid (link)", "/?grid=20", "overview")]


def _open_session(browser, url: str, suffix: str, wait: str) -> float:
    """Open one session (a new browser context) at ``url + suffix``; seconds until its content is drawn."""
    import re

    from browser_helpers import CELL_SLICES, GRID_IMAGES, SLICES_JS, slice_click_point

    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    t0 = time.perf_counter()
    page.goto(url + suffix, timeout=600_000)
    if wait.startswith("cell:"):
        cell = int(wait.split(":")[1])
        page.wait_for_selector(CELL_SLICES.format(cell=cell), state="visible", timeout=600_000)
        drawn = time.perf_counter() - t0
        _close_guide(page)
        t1 = time.perf_counter()
        page.mouse.click(*slice_click_point(page.evaluate(SLICES_JS, cell)))
        page.get_by_text(f"Selected cell: {cell}").wait_for(timeout=600_000)
        print(f"    (the click on cell {cell}: {time.perf_counter() - t1:.2f} s until its summary shows)")
        return drawn
    if wait == "grid":
        page.locator(GRID_IMAGES).first.wait_for(state="visible", timeout=600_000)
    elif wait == "maps":
        page.get_by_text(re.compile("Contributions to the fake logit")).wait_for(timeout=600_000)
    else:
        page.wait_for_selector(".vega-embed path[aria-label*='; cell: ']", state="visible", timeout=600_000)
    drawn = time.perf_counter() - t0
    _close_guide(page)
    return drawn


def _close_guide(page) -> None:
    """Close the first-visit dialog when it shows (it covers the page)."""
    try:
        page.get_by_role("button", name="Got it").click(timeout=5000)
        page.get_by_role("dialog").wait_for(state="detached", timeout=5000)
    except Exception:
        pass


def sessions_rss(b: Bundle, n_sessions: int, work: Path) -> list[tuple[str, float, float, float]]:
    """``[(event, seconds until drawn, server VmRSS MB, VmHWM MB)]``: ``streamlit run`` on ``b``, then
    ``n_sessions`` browser sessions (``session_plan``, cycled) opened one by one and kept open."""
    from browser_helpers import CHROMIUM, CHROMIUM_ARGS, streamlit_server
    from playwright.sync_api import sync_playwright

    plan = session_plan(b)
    procs: list = []
    out = []
    work.mkdir(parents=True, exist_ok=True)
    env = {"ASAP_BUNDLE": str(b.path), "ASAP_CACHE_DIR": str(work / "cache")}
    with streamlit_server(env, work / "server.log", start_timeout=120, procs=procs) as url, sync_playwright() as p:
        pid = procs[0].pid
        out.append(("server started, no session", float("nan"), *rss_mb(pid)))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(n_sessions):
                what, suffix, wait = plan[i % len(plan)]
                drawn = _open_session(browser, url, suffix, wait)
                time.sleep(1.0)
                out.append((f"session {i + 1}: {what}", drawn, *rss_mb(pid)))
                print(f"  {out[-1][0]}: drawn in {drawn:.2f} s; server RSS {out[-1][2]:,.0f} MB", flush=True)
            time.sleep(3.0)
            out.append((f"{n_sessions} sessions open, idle 3 s", float("nan"), *rss_mb(pid)))
        finally:
            browser.close()
    return out


def print_steps(results: dict[int, tuple[list, dict]]) -> None:
    """One table: per step, first request and next ones for each bundle size, the largest bundle's CPU seconds
    for the first request, the target, and whether that first request met it (wall clock)."""
    sizes = sorted(results)
    head = "".join(f" {f'{n:,} first':>14} {f'{n:,} next':>14}" for n in sizes)
    print(f"\n{'step (seconds)':<58}{head} {'CPU first':>10} {'target':>7}  ok")
    names = [r[0] for r in results[sizes[-1]][0]]
    for k, name in enumerate(names):
        cols = "".join(f" {results[n][0][k][1]:14.3f} {results[n][0][k][2]:14.3f}" for n in sizes)
        _, first, _, cpu, target = results[sizes[-1]][0][k]
        print(f"{name:<58}{cols} {cpu:10.3f} {target:7.1f}  {'yes' if first <= target else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="images in the measured bundle")
    ap.add_argument("--baseline", type=int, default=0, help="images in a second, smaller bundle (0: none)")
    ap.add_argument("--work", default="/tmp/app-bench", help="folder of the bundles and the server's cache")
    ap.add_argument("--repeat", type=int, default=3, help="reruns per step (another cell each time)")
    ap.add_argument("--sessions", type=int, default=0, help="browser sessions against a server on the bundle")
    ap.add_argument("--thumb-px", type=int, default=128, help="longest side of the synthetic thumbnails")
    ap.add_argument("--rebuild", action="store_true", help="rewrite the synthetic bundles even if they exist")
    args = ap.parse_args()
    from streamlit import logger as st_logger

    st_logger.set_log_level("error")  # "No runtime found": Streamlit's caches work without a server
    work = Path(args.work)
    sizes = sorted({n for n in (args.baseline, args.n) if n > 0})
    bundles = {}
    for n in sizes:
        b, t_write = ensure_bundle(work / f"bundle-{n}", n, args.thumb_px, args.rebuild)
        thumbs_mb = (b.path / "thumbs.parquet").stat().st_size / 1e6
        made = "reused" if t_write is None else f"written in {t_write:.1f} s"
        print(f"bundle of {n:,} images: {made}; thumbs.parquet {thumbs_mb:,.0f} MB, "
              f"images.parquet {(b.path / 'images.parquet').stat().st_size / 1e6:,.0f} MB; this process's peak RSS "
              f"so far {rss_mb()[1]:,.0f} MB", flush=True)
        bundles[n] = b
    print(f"warm-up (imports, first request of a new server process): {warm_up(bundles[sizes[0]].path):.2f} s")
    results = {}
    for n in sizes:
        results[n] = server_steps(bundles[n].path, args.repeat)
        f = results[n][1]
        print(f"{n:,} images: {f['cells']} cells on {f['grid']}x{f['grid']}, thumbnails in {f['thumb_groups']} row "
              f"groups; open + tables + thumbnail index {f['open']:.2f} s; this process RSS {f['rss'][0]:,.0f} MB "
              f"(peak {f['rss'][1]:,.0f}); a per-image frame from st.cache_data {f['hits'][0]:.3f} s per call "
              f"(a copy), from st.cache_resource {f['hits'][1]:.4f} s", flush=True)
    print_steps(results)
    if args.sessions:
        print(f"\nserver memory, {args.sessions} browser sessions on the {args.n:,}-image bundle:", flush=True)
        rows = sessions_rss(bundles[args.n], args.sessions, work / "server")
        print(f"{'event':<62} {'drawn s':>8} {'RSS MB':>8} {'peak MB':>8}")
        for name, drawn, rss, hwm in rows:
            print(f"{name:<62} {drawn:8.2f} {rss:8,.0f} {hwm:8,.0f}")
        print(f"target: server RSS under 3,000 MB with 4 sessions: {'yes' if rows[-1][2] < 3000 else 'NO'}")


if __name__ == "__main__":
    main()
