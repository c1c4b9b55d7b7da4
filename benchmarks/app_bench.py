"""Server-side timings of the explorer's three interactive steps on a synthetic 50,000-image bundle.

    python benchmarks/app_bench.py [--n 50000] [--out /tmp/app-bench-bundle] [--repeat 5]

Writes a synthetic bundle with ``asap_core.storage.bundle.write_bundle`` (random z, a random distiller, map
positions from a mixture of blobs, one tiny JPEG as every thumbnail) and random relevance maps for a few
images into its map store, then times what a page computes before Streamlit ships the result (the app
caches each of these per bundle + parameters, so "first" is the cost of the first request for that cell or
filter; one-time imports are timed apart as the warm-up):

- overview: cell table (after filters) -> pie slices -> Vega-Lite spec      target 1.5 s
- cell -> grid: members -> IsoMatch grid -> thumbnail data URIs -> spec     target 1.0 s
- grid -> maps: cached maps of the picked images -> 18 overlays each        target 1.0 s

Not a test; prints a table.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asap_core.storage.bundle import Bundle, write_bundle  # noqa: E402
from asap_core.storage.schema import IMAGE_COLUMNS, Z_COLUMNS, Counts, EncoderInfo  # noqa: E402
from asap_core.method.layout import assign_cells, cell_table, regrid  # noqa: E402
from asap_core.views import attention as va  # noqa: E402
from asap_core.views import grid as vg  # noqa: E402
from asap_core.views import overview as ov  # noqa: E402

PATCH_SIDE = 7


def synthetic_bundle(out: Path, n: int, grid: int = 24, seed: int = 0) -> Path:
    """Write a bundle of ``n`` synthetic images to ``out`` (random distiller, blob map, one thumbnail)."""
    import torch

    from asap_core.method.distiller import Distiller, DistillerConfig

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    distiller = Distiller(DistillerConfig(embed_dim=64, proj_dim=32)).eval()
    w2 = distiller.head.weight.detach().numpy().reshape(-1)
    b2 = float(distiller.head.bias.detach().numpy()[0])

    label = np.where(rng.random(n) < 0.5, "fake", "real").astype(object)
    fake = label == "fake"
    z = rng.normal(size=(n, 16)).astype(np.float32) + np.outer(np.where(fake, 0.6, -0.6), np.sign(w2)).astype(np.float32)
    logit = z @ w2 + b2
    p_fake = (1 / (1 + np.exp(-logit))).astype(np.float32)
    pred = np.where(p_fake >= 0.5, "fake", "real").astype(object)
    centres = rng.random((40, 2)) * 0.8 + 0.1
    which = rng.integers(0, 40, n)
    xy = np.clip(centres[which] + rng.normal(scale=0.06, size=(n, 2)) + np.where(fake, 0.05, -0.05)[:, None], 0, 1)
    cell, col, row = assign_cells(xy, grid)
    ids = [hashlib.sha1(f"img{i}".encode()).hexdigest() for i in range(n)]
    gens = np.where(fake, np.where(rng.random(n) < 0.5, "gan_a", "diff_b"), None).astype(object)
    images = pd.DataFrame({
        "image_id": ids, "path": [f"/nonexistent/{i}.jpg" for i in range(n)],
        "relpath": [f"{lab}/{i}.jpg" for i, lab in enumerate(label)], "label": label, "generator": gens,
        "source": gens, "split": None, "p_fake": p_fake, "pred": pred,
        "correct": pd.array(pred == label, dtype="boolean"), "confidence": np.abs(2 * p_fake - 1).astype(np.float32),
        **{c: z[:, i] for i, c in enumerate(Z_COLUMNS)}, "map_x": xy[:, 0], "map_y": xy[:, 1],
        "cell": cell, "col": col, "row": row,
    })[list(IMAGE_COLUMNS)]
    cells = cell_table(images, grid)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=60)
    thumb = buf.getvalue()
    counts = Counts(found=n, used=n, real=int((~fake).sum()), fake=int(fake.sum()), unlabelled=0, cells=len(cells))
    meta = {"encoder": EncoderInfo("synthetic-clip", "bench", 64, PATCH_SIDE, 224).to_dict(), "layout": "synthetic",
            "options": {"grid": grid}, "counts": counts.to_dict(), "metrics": {}, "skipped": []}
    return write_bundle(out, meta, images, cells, (ids, [thumb] * n), distiller.save_pretrained)


def seed_maps(bundle: Bundle, ids: list[str], method: str = "last-block") -> None:
    """Random ``[17, 7, 7]`` maps for ``ids`` in the bundle's map store (so the maps step reads a cache)."""
    from asap_core.method.relevance_store import bundle_map_store

    store = bundle_map_store(bundle, method)
    todo = store.missing(ids)
    if todo:
        rng = np.random.default_rng(1)
        store.put(todo, rng.random((len(todo), 17, PATCH_SIDE, PATCH_SIDE)).astype(np.float16))


