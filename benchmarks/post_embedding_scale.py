"""``analyze`` after the embedding pass at 100 k and 1 M images, through its real entry point: seconds and
peak RSS per stage.

    python benchmarks/post_embedding_scale.py --sizes 100000,1000000
    python benchmarks/post_embedding_scale.py --sizes 3000 --put-rate ''        # a quick dry run

No image folder: per size, a first process (setup, not part of any total) writes what an embedding pass
leaves behind, into the real stores ``analyze`` reads:

* a random CLIP with D = 512 (``demo.write_random_clip``: a 32-px, 2-layer vision tower, so its forward
  costs next to nothing) under ``--scratch``; the texted copies of the projection's sample go through it;
* synthetic CLIP-like embeddings ``[N, 512]`` float32 (20 topic clusters, real vs fake along one planted
  direction, two fake generators along two more, Gaussian noise, L2-normalised) put into that model's
  embedding store (``stages.embedding_stores``) 50,000 rows per shard, and ``--thumb-bytes`` fake bytes
  per image into the thumbnail store;
* the ids table (``image_id, path, label, generator``) as Parquet, and real image files only for the rows
  the projection's sample reads (the first ``projection_sample_size(N)`` of ``stages.sample_order``), whose
  ids are the SHA-1 of their bytes as the hash stage would give; the other paths name no file.

A second, fresh process then runs ``analyze_embeddings(table, out, options)``, the function behind
``python -m asap_core analyze TABLE --from-embeddings --out OUT`` (README, docs/scale.md): ``analyze``'s own
stages after the embedding pass (the table read, the cached embeddings read, projection, train with
predict, layout, write), nothing stood in. Each stage's seconds and peak RSS come from wrapping
``RunContext.stage`` (the timer ``analyze`` reports): the kernel's high-water mark (``VmHWM``) reset at the
stage's start by writing 5 to ``/proc/self/clear_refs`` (where refused, the peak since the process started;
the table says which); a stage inside another (``load model`` inside ``projection``) is its own row and
counts in its parent's peak. The total is the wall time of that one call and the highest stage peak.

Printed apart, never in the total: IsoMatch grids of ``--isomatch-cells`` cells of the written bundle (what
the image view does on demand), and with ``--put-rate`` (rows per call) the driver's write rate of the
embed stage: ``RowStore.put`` of 512-float embeddings and ``--put-thumb-bytes`` thumbnails, as the driver
of ``--engine ray`` does for each batch an actor returns.

Each process runs under ``--timeout`` seconds and an address-space cap of ``--cap-gb`` (``RLIMIT_AS``), so a
stage that would need too much memory fails with ``MemoryError`` instead of swapping; rows already
measured are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 512
CHUNK = 50_000
N_TEXT = 8
SEED = 0


# ----------------------------------------------------------------------------- memory


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def emit(**row) -> None:
    """One result row on stdout (the parent collects them; a killed run keeps the rows printed so far)."""
    print("ROW\t" + json.dumps(row, default=float), flush=True)


@contextmanager
def stage(n: int, name: str, note: dict):
    """Time the block and report its peak RSS as one row; ``note`` (filled by the block) goes with it.
    An exception ends the row as failed and propagates."""
    reset = _reset_peak()
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    status = "ok"
    try:
        yield
    except BaseException as exc:
        status = f"FAILED: {type(exc).__name__}: {str(exc)[:160]}"
        raise
    finally:
        emit(n=n, stage=name, s=time.perf_counter() - t0, peak_mb=_status_mb("VmHWM"), rss_before_mb=before,
             rss_after_mb=_status_mb("VmRSS"), peak_kind="stage" if reset else "since start", status=status,
             note=note.get("note", ""))


# ----------------------------------------------------------------------------- synthetic data


def directions(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` orthonormal rows ``[k, DIM]``."""
    q, _ = np.linalg.qr(rng.standard_normal((DIM, k)))
    return q.T.astype(np.float32)


