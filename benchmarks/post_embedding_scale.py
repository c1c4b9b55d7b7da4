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


# ----------------------------------------------------------------------------- setup: what an embedding pass leaves


def directions(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` orthonormal rows ``[k, DIM]``."""
    q, _ = np.linalg.qr(rng.standard_normal((DIM, k)))
    return q.T.astype(np.float32)


def synthetic_rows(n: int):
    """``(y [n] 1 = fake, generator index [n] (-1 for reals), chunks)``: ``chunks`` yields ``(start, [m, DIM])``
    L2-normalised float32 rows, ``CHUNK`` at a time. Row i: topic centre + planted real/fake shift + generator
    shift + noise."""
    rng = np.random.default_rng(SEED)
    planted = directions(rng, 3)  # fake direction, generator A, generator B
    topics = rng.standard_normal((20, DIM)).astype(np.float32) * 0.15
    y = (rng.random(n) < 0.5).astype(np.int8)
    gen = np.where(y == 1, rng.integers(0, 2, n), -1).astype(np.int8)
    topic = rng.integers(0, 20, n)

    def chunks():
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            x = rng.standard_normal((e - s, DIM), dtype=np.float32)
            x += topics[topic[s:e]] * np.sqrt(DIM)
            x += (2.0 * y[s:e, None] - 1.0) * 1.2 * planted[0]
            for g in (0, 1):
                x += (gen[s:e, None] == g) * 1.5 * planted[1 + g]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield s, x
    return y, gen, chunks()


def sample_files(work: Path, rows: np.ndarray, paths: list[str]) -> dict[int, str]:
    """Small PNGs (random pixels) at ``paths[i]`` for the ``rows`` the projection's sample reads; returns
    their ids (SHA-1 of the bytes, as the hash stage computes them) by row."""
    from PIL import Image

    from asap_core.inputs.imageio import file_sha1

    rng = np.random.default_rng(4)
    ids = {}
    for i in rows:
        path = Path(paths[i])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
        ids[int(i)] = file_sha1(path)
    return ids


def ids_table(work: Path, y: np.ndarray, gen: np.ndarray):
    """The table ``--from-embeddings`` reads (``image_id, path, label, generator``); files written for the rows
    of the projection's sample only."""
    import pandas as pd

    from asap_core.pipeline.stages import projection_sample_size, sample_order

    n = len(y)
    label = np.where(y == 1, "fake", "real").astype(object)
    paths = [str(work / "images" / f"{lab}/{i:07d}.png") for i, lab in enumerate(label)]
    ids = [f"{i:040x}" for i in range(n)]
    for i, sha in sample_files(work, sample_order(n, SEED)[:projection_sample_size(n)], paths).items():
        ids[i] = sha
    generator = np.array([None, "gen_a", "gen_b"], dtype=object)[gen.astype(np.int64) + 1]
    return pd.DataFrame({"image_id": ids, "path": paths, "label": label, "generator": generator})


def options(work: Path):
    """The options of the measured run: the random 512-d CLIP, the scratch cache, CPU (fp32), seed 0."""
    from asap_core.pipeline.analyze import AnalyzeOptions

    return AnalyzeOptions(model=str(work / "model"), cache_dir=str(work / "cache"), device="cpu", random_state=SEED)


def setup_one(n: int, scratch: Path, thumb_bytes: int) -> None:
    """Fill ``scratch/n<N>``: model, embedding and thumbnail stores, ids table, the sample's image files."""
    import torch

    from asap_core.model.encoder import inspect_checkpoint
    from asap_core.pipeline.demo import write_random_clip
    from asap_core.pipeline.stages import RunContext, embedding_stores

    work = scratch / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    note: dict = {}
    with stage(n, "setup (not analyze): model, stores, ids table, sample files", note):
        write_random_clip(work / "model", image_size=32, patch_size=8, dim=DIM)
        opts = options(work)
        ctx = RunContext(opts, torch.device("cpu"), torch.float32, inspect_checkpoint(opts.model), work / "cache")
        store, thumbs = embedding_stores(ctx)
        y, gen, chunks = synthetic_rows(n)
        table = ids_table(work, y, gen)
        ids = table["image_id"].tolist()
        blob = np.random.default_rng(1).integers(0, 256, thumb_bytes * CHUNK, dtype=np.uint8).tobytes()
        for s, x in chunks:
            part = ids[s:s + len(x)]
            thumbs.put(part, [blob[k * thumb_bytes:(k + 1) * thumb_bytes] for k in range(len(part))])
            store.put(part, x)
        table.to_parquet(work / "ids.parquet")
        note["note"] = f"{-(-n // CHUNK)} shards per store; thumbnails {thumb_bytes} B each"


# ----------------------------------------------------------------------------- the measured run


@contextmanager
def stage_rows(n: int):
    """While the block runs, every ``RunContext.stage`` of ``analyze`` also emits a row: its seconds and peak
    RSS (``VmHWM`` reset at its start; a nested stage's peak goes into its parent's). Yields the list of
    top-level peaks (MB)."""
    from asap_core.pipeline import stages as S

    original, frames, peaks = S.RunContext.stage, [], []

    @contextmanager
    def measured(self, name: str):
        if frames:
            frames[-1]["peak"] = max(frames[-1]["peak"], _status_mb("VmHWM"))
        frame = {"name": name, "peak": 0.0, "reset": _reset_peak(), "before": _status_mb("VmRSS"),
                 "t0": time.perf_counter(), "cpu0": time.process_time()}
        frames.append(frame)
        status = "ok"
        try:
            with original(self, name):
                yield
        except BaseException as exc:
            status = f"FAILED: {type(exc).__name__}: {str(exc)[:160]}"
            raise
        finally:
            frames.pop()
            peak = max(frame["peak"], _status_mb("VmHWM"))
            (frames[-1].__setitem__("peak", max(frames[-1]["peak"], peak)) if frames else peaks.append(peak))
            emit(n=n, stage=(f"  inside {frames[-1]['name']}: " if frames else "") + name,
                 s=time.perf_counter() - frame["t0"], cpu_s=time.process_time() - frame["cpu0"], peak_mb=peak,
                 rss_before_mb=frame["before"],
                 rss_after_mb=_status_mb("VmRSS"), peak_kind="stage" if frame["reset"] else "since start",
                 status=status, note="")
    S.RunContext.stage = measured
    try:
        yield peaks
    finally:
        S.RunContext.stage = original


@contextmanager
def layout_timers():
    """Seconds spent in ``layout.tsne_2d`` and ``layout.embed_2d`` while the block runs (wrapped, restored)."""
    from asap_core.method import layout as L
    from asap_core.pipeline import stages as S

    spent = {"tsne": 0.0, "embed_2d": 0.0}
    originals = {"tsne": L.tsne_2d, "embed_2d": S.embed_2d}  # the layout stage calls stages' own name

    def timed(key):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return originals[key](*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return call
    L.tsne_2d, S.embed_2d = timed("tsne"), timed("embed_2d")
    try:
        yield spent
    finally:
        L.tsne_2d, S.embed_2d = originals["tsne"], originals["embed_2d"]


def isomatch_cells(n: int, bundle: Path, k: int) -> None:
    """Apart from the total: the image view's IsoMatch grid (``subsample`` to 400, ``isomatch_grid`` on z) for
    ``k`` seeded cells of the written bundle and its largest one; seconds are the mean per cell."""
    from asap_core.method.isomatch import isomatch_grid
    from asap_core.storage.bundle import Bundle
    from asap_core.storage.schema import Z_COLUMNS
    from asap_core.views.grid import subsample

    b = Bundle.open(bundle)
    images, cells = b.images, b.cells
    chosen = set(np.random.default_rng(SEED).choice(cells["cell"].to_numpy(), size=min(k, len(cells)), replace=False))
    chosen.add(int(cells.loc[cells["n"].idxmax(), "cell"]))
    groups = images.groupby("cell").indices
    times = []
    for c in sorted(int(c) for c in chosen):
        members = subsample(images.iloc[groups[c]])
        t0 = time.perf_counter()
        isomatch_grid(members[Z_COLUMNS].to_numpy(np.float64), random_state=SEED)
        times.append(time.perf_counter() - t0)
    emit(n=n, stage="apart: IsoMatch per cell (on demand)", s=float(np.mean(times)), peak_mb=None, status="ok",
         note=(f"{len(times)} cells, mean {np.mean(times):.2f} s, max {np.max(times):.2f} s; all {len(cells)} "
               f"cells one by one: {np.mean(times) * len(cells):.0f} s"))


def run_one(n: int, scratch: Path, args) -> None:
    """``analyze_embeddings`` on the table ``setup_one`` wrote (= ``analyze TABLE --from-embeddings``)."""
    from asap_core.pipeline.analyze import analyze_embeddings

    work = scratch / f"n{n}"
    start_mb = _status_mb("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    with stage_rows(n) as peaks, layout_timers() as spent:
        report = analyze_embeddings(work / "ids.parquet", work / "bundle", options(work))
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for name, s in (("  of the layout: t-SNE fit (at most 20k rows)", spent["tsne"]),
                    ("  of the layout: unique rows + kNN placement", spent["embed_2d"] - spent["tsne"])):
        emit(n=n, stage=name, s=s, peak_mb=None, status="ok", note="")
    m = report.metrics
    size = sum(f.stat().st_size for f in report.bundle.rglob("*") if f.is_file())
    emit(n=n, stage="TOTAL analyze --from-embeddings (the real path)", s=total, cpu_s=cpu,
         peak_mb=max(peaks, default=start_mb),
         rss_before_mb=start_mb, rss_after_mb=_status_mb("VmRSS"), status="ok",
         note=(f"{report.n_used:,} images; {m['epochs']} epochs, val AUC {m['val']['roc_auc']:.3f}, generator acc "
               f"{m.get('generator_val_accuracy', float('nan')):.3f}; grid {_grid(report)}; "
               f"bundle {size / 1e6:.0f} MB"))
    isomatch_cells(n, report.bundle, args.isomatch_cells)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _grid(report) -> str:
    """The bundle's grid and non-empty cells, from its bundle.json."""
    meta = json.loads((report.bundle / "bundle.json").read_text())
    return f"{meta['options']['grid']}, {meta['counts']['cells']} non-empty cells"


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


def headline(n: int, rows: list[dict]) -> str:
    """The real path's total (seconds, peak) for ``n`` images, or why there is none; setup and the rows printed
    apart are never in it."""
    total = [r for r in rows if r["stage"].startswith("TOTAL")]
    failed = [r for r in rows if r["status"] != "ok"]
    if not total or failed:
        return f"{n:,} images: the real path did not finish ({(failed or [{'status': 'no total row'}])[0]['status']})"
    t = total[0]
    return (f"{n:,} images: the real path (analyze --from-embeddings) took {t['s']:.0f} s ({t['cpu_s']:.0f} CPU s), "
            f"peak RSS {t['peak_mb']:,.0f} MB")


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| images | stage | s | CPU s | peak RSS MB | RSS before / after MB | status | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = f"{r['n']:,}" if isinstance(r["n"], int) else r["n"]
        since = "" if r.get("peak_kind", "stage") == "stage" else " (since start)"
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:,.0f}" + since
        ba = "" if r.get("rss_before_mb") is None else f"{r['rss_before_mb']:,.0f} / {r['rss_after_mb']:,.0f}"
        cpu = "" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
        lines.append(f"| {n} | {r['stage']} | {r['s']:.1f} | {cpu} | {peak} | {ba} | {r['status']} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated image counts, each in fresh processes")
    ap.add_argument("--scratch", default="/tmp/asap-post-embedding-scale", help="scratch folder (deleted per size)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per process")
    ap.add_argument("--cap-gb", type=float, default=12.0, help="address-space cap per process (0: none)")
    ap.add_argument("--thumb-bytes", type=int, default=64, help="fake thumbnail bytes per image in the bundle")
    ap.add_argument("--isomatch-cells", type=int, default=30, help="cells whose IsoMatch grid is timed (apart)")
    ap.add_argument("--put-rate", default="64,512,1000", help="rows per RowStore.put call to time ('' = skip)")
    ap.add_argument("--put-total", type=int, default=32_000, help="rows written per --put-rate setting")
    ap.add_argument("--put-thumb-bytes", type=int, default=5000, help="thumbnail bytes per row for --put-rate")
    ap.add_argument("--keep", action="store_true", help="keep the scratch files")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--setup-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--put-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    scratch = Path(args.scratch)
    if args.setup_one:
        return setup_one(args.setup_one, scratch, args.thumb_bytes)
    if args.one:
        return run_one(args.one, scratch, args)
    if args.put_one:
        return put_rate(args.put_one, args.put_total, args.put_thumb_bytes, scratch)
    common = ["--scratch", str(scratch), "--thumb-bytes", str(args.thumb_bytes), "--isomatch-cells",
              str(args.isomatch_cells), "--put-total", str(args.put_total), "--put-thumb-bytes",
              str(args.put_thumb_bytes)] + (["--keep"] if args.keep else [])
    rows: list[dict] = []
    for r in [int(s) for s in args.put_rate.split(",") if s.strip()]:
        new = child(["--put-one", str(r), *common], args.timeout, args.cap_gb)
        rows += new
        print("\n".join(table(new).splitlines()[2:]), flush=True)
    lines = []
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        setup = child(["--setup-one", str(n), *common], args.timeout, args.cap_gb)
        load = os.getloadavg()[0]
        new = child(["--one", str(n), *common], args.timeout, args.cap_gb) if setup[-1]["status"] == "ok" else []
        rows += setup + new
        lines.append(headline(n, new) + f" (load average {load:.1f} at its start, {os.getloadavg()[0]:.1f} at its end)")
        print(f"\n{lines[-1]}\n" + table(setup + new), flush=True)
    print(f"\ncpu cores: {os.cpu_count()}, cap {args.cap_gb} GB address space, timeout {args.timeout} s per process\n")
    print(table(rows))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