def timed(fn, repeat: int) -> tuple[float, float]:
    """(first call, median of ``repeat`` further calls) in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--out", default="/tmp/app-bench-bundle")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true", help="rewrite the synthetic bundle even if it exists")
    args = ap.parse_args()

    out = Path(args.out)
    t0 = time.perf_counter()
    if args.rebuild or not (out / "bundle.json").is_file() or Bundle.open(out).counts.used != args.n:
        synthetic_bundle(out, args.n)
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = Bundle.open(out)
    images, cells = b.images, b.cells
    _ = b.distiller, b.thumbnails([])
    t_open = time.perf_counter() - t0
    grid = b.grid

    by_n = cells.sort_values("n")
    median_cell = int(by_n["cell"].iloc[len(by_n) // 2])
    big_cell = int(by_n["cell"].iloc[-1])
    w2 = va.head_weights(b.distiller)

    def overview(filters=ov.Filters(), g=grid):
        imgs = images if g == grid else regrid(images, g)[0]
        ov.overview_chart(ov.pie_slices(ov.filtered_cells(imgs, g, filters)), g).to_dict()

    def cell_to_grid(cell: int):
        members = vg.subsample(ov.selected_members(images, [cell], ov.Filters()))
        layout, n_rows, n_cols = vg.grid_layout(members)
        layout = vg.with_thumbs(layout, b.thumbnails(layout["image_id"].tolist()),
                                vg.thumb_px(vg.tile_size(n_cols)))
        vg.grid_chart(layout, n_rows, n_cols, tile=vg.tile_size(n_cols)).to_dict()

    picks = {k: images.loc[images["cell"] == big_cell, "image_id"].tolist()[:k] for k in (3, 12)}
    seed_maps(b, picks[12])

    def grid_to_maps(ids: list[str]):
        from asap_core.method.relevance_store import bundle_maps

        maps = bundle_maps(b, ids, "last-block")
        va.attention_rows(images, ids, maps, w2, b.thumbnails(ids))

    n_med = int(cells.set_index("cell").loc[median_cell, "n"])
    n_big = int(cells.set_index("cell").loc[big_cell, "n"])
    rows = [
        ("overview, all images", lambda: overview(), 1.5),
        ("overview, filter fake+wrong", lambda: overview(ov.Filters(label="fake", outcome="wrong")), 1.5),
        ("overview, regrid to 32x32", lambda: overview(g=32), 1.5),
        (f"cell -> grid, median cell ({n_med} images)", lambda: cell_to_grid(median_cell), 1.0),
        (f"cell -> grid, largest cell ({min(n_big, vg.MAX_GRID_IMAGES)} of {n_big} shown)",
         lambda: cell_to_grid(big_cell), 1.0),
        ("grid -> maps, 3 images (cached maps)", lambda: grid_to_maps(picks[3]), 1.0),
        ("grid -> maps, 12 images (cached maps)", lambda: grid_to_maps(picks[12]), 1.0),
    ]
    print(f"synthetic bundle: {len(images):,} images, {len(cells)} cells on {grid}x{grid}; "
          f"write {t_write:.1f} s, open + load tables {t_open:.2f} s")
    # One-time imports (altair, sklearn.manifold, ...) are paid once per server process, on the first
    # request of any cell; time them apart so the table shows the per-request cost.
    small_cell = int(by_n["cell"].iloc[len(by_n) // 4])
    t0 = time.perf_counter()
    overview(g=20)
    cell_to_grid(small_cell)
    grid_to_maps(picks[3][:1])
    print(f"warm-up (imports, first request of a new server process): {time.perf_counter() - t0:.2f} s")
    print(f"{'step':<52} {'first':>8} {'median':>8} {'target':>7}  ok   (seconds; median of --repeat reruns)")
    for name, fn, target in rows:
        first, med = timed(fn, args.repeat)
        print(f"{name:<52} {first:8.3f} {med:8.3f} {target:7.1f}  {'yes' if first <= target else 'NO'}")


if __name__ == "__main__":
    main()