def write_embeddings(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Write ``[n, DIM]`` L2-normalised float32 rows to ``path`` (``.npy``) in chunks; returns (y [n] 1 = fake,
    generator index [n], -1 for reals). Row i: topic centre + planted real/fake shift + generator shift + noise."""
    rng = np.random.default_rng(SEED)
    planted = directions(rng, 3)  # fake direction, generator A, generator B
    topics = rng.standard_normal((20, DIM)).astype(np.float32) * 0.15
    y = (rng.random(n) < 0.5).astype(np.int8)
    gen = np.where(y == 1, rng.integers(0, 2, n), -1).astype(np.int8)
    topic = rng.integers(0, 20, n)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        x = rng.standard_normal((e - s, DIM), dtype=np.float32)
        x += topics[topic[s:e]] * np.sqrt(DIM)
        x += (2.0 * y[s:e, None] - 1.0) * 1.2 * planted[0]
        for g in (0, 1):
            x += (gen[s:e, None] == g) * 1.5 * planted[1 + g]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    out.flush()
    del out
    return y, gen


def image_table(y: np.ndarray, gen: np.ndarray):
    """What the scan and hash stages hand on: ``path, relpath, label, generator, source, split, image_id``."""
    import pandas as pd

    n = len(y)
    label = np.where(y == 1, "fake", "real").astype(object)
    relpath = [f"{lab}/{i:07d}.jpg" for i, lab in enumerate(label)]
    generator = np.array([None, "gen_a", "gen_b"], dtype=object)[gen.astype(np.int64) + 1]
    return pd.DataFrame({"path": ["/data/" + r for r in relpath], "relpath": relpath, "label": label,
                         "generator": generator, "source": None, "split": None,
                         "image_id": [f"{i:040x}" for i in range(n)]})


def thumb_store(root: Path, ids: list[str], size: int):
    """A thumbnail ``RowStore`` holding ``size`` fake bytes per id, filled in puts of 10,000 rows."""
    from asap_core.storage.cache import RowStore

    store = RowStore(root, "thumbs-synthetic", None)
    rng = np.random.default_rng(1)
    for s in range(0, len(ids), 10_000):
        chunk = ids[s:s + 10_000]
        blob = rng.integers(0, 256, size * len(chunk), dtype=np.uint8).tobytes()
        store.put(chunk, [blob[k * size:(k + 1) * size] for k in range(len(chunk))])
    return store


# ----------------------------------------------------------------------------- stages


def run_context(cache: Path):
    """A ``RunContext`` for the post-embedding stages: CPU, fp32, a stand-in checkpoint (no model needed)."""
    import torch

    from asap_core.pipeline.analyze import AnalyzeOptions
    from asap_core.pipeline.stages import RunContext

    info = SimpleNamespace(model_id="synthetic-vit-b-32", cache_key="synthetic", embed_dim=DIM, patch_side=7,
                           image_size=224, source="random", preprocessor=SimpleNamespace(version="synthetic"))
    return RunContext(AnalyzeOptions(cache_dir=str(cache), seed=SEED), torch.device("cpu"), torch.float32, info,
                      cache)


def text_embedder(embeds: np.ndarray, idx: list[int]):
    """The ``embed`` stand-in for the texted copies: sample row + noise along ``N_TEXT`` fixed directions."""
    rng = np.random.default_rng(2)
    text = directions(np.random.default_rng(3), N_TEXT)

    def embed(images) -> np.ndarray:
        x = np.asarray(embeds[idx], np.float32) + rng.normal(0, 0.3, (len(images), N_TEXT)).astype(np.float32) @ text
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return embed


def fit_projection(embeds: np.ndarray, clean: np.ndarray, n_sample: int = 128):
    """``stages.fit_projection`` without decoding: the same seeded 128-image sample (tiny stand-in images,
    since ``render_text`` is called on each), its own embeddings, ``clean`` as ``clean_embeds``."""
    from PIL import Image

    from asap_core.method.projection import VisionOnlyProjection

    idx = [int(i) for i in np.random.default_rng(SEED).permutation(len(embeds))[:n_sample]]
    images = [Image.new("RGB", (32, 32), (i % 256, 80, 160)) for i in idx]
    return VisionOnlyProjection(random_state=SEED).fit(images, text_embedder(embeds, idx), clean_embeds=clean,
                                                      image_embeds=np.asarray(embeds[idx]))


def projection_stages(n: int, embeds: np.ndarray, sample: int):
    """The projection as ``project_stage`` fits it (all rows), and, when that fails, on ``sample`` rows."""
    from asap_core.pipeline.stages import PROJECTION_VERSION
    from asap_core.storage.cache import hash_key

    note: dict = {}
    try:
        with stage(n, "projection (as analyze: clean_embeds = all N)", note):
            hash_key(PROJECTION_VERSION, "synthetic", embeds, 128, SEED)
            return fit_projection(embeds, embeds)
    except MemoryError:
        pass
    note = {"note": f"variant, not in analyze today: clean_embeds = {min(sample, n):,} seeded rows"}
    with stage(n, "projection on a sample", note):
        rows = np.sort(np.random.default_rng(SEED).choice(n, size=min(sample, n), replace=False))
        return fit_projection(embeds, np.asarray(embeds[rows]))


def train_and_predict(n: int, ctx, emb, projection):
    """``stages.train_stage``, then ``Distiller.predict`` over every row (as ``analyze`` does)."""
    from asap_core.pipeline.stages import train_stage

    note: dict = {}
    with stage(n, "train (train_stage)", note):
        distiller, metrics = train_stage(ctx, emb, projection)
        note["note"] = (f"{metrics['epochs']} epochs, val AUC {metrics['val']['roc_auc']:.3f}, "
                        f"generator acc {metrics.get('generator_val_accuracy', float('nan')):.3f}")
    with stage(n, "predict z, p_fake (all rows)", {}):
        z, p_fake = distiller.predict(emb.embeds)
    return distiller, metrics, z, p_fake


@contextmanager
def layout_timers():
    """Seconds spent in ``layout.tsne_2d`` and ``layout.embed_2d`` while the block runs (wrapped, restored)."""
    from asap_core.method import layout as L

    spent = {"tsne": 0.0, "embed_2d": 0.0}
    originals = {"tsne": L.tsne_2d, "embed_2d": L.embed_2d}

    def timed(key):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return originals[key](*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return call
    L.tsne_2d, L.embed_2d = timed("tsne"), timed("embed_2d")
    try:
        yield spent
    finally:
        L.tsne_2d, L.embed_2d = originals["tsne"], originals["embed_2d"]


def layout(n: int, ctx, emb, z, p_fake):
    """``stages.layout_stage``; sub-rows: t-SNE fit, the rest of ``embed_2d``, everything else (cells)."""
    from asap_core.pipeline.stages import layout_stage

    note: dict = {}
    t0 = time.perf_counter()
    with layout_timers() as spent, stage(n, "layout (layout_stage)", note):
        images, cells = layout_stage(ctx, emb.images, z, p_fake)
        note["note"] = f"grid {ctx.options.grid}, {len(cells)} non-empty cells"
    total = time.perf_counter() - t0
    for name, s in (("  of which 2-D map: t-SNE fit (at most 20k rows)", spent["tsne"]),
                    ("  of which 2-D map: unique rows + kNN placement", spent["embed_2d"] - spent["tsne"]),
                    ("  of which predictions table + grid + cells", total - spent["embed_2d"])):
        emit(n=n, stage=name, s=s, peak_mb=None, status="ok", note="")
    return images, cells


def isomatch_cells(n: int, images, cells, k: int) -> None:
    """The image view's IsoMatch grid (``subsample`` to 400, ``isomatch_grid`` on z) for ``k`` seeded cells and
    the largest one; the row's seconds are the mean per cell."""
    from asap_core.method.isomatch import isomatch_grid
    from asap_core.storage.schema import Z_COLUMNS
    from asap_core.views.grid import subsample

    chosen = set(np.random.default_rng(SEED).choice(cells["cell"].to_numpy(), size=min(k, len(cells)), replace=False))
    chosen.add(int(cells.loc[cells["n"].idxmax(), "cell"]))
    groups = images.groupby("cell").indices
    note: dict = {}
    times = []
    with stage(n, "isomatch per cell (on demand)", note):
        for c in sorted(int(c) for c in chosen):
            members = subsample(images.iloc[groups[c]])
            t0 = time.perf_counter()
            isomatch_grid(members[Z_COLUMNS].to_numpy(np.float64), random_state=SEED)
            times.append(time.perf_counter() - t0)
        note["note"] = (f"{len(times)} cells, per cell mean {np.mean(times):.2f} s max {np.max(times):.2f} s; "
                        f"all {len(cells)} cells one by one: {np.mean(times) * len(cells):.0f} s")
    emit(n=n, stage="  isomatch: mean s per cell", s=float(np.mean(times)), peak_mb=None, status="ok", note="")


def write(n: int, ctx, out: Path, scan, images, cells, thumbs, distiller, projection, metrics) -> None:
    """``stages.write_stage`` into ``out``."""
    from asap_core.pipeline.stages import Results, write_stage

    note: dict = {}
    with stage(n, "write (write_stage)", note):
        write_stage(ctx, out, Results(scan, images, cells, thumbs, distiller, projection, metrics, None))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        note["note"] = f"bundle {size / 1e6:.0f} MB"


def run_one(n: int, scratch: Path, args) -> None:
    """Every post-embedding stage for ``n`` synthetic images, in ``analyze``'s order, in this process."""
    from asap_core.inputs.scan import ScanResult
    from asap_core.pipeline.stages import Embedded

    work = scratch / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    note: dict = {}
    with stage(n, "setup (synthetic embeddings, table, thumbs)", note):
        y, gen = write_embeddings(work / "embeds.npy", n)
        images = image_table(y, gen)
        thumbs = thumb_store(work / "cache", images["image_id"].tolist(), args.thumb_bytes)
        note["note"] = f"not a stage; thumbnails {args.thumb_bytes} B each"
    embeds = np.load(work / "embeds.npy", mmap_mode="r")
    ctx = run_context(work / "cache")
    emb = Embedded(images, embeds, thumbs, None)
    projection = projection_stages(n, embeds, args.projection_sample)
    distiller, metrics, z, p_fake = train_and_predict(n, ctx, emb, projection)
    images, cells = layout(n, ctx, emb, z, p_fake)
    isomatch_cells(n, images, cells, args.isomatch_cells)
    scan = ScanResult(work, emb.images, "synthetic")
    write(n, ctx, work / "bundle", scan, images, cells, thumbs, distiller, projection, metrics)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- driver write rate


def put_rate(rows: int, total: int, thumb_bytes: int, scratch: Path) -> None:
    """``RowStore.put`` of ``total`` rows in calls of ``rows``: embeddings ``[rows, 512]`` float32, then the
    thumbnails (random bytes: JPEG data does not compress either), into fresh stores."""
    from asap_core.storage.cache import RowStore

    root = scratch / f"put{rows}"
    shutil.rmtree(root, ignore_errors=True)
    emb_store, th_store = RowStore(root, "emb", (DIM,)), RowStore(root, "thumbs", None)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, DIM), dtype=np.float32)
    blob = rng.integers(0, 256, thumb_bytes * rows + 4096, dtype=np.uint8).tobytes()
    per_call = []
    for c in range(total // rows):
        ids = [f"{c:08d}{i:032x}" for i in range(rows)]
        off = c % 4096
        thumbs = [blob[off + k * thumb_bytes: off + (k + 1) * thumb_bytes] for k in range(rows)]
        t0 = time.perf_counter()
        th_store.put(ids, thumbs)
        emb_store.put(ids, x)
        per_call.append(time.perf_counter() - t0)
    secs = sum(per_call)
    tail = per_call[-max(1, len(per_call) // 10):]
    done = len(per_call) * rows
    emit(n=done, stage=f"driver RowStore.put, {rows} rows per call", s=secs, peak_mb=_status_mb("VmHWM"),
         status="ok", note=(f"{done / secs:,.0f} rows/s, {done * (DIM * 4 + thumb_bytes) / secs / 1e6:.0f} MB/s; "
                            f"last 10% of calls {rows * len(tail) / sum(tail):,.0f} rows/s"))
    all_ids = [f"{c:08d}{i:032x}" for c in range(len(per_call)) for i in range(rows)]
    t0 = time.perf_counter()
    RowStore(root, "emb", (DIM,)).get(all_ids)  # what keep_embedded reads back, from a fresh index
    secs = time.perf_counter() - t0
    emit(n=done, stage=f"  RowStore.get of those embeddings ({len(per_call)} shards)", s=secs, peak_mb=None,
         status="ok", note=f"{done / secs:,.0f} rows/s")
    shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- parent


def child(argv: list[str], timeout: int, cap_gb: float) -> list[dict]:
    """Run this script with ``argv`` in a fresh process (address space capped, killed after ``timeout``
    seconds); its rows, each echoed as it comes, plus a row for a timeout or a non-zero exit."""
    import tempfile
    import threading

    def limit() -> None:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=limit if cap_gb > 0 else None)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        for line in proc.stdout:
            if line.startswith("ROW\t"):
                rows.append(json.loads(line.split("\t", 1)[1]))
                print(f"  [{time.perf_counter() - t0:6.0f} s] {rows[-1]['stage'].strip()}: {rows[-1]['s']:.1f} s, "
                      f"{rows[-1]['status']}", file=sys.stderr, flush=True)
        rc = proc.wait()
        timer.cancel()
        err.seek(0)
        tail = err.read().strip().splitlines()[-1:]
    if rc != 0:
        why = f"killed after {timeout} s" if rc == -9 and time.perf_counter() - t0 >= timeout else f"exit {rc}"
        rows.append({"n": argv[1] if len(argv) > 1 else "", "stage": "(process)", "s": time.perf_counter() - t0,
                     "peak_mb": None, "status": f"{why}: {tail[0][:160] if tail else ''}", "note": ""})
    return rows


def pipeline_seconds(rows: list[dict]) -> float:
    """Seconds of the rows ``analyze`` runs after embedding (finished projection, train, predict, layout,
    write); setup, sub-rows, failed rows and the on-demand IsoMatch are left out."""
    return sum(r["s"] for r in rows if r["status"] == "ok"
               and r["stage"].startswith(("projection", "train", "predict", "layout (", "write")))


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| images | stage | s | peak RSS MB | RSS before / after MB | status | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        n = f"{r['n']:,}" if isinstance(r["n"], int) else r["n"]
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:,.0f}" + ("" if r.get("peak_kind", "stage") == "stage"
                                                                              else " (since start)")
        ba = "" if r.get("rss_before_mb") is None else f"{r['rss_before_mb']:,.0f} / {r['rss_after_mb']:,.0f}"
        lines.append(f"| {n} | {r['stage']} | {r['s']:.1f} | {peak} | {ba} | {r['status']} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated image counts, each in a fresh process")
    ap.add_argument("--scratch", default="/tmp/asap-post-embedding-scale", help="scratch folder (deleted per size)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per size")
    ap.add_argument("--cap-gb", type=float, default=12.0, help="address-space cap per size (0: none)")
    ap.add_argument("--thumb-bytes", type=int, default=64, help="fake thumbnail bytes per image in the bundle")
    ap.add_argument("--projection-sample", type=int, default=10_000, help="rows of the sample-fitted projection")
    ap.add_argument("--isomatch-cells", type=int, default=30, help="cells whose IsoMatch grid is timed")
    ap.add_argument("--put-rate", default="64,512,1000", help="rows per RowStore.put call to time ('' = skip)")
    ap.add_argument("--put-total", type=int, default=32_000, help="rows written per --put-rate setting")
    ap.add_argument("--put-thumb-bytes", type=int, default=5000, help="thumbnail bytes per row for --put-rate")
    ap.add_argument("--keep", action="store_true", help="keep the scratch files")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--put-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    scratch = Path(args.scratch)
    if args.one:
        return run_one(args.one, scratch, args)
    if args.put_one:
        return put_rate(args.put_one, args.put_total, args.put_thumb_bytes, scratch)
    common = ["--scratch", str(scratch), "--thumb-bytes", str(args.thumb_bytes), "--projection-sample",
              str(args.projection_sample), "--isomatch-cells", str(args.isomatch_cells), "--put-total",
              str(args.put_total), "--put-thumb-bytes", str(args.put_thumb_bytes)] + (["--keep"] if args.keep else [])
    rows: list[dict] = []
    for r in [int(s) for s in args.put_rate.split(",") if s.strip()]:
        new = child(["--put-one", str(r), *common], args.timeout, args.cap_gb)
        rows += new
        print("\n".join(table(new).splitlines()[2:]), flush=True)
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        new = child(["--one", str(n), *common], args.timeout, args.cap_gb)
        rows += new
        print(f"\n{n:,} images: {pipeline_seconds(new):.0f} s in the stages analyze runs\n" + table(new), flush=True)
    print(f"\ncpu cores: {os.cpu_count()}, cap {args.cap_gb} GB address space, timeout {args.timeout} s per size\n")
    print(table(rows))


if __name__ == "__main__":
    main()
