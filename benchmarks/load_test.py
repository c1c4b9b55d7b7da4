"""Load test of the explorer: N concurrent browser sessions against one ``streamlit run`` on 127.0.0.1.

    python benchmarks/load_test.py [--bundle PATH] [--sessions 8] [--seconds 60] [--mode hosted|local]
                                   [--grid 6] [--work DIR] [--json results.json]

Starts ``streamlit run streamlit_app.py`` headless on 127.0.0.1 and a free port, on ``--bundle`` or (without
one) on a bundle it builds first: ``asap_core/demo_data`` (300 JPEGs) analysed with a random CLIP from
``asap_core.pipeline.demo.write_random_clip`` (no download). ``--mode hosted`` (default) serves it the public way
(``ASAP_HOSTED=1``, the bundle's parent folder as ``ASAP_BUNDLE_ROOT``, the bundle picked by name);
``--mode local`` with ``ASAP_BUNDLE=PATH``.

Then one headless Chromium (Debian's, ``/usr/bin/chromium``) with one context per session; each session
loops, until ``--seconds`` have passed (a round that has started finishes, bounded by ``--step-timeout``
per step):

1. ``overview``: open the app (a new Streamlit session) -> the pie of the round's cell is drawn
2. ``select_cell``: click the cell's largest slice -> "Selected cell: C" and the "Open image grid" button
3. ``image_grid``: click "Open image grid" -> the heading "Cell C · n images" and all n thumbnails
4. ``pick_images``: brush the first three thumbnails -> "k images picked"
5. ``attention_maps``: click "Show attention maps" -> 18 decoded tiles per picked image (maps computed on
   demand the first time a picked image is seen, cached afterwards)

Sessions start on different cells and move through the cells with n >= 3 images, so early rounds compute
relevance maps concurrently and later rounds read them from the cache. Latency of a step = action until
the expected element is visible. An error is an exception (timeout, wrong count) or a Streamlit exception /
``st.error`` block on the page; the round is then abandoned and the session goes on with the next one.
Prints median / 95th percentile / max per step and the errors; exit status 1 when there was any error.
A one-session warm-up round (server imports, model load; reported apart) runs first unless ``--no-warmup``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_helpers import (CELL_SLICES, CHROMIUM, CHROMIUM_ARGS, ERROR_BLOCKS, ERRORS_JS,  # noqa: E402
                             GRID_IMAGES, IMAGES_DECODED_JS, MAIN_IMAGES, PICKED_TEXT, SLICES_JS, brush_path,
                             slice_click_point, streamlit_server)

STEPS = ("overview", "select_cell", "image_grid", "pick_images", "attention_maps")
TILES_PER_IMAGE = 18  # the image, the fake-logit map and 16 dimension maps


# ------------------------------------------------------------------------------------------ bundle
def build_demo_bundle(work: Path) -> Path:
    """``asap_core/demo_data`` analysed with a random CLIP into ``work/bundles/demo`` (reused when there)."""
    from asap_core.storage.bundle import Bundle
    from asap_core.pipeline.demo import DEMO_DATA, RANDOM_CLIP, write_random_clip
    from asap_core.errors import BundleError
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze

    out = work / "bundles" / "demo"
    try:
        Bundle.open(out)
        return out
    except BundleError:
        pass
    clip = work / "random-clip"
    if not (clip / "config.json").is_file():
        write_random_clip(clip, **RANDOM_CLIP)
    t0 = time.perf_counter()
    analyze(DEMO_DATA, out, AnalyzeOptions(model=str(clip), cache_dir=str(work / "analyze-cache"), num_workers=0))
    print(f"built {out} in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def cell_plan(bundle_path: Path, grid: int, min_images: int = 3) -> list[tuple[int, int]]:
    """(cell, n shown on the image page) of the cells with at least ``min_images`` images, biggest first."""
    from asap_core.storage.bundle import Bundle
    from asap_core.method.layout import regrid
    from asap_core.views.grid import MAX_GRID_IMAGES

    _, cells = regrid(Bundle.open(bundle_path).images, grid)
    cells = cells[cells["n"] >= min_images].sort_values(["n", "cell"], ascending=False)
    return [(int(c), min(int(n), MAX_GRID_IMAGES)) for c, n in zip(cells["cell"], cells["n"])]


# ------------------------------------------------------------------------------------------ sessions
@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    errors: list[str] = field(default_factory=list)
    rounds: int = 0
    maps_shown: int = 0


class PageError(RuntimeError):
    """An error block on the page, or the page not showing what the step expects."""


async def _check_page(page, step: str) -> None:
    texts = await page.evaluate(ERRORS_JS)
    if texts:
        raise PageError(f"{step}: error block on the page: {texts[0]!r}")


async def expect(page, step: str, *waits) -> None:
    """Await ``waits`` (coroutines) in order; fail at once when an error block appears meanwhile."""
    err = asyncio.ensure_future(page.wait_for_selector(ERROR_BLOCKS, state="attached", timeout=0))
    pending = list(waits)
    try:
        while pending:
            task = asyncio.ensure_future(pending.pop(0))
            done, _ = await asyncio.wait({task, err}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                await _check_page(page, step)
                raise PageError(f"{step}: error block on the page")
            task.result()
    finally:
        err.cancel()
        for w in pending:  # not started: close them (no "never awaited" warnings)
            w.close()
    await _check_page(page, step)


async def one_round(page, url: str, grid: int, cell: int, n_shown: int, res: Results) -> None:
    """The five steps for one cell; latencies go to ``res`` only when the whole round succeeds."""
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    await page.goto(f"{url}/?grid={grid}")
    await expect(page, "overview", page.wait_for_selector(CELL_SLICES.format(cell=cell), state="visible"))
    times["overview"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    await page.mouse.click(*slice_click_point(await page.evaluate(SLICES_JS, cell)))
    open_grid = page.get_by_role("button", name="Open image grid")
    await expect(page, "select_cell", page.get_by_text(f"Selected cell: {cell}").wait_for(), open_grid.wait_for())
    times["select_cell"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    await open_grid.click()
    images = page.locator(GRID_IMAGES)
    await expect(page, "image_grid", page.get_by_text(re.compile(rf"^Cell {cell} · [\d,]+ images$")).wait_for(),
                 images.nth(n_shown - 1).wait_for(state="visible"))
    times["image_grid"] = time.perf_counter() - t0
    if await images.count() != n_shown:
        raise PageError(f"image_grid: {await images.count()} thumbnails, expected {n_shown}")

    t0 = time.perf_counter()
    start, end = brush_path(await images.nth(0).bounding_box(), await images.nth(2).bounding_box())
    await page.mouse.move(*start)
    await page.mouse.down()
    await page.mouse.move(*end, steps=8)
    await page.mouse.up()
    picked = page.get_by_text(PICKED_TEXT)
    await expect(page, "pick_images", picked.wait_for())
    times["pick_images"] = time.perf_counter() - t0
    n_picked = int((await picked.inner_text()).split()[0])

    t0 = time.perf_counter()
    await page.get_by_role("button", name="Show attention maps").click()
    await expect(page, "attention_maps", page.get_by_text("Contributions to the fake logit").wait_for(),
                 page.wait_for_function(IMAGES_DECODED_JS, arg=n_picked * TILES_PER_IMAGE))
    times["attention_maps"] = time.perf_counter() - t0
    n_tiles = await page.locator(MAIN_IMAGES).count()
    if n_tiles != n_picked * TILES_PER_IMAGE:
        raise PageError(f"attention_maps: {n_tiles} tiles for {n_picked} picked images")

    for step, dt in times.items():
        res.latencies[step].append(dt)
    res.rounds += 1
    res.maps_shown += n_picked


async def session(i: int, browser, url: str, args, plan: list[tuple[int, int]], deadline: float,
                  res: Results) -> None:
    """One browser context looping rounds until ``deadline`` (a started round finishes or times out)."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(args.step_timeout * 1000)
    j = 0
    try:
        while time.monotonic() < deadline:
            cell, n = plan[(i + j * args.sessions) % len(plan)]
            j += 1
            try:
                await asyncio.wait_for(one_round(page, url, args.grid, cell, n, res),
                                       timeout=args.step_timeout * len(STEPS))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                msg = f"session {i} round {j} (cell {cell}): {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                res.errors.append(msg)
                print("ERROR", msg, flush=True)
                if args.shots:
                    try:
                        await page.screenshot(path=str(Path(args.shots) / f"error_s{i}_r{j}.png"), full_page=True)
                    except Exception:  # noqa: BLE001
                        pass
    finally:
        await ctx.close()


async def drive(url: str, args, plan: list[tuple[int, int]]) -> tuple[Results, Results | None, float]:
    """(results of the concurrent sessions, of the warm-up round, wall seconds of the concurrent phase)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            warm = None
            if not args.no_warmup:
                warm = Results()
                ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
                page = await ctx.new_page()
                page.set_default_timeout(args.step_timeout * 1000)
                cell, n = plan[-1]  # a cell no session starts on
                try:
                    await one_round(page, url, args.grid, cell, n, warm)
                except Exception as exc:  # noqa: BLE001
                    warm.errors.append(f"warm-up: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                await ctx.close()
            res = Results()
            t0 = time.monotonic()
            deadline = t0 + args.seconds
            await asyncio.gather(*(session(i, browser, url, args, plan, deadline, res)
                                   for i in range(args.sessions)))
            return res, warm, time.monotonic() - t0
        finally:
            await browser.close()


# ------------------------------------------------------------------------------------------ report
def table(res: Results) -> str:
    lines = ["| step | n | median (s) | p95 (s) | max (s) |", "|---|---:|---:|---:|---:|"]
    for step in STEPS:
        v = np.asarray(res.latencies[step])
        if len(v):
            lines.append(f"| {step} | {len(v)} | {np.median(v):.2f} | {np.percentile(v, 95):.2f} | {v.max():.2f} |")
        else:
            lines.append(f"| {step} | 0 | - | - | - |")
    total = np.sum([np.asarray(res.latencies[s]) for s in STEPS], axis=0) if res.rounds else np.zeros(0)
    if len(total):
        lines.append(f"| whole round | {len(total)} | {np.median(total):.2f} | {np.percentile(total, 95):.2f} "
                     f"| {total.max():.2f} |")
    return "\n".join(lines)


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a running process, MB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: build the demo bundle in --work)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long sessions start new rounds")
    ap.add_argument("--step-timeout", type=float, default=120.0, help="seconds one step may take")
    ap.add_argument("--mode", choices=["hosted", "local"], default="hosted")
    ap.add_argument("--grid", type=int, default=6)
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--shots", type=Path, help="screenshots of failed rounds go here")
    ap.add_argument("--no-warmup", action="store_true")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (Debian's chromium) and the playwright package", file=sys.stderr)
        return 2
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)

    tmp = None if args.work else Path(tempfile.mkdtemp(prefix="asap-load-"))
    work = args.work or tmp
    work.mkdir(parents=True, exist_ok=True)
    try:
        bundle = (args.bundle.expanduser().resolve() if args.bundle else build_demo_bundle(work))
        plan = cell_plan(bundle, args.grid)
        if len(plan) < 2:
            print(f"{bundle} has fewer than 2 cells with 3+ images on a {args.grid}x{args.grid} grid", file=sys.stderr)
            return 2
        env = {"ASAP_CACHE_DIR": str(work / "server-cache")}
        if args.mode == "hosted":
            env.update(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(bundle.parent), ASAP_BUNDLE=bundle.name)
        else:
            env.update(ASAP_BUNDLE=str(bundle), ASAP_HOSTED="0")
        procs: list = []
        with streamlit_server(env, work / "server.log", procs=procs) as url:
            print(f"server {url} ({args.mode} mode) on {bundle}; {args.sessions} sessions for {args.seconds:.0f} s; "
                  f"{len(plan)} cells with 3+ images on a {args.grid}x{args.grid} grid", flush=True)
            res, warm, wall = asyncio.run(drive(url, args, plan))
            rss = peak_rss_mb(procs[0].pid)
        print()
        if warm is not None:
            print("warm-up round (1 session): "
                  + (", ".join(f"{s} {warm.latencies[s][0]:.2f} s" for s in STEPS) if warm.rounds
                     else "; ".join(warm.errors)))
        print(f"\n{args.sessions} sessions, {wall:.0f} s: {res.rounds} rounds completed, "
              f"{res.maps_shown} images' maps shown, errors: {len(res.errors)}"
              + (f"; server peak RSS {rss:.0f} MB" if rss else ""))
        print(table(res))
        for e in res.errors[:20]:
            print("  -", e)
        if args.json:
            args.json.write_text(json.dumps({
                "sessions": args.sessions, "seconds": args.seconds, "mode": args.mode, "grid": args.grid,
                "bundle": str(bundle), "wall_s": wall, "rounds": res.rounds, "errors": res.errors,
                "latencies": res.latencies, "server_peak_rss_mb": rss,
                "warmup": None if warm is None else {"latencies": warm.latencies, "errors": warm.errors},
            }, indent=1))
        return 1 if res.errors or (warm is not None and warm.errors) else 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
