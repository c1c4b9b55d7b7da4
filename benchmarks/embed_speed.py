"""End-to-end embedding and relevance throughput: the naive pipeline vs this project, in one run.

Same JPEG files, same weights (a random ViT-B/32-architecture ``CLIPModel`` saved once with
``save_pretrained``; the naive pipeline loads it as ``CLIPModel``, ours loads its vision tower through
``ClipEncoder``), same device:

(a) naive: ``PIL.Image.open`` + ``CLIPImageProcessor`` + ``CLIPModel.get_image_features`` fp32, batches
    of 32, one loop (decode, then model, then decode ...);
(b) ours: ``asap_core.model.embedding.embed_files`` (decoder overlapped with the model, thumbnails and the
    Parquet cache writes included), plus the model's own forward rate on pre-decoded tensors, which
    bounds (b): "of fwd" says how much of the decode is hidden; with ``--compile`` also compiled
    (``ASAP_COMPILE=1``; the one-off compile time is printed and left out of the rates, like every
    method's warm-up);
(c) relevance maps for all 17 targets per image: one target at a time (17 forward + backward passes)
    vs one batched VJP (``benchmarks/relevance_speed.run``); for last-block also the relevance pass of
    ``analyze``, which starts from the last-layer inputs its embedding pass kept on disk (no decode,
    one layer; ``relevance_store.compute_missing_maps``).

    python benchmarks/embed_speed.py                          # CPU: 512 images, 3 rounds
    python benchmarks/embed_speed.py --n 8192 --rel-n 1024 --compile   # GPU
    python benchmarks/embed_speed.py --sweep                  # CPU: decode workers x torch threads

Each round runs every method once, taking turns, and the table gives the median img/s over rounds
(min-max in brackets): other jobs on a shared machine slow all methods alike. Images: ``--images DIR``
(JPEG files, cycled to ``--n``), else ``--n`` synthetic 500x375 JPEGs (mosaics of the face crops under
/work/shared/data when present) written once into ``--scratch``.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asap_core.method.relevance_store import LAST_INPUT_BATCH
from asap_core.model.device import device_name, dtype_name, relevance_batch_size
from asap_core.model.embedding import default_workers, embed_files, resolve_decoder
from asap_core.model.encoder import ClipEncoder
from asap_core.storage.cache import RowStore

NAIVE_BATCH = 32


def ensure_model(model_dir: Path) -> Path:
    """A random ViT-B/32 ``CLIPModel`` (vision projection 512) and a default ``CLIPImageProcessor``."""
    if (model_dir / "config.json").is_file():
        return model_dir
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(vision_config={"projection_dim": 512}, projection_dim=512)
    CLIPModel(cfg).save_pretrained(model_dir)
    CLIPImageProcessor().save_pretrained(model_dir)
    return model_dir


def ensure_images(folder: Path, n: int, width: int = 500, height: int = 375) -> list[str]:
    """``n`` synthetic JPEGs (quality 90) in ``folder``, written only where missing."""
    from preprocess_speed import natural_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    for start in range(0, len(missing), 256):
        chunk = missing[start:start + 256]
        for i, im in zip(chunk, natural_images(len(chunk), width, height, seed=chunk[0])):
            im.save(paths[i], quality=90)
    return [str(p) for p in paths]


def image_paths(args) -> list[str]:
    if args.images:
        files = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            sys.exit(f"no JPEG files under {args.images}")
        return [files[i % len(files)] for i in range(args.n)]
    return ensure_images(Path(args.scratch) / "jpg500", args.n)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def naive_pipeline(model, processor, paths: list[str], dev: torch.device) -> np.ndarray:
    """The loop most code does: open, ``CLIPImageProcessor``, fp32 ``get_image_features``, batch 32."""
    from PIL import Image

    out = []
    with torch.no_grad():
        for s in range(0, len(paths), NAIVE_BATCH):
            images = [Image.open(p).convert("RGB") for p in paths[s:s + NAIVE_BATCH]]
            px = processor(images=images, return_tensors="pt")["pixel_values"].to(dev)
            feats = model.get_image_features(pixel_values=px)
            feats = getattr(feats, "pooler_output", feats)  # transformers 5 returns the output object
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def ours_pipeline(encoder: ClipEncoder, paths: list[str], batch_size: int | None, workers: int | None,
                  scratch: Path, compile: bool = False) -> np.ndarray:
    """``embed_files`` into a fresh cache (nothing cached), thumbnails included."""
    ids = [f"{i:06d}" for i in range(len(paths))]
    cache = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=scratch))
    try:
        emb_store = RowStore(cache, "emb", (encoder.embed_dim,))
        failures = embed_files(lambda: encoder, encoder.preprocessor, paths, ids, emb_store, RowStore(cache, "thumbs"),
                               batch_size=batch_size, num_workers=workers, compile=compile)
        if failures:
            raise RuntimeError(f"{len(failures)} images failed, e.g. {failures[0]}")
        return emb_store.get(ids)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _naive_server(conn, model_dir: str, device: str, fwd_paths: list[str]) -> None:
    """Child process of ``NaiveProcess``: loads ``CLIPModel`` + ``CLIPImageProcessor`` and answers
    ``("pipeline", paths)`` with the embeddings and ``("forward", n)`` with ``None`` after the work."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dev = torch.device(device)
    model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    px = processor(images=[Image.open(p).convert("RGB") for p in fwd_paths], return_tensors="pt")["pixel_values"]
    px = px.repeat((NAIVE_BATCH + len(px) - 1) // len(px), 1, 1, 1)[:NAIVE_BATCH]
    conn.send(type(processor).__name__)
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "pipeline":
                conn.send(naive_pipeline(model, processor, msg[1], dev))
            elif msg[0] == "forward":
                conn.send(forward_only(lambda x: model.get_image_features(pixel_values=x), px, msg[1], NAIVE_BATCH,
                                       dev))
            else:
                return
        except Exception as exc:
            conn.send(exc)


class NaiveProcess:
    """The naive pipeline in a Python process of its own, as a user would run it: untouched by what
    ``embed_files`` sets process-wide in this one (``device.keep_freed_memory``'s malloc settings, which
    would speed the naive loop up too and hide part of the difference being measured)."""

    def __init__(self, model_dir: Path, device: torch.device, fwd_paths: list[str]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_naive_server, args=(child, str(model_dir), str(device), fwd_paths),
                                daemon=True)
        self.proc.start()
        self.processor_name = self._call(None)

    def _call(self, msg):
        if msg is not None:
            self.conn.send(msg)
        out = self.conn.recv()
        if isinstance(out, Exception):
            raise out
        return out

    def pipeline(self, paths: list[str]) -> np.ndarray:
        """Embeddings ``[n, D]`` of ``paths`` through the naive loop (timed by the caller, ~ms of pipe)."""
        return self._call(("pipeline", paths))

    def forward(self, n: int) -> None:
        """``n`` images through the naive model's forward alone, on pre-processed pixels."""
        self._call(("forward", n))

    def close(self) -> None:
        self.conn.send(("stop",))
        self.proc.join(30)


def forward_only(fn: Callable[[torch.Tensor], object], px: torch.Tensor, n: int, batch: int, dev: torch.device) -> None:
    """``n`` images through ``fn`` in batches of ``batch``, cycling the pre-decoded batch ``px``."""
    with torch.inference_mode():
        x = px[:batch].to(dev)
        done = 0
        while done < n:
            k = min(batch, n - done)
            fn(x[:k])
            done += k
    _sync(dev)


def median_rate(times: list[float], n: int) -> tuple[float, float, float]:
    rates = [n / t for t in times]
    return statistics.median(rates), min(rates), max(rates)


def run_rounds(methods: dict[str, Callable[[], object]], rounds: int, dev: torch.device) -> dict[str, list[float]]:
    """Seconds per method per round; methods take turns so machine load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    return times


def relevance_rates(encoder: ClipEncoder, n: int, batch: int, methods: list[str], rounds: int, naive: bool
                    ) -> list[tuple[str, float, float, float]]:
    """(label, median, min, max img/s) for 17-target relevance, naive vs batched (relevance_speed.run)."""
    from relevance_speed import run

    from asap_core.method.distiller import Distiller, DistillerConfig
    from asap_core.method.relevance import AttentionRelevance

    dev = encoder.device
    torch.manual_seed(0)
    proj = torch.linalg.qr(torch.randn(encoder.embed_dim, 256))[0].T  # [256, D], orthonormal rows
    dist = Distiller(DistillerConfig(embed_dim=encoder.embed_dim, proj_dim=256), projection=proj).to(dev).eval()
    px = torch.randn(n, 3, encoder.image_size, encoder.image_size)
    rows = []
    for method in methods:
        explainer = AttentionRelevance(encoder, dist, method)
        run(explainer, px[:min(batch, 2)], batch, naive=False)  # warm-up
        fns = {}
        if naive:
            fns[f"{method}: naive, 17 passes, bs {batch}"] = lambda e=explainer: run(e, px, batch, naive=True)
        fns[f"{method}: batched VJP, bs {batch}"] = lambda e=explainer: run(e, px, batch, naive=False)
        if method == "last-block":
            fns[f"{method}: from kept layer input (analyze), bs {max(LAST_INPUT_BATCH, batch)}"] = \
                kept_input_pass(encoder, dist, px, batch)
        times = run_rounds(fns, rounds, dev)
        rows += [(k, *median_rate(v, n)) for k, v in times.items()]
    return rows


def kept_input_pass(encoder: ClipEncoder, dist, px: torch.Tensor, batch: int):
    """The relevance pass of ``analyze --relevance last-block`` as a timed function: maps for ``px``'s
    images from the last-layer inputs the embedding pass kept (float16 Parquet rows, computed here once,
    untimed), read back from disk, through ``relevance_store.compute_missing_maps``, into a fresh map store."""
    import tempfile
    import uuid

    import pandas as pd

    from asap_core.method.relevance_store import N_TARGETS, compute_missing_maps
    from asap_core.storage.cache import RowStore

    root = Path(tempfile.mkdtemp(prefix="kept-inputs-"))
    ids = [f"im{i}" for i in range(len(px))]
    kept = RowStore(root, "kept", (encoder.patch_side ** 2 + 1, encoder.vision_model.config.hidden_size))
    with torch.inference_mode():
        for i in range(0, len(px), 32):
            _, last = encoder.image_forward(px[i:i + 32].to(encoder.device), with_last_input=True)
            kept.put(ids[i:i + 32], last.to("cpu", torch.float16).numpy())
    rows = pd.DataFrame({"image_id": ids, "path": [str(root / "absent.jpg")] * len(ids)})  # never read

    def run_pass() -> None:
        maps = RowStore(root, f"maps-{uuid.uuid4().hex}", (N_TARGETS, encoder.patch_side, encoder.patch_side))
        failures = compute_missing_maps(maps, encoder, dist, rows, "last-block", batch, last_inputs=kept)
        assert not failures and not maps.missing(ids)

    return run_pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="images for the embedding rows (default 512)")
    ap.add_argument("--images", default=None, help="folder of JPEGs (default: synthetic 500x375 in --scratch)")
    ap.add_argument("--scratch", default="/tmp/perf", help="model, images and temporary caches go here")
    ap.add_argument("--model-dir", default=None, help="default: SCRATCH/b32full (created if missing)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="ours: default from free GPU memory / 32 on CPU")
    ap.add_argument("--workers", type=int, default=None,
                    help="ours: decode workers (default: embedding.default_workers)")
    ap.add_argument("--rel-n", type=int, default=None,
                    help="images for the relevance rows (default 16 CPU, 1024 GPU; 0 skips)")
    ap.add_argument("--rel-batch", type=int, default=None, help="relevance batch (default 8 CPU, 128 GPU)")
    ap.add_argument("--rel-methods", default="last-block", help="comma list: last-block,rollout")
    ap.add_argument("--no-naive-relevance", action="store_true", help="skip the 17-pass relevance baseline")
    ap.add_argument("--sweep", action="store_true", help="also time ours for decode workers 0,1,2 x torch threads 1,2")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="CPU: also time ours with bf16 weights (opt-in ASAP_CPU_BF16)")
    ap.add_argument("--compile", action="store_true", help="also time ours with torch.compile (ASAP_COMPILE=1)")
    args = ap.parse_args(argv)

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(Path(args.model_dir) if args.model_dir else scratch / "b32full")
    paths = image_paths(args)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    naive = NaiveProcess(model_dir, dev, paths[:NAIVE_BATCH])
    encoder = ClipEncoder.from_pretrained(str(model_dir), device=str(dev))
    from asap_core.model.device import choose_batch_size, configure_threads

    configure_threads(dev)
    bs = choose_batch_size(encoder, args.batch_size)
    kind = resolve_decoder("auto", dev)
    workers = default_workers(kind) if args.workers is None else args.workers
    from PIL import Image

    size = Image.open(paths[0]).size
    print(f"device: {device_name(dev)}   torch {torch.__version__}   images: {len(paths)} JPEG "
          f"({size[0]}x{size[1]} first)   model: ViT-B/32 architecture, random weights ({model_dir})")
    print(f"ours: {str(encoder.dtype).replace('torch.', '')}, batch {bs}, decoder {kind} x{workers}   "
          f"naive: {naive.processor_name} + CLIPModel fp32, batch {NAIVE_BATCH} (own process)   rounds: {args.rounds}")

    # warm-up (allocators, lazy kernels, nvJPEG handles) and the equality check: same weights, same pixels
    warm = paths[:min(len(paths), 2 * max(bs, NAIVE_BATCH))]
    a = naive.pipeline(warm)
    b = ours_pipeline(encoder, warm, bs, workers, scratch)
    cos = float((a * b).sum(1).min())
    print(f"check: min cosine(naive, ours) over {len(warm)} images = {cos:.6f}")

    px = torch.from_numpy(encoder.preprocessor.batch([Image.open(p).convert("RGB") for p in paths[:bs]]))
    if len(px) < bs:
        px = px.repeat((bs + len(px) - 1) // len(px), 1, 1, 1)[:bs]
    n = len(paths)
    methods = {
        "naive": lambda: naive.pipeline(paths),
        "ours": lambda: ours_pipeline(encoder, paths, bs, workers, scratch),
        "ours fwd": lambda: forward_only(encoder.encode, px, n, bs, dev),
        "naive fwd": lambda: naive.forward(n),
    }
    from asap_core.model.device import compiled_forward, cxx_compiler

    if args.compile and (dev.type == "cuda" or cxx_compiler()):
        t0 = time.perf_counter()
        compiled = compiled_forward(encoder.image_forward, bs)
        with torch.inference_mode():
            compiled(px.to(dev))
        _sync(dev)
        compile_s = time.perf_counter() - t0
        print(f"compile: first call of the compiled forward took {compile_s:.1f} s "
              f"(one-off per process; inductor's disk cache shortens later ones)")
        c = float((a * ours_pipeline(encoder, warm, bs, workers, scratch, compile=True)).sum(1).min())
        print(f"check: min cosine(naive, ours compiled) = {c:.6f}")
        methods["ours compiled"] = lambda: ours_pipeline(encoder, paths, bs, workers, scratch, compile=True)
        methods["ours compiled fwd"] = lambda: forward_only(compiled, px, n, bs, dev)
    bf16 = None
    if args.cpu_bf16 and dev.type == "cpu":
        bf16 = ClipEncoder.from_pretrained(str(model_dir), device="cpu", dtype=torch.bfloat16)
        c = float((a * ours_pipeline(bf16, warm, bs, workers, scratch)).sum(1).min())
        print(f"check: min cosine(naive fp32, ours bf16) = {c:.6f}")
        methods["ours bf16"] = lambda: ours_pipeline(bf16, paths, bs, workers, scratch)
        methods["ours bf16 fwd"] = lambda: forward_only(bf16.encode, px, n, bs, dev)
    print("timing the embedding rows ...")
    times = run_rounds(methods, args.rounds, dev)
    r = {k: median_rate(v, n) for k, v in times.items()}
    naive_rate, fwd_rate = r["naive"][0], r["ours fwd"][0]
    dt = dtype_name(encoder.dtype)
    rows = [
        (f"(a) naive: CLIPImageProcessor + CLIPModel fp32, bs {NAIVE_BATCH}", r["naive"], True, False),
        (f"(b) ours: embed_files, {dt}, bs {bs}, {kind} decode x{workers}", r["ours"], True, True),
        (f"    ours: model forward only, pre-decoded, {dt}, bs {bs}", r["ours fwd"], True, True),
        (f"    naive: model forward only, pre-decoded, fp32, bs {NAIVE_BATCH}", r["naive fwd"], True, False),
    ]

    if "ours compiled" in r:
        rows.append((f"    ours, torch.compile: embed_files, {dt}, bs {bs}, {kind} decode x{workers}",
                     r["ours compiled"], True, r["ours compiled fwd"][0]))
        rows.append((f"    ours, torch.compile: model forward only, {dt}, bs {bs}", r["ours compiled fwd"], True,
                     False))
    if bf16 is not None:
        rows.append((f"    ours, CPU bf16 (opt-in): embed_files, bs {bs}, {kind} decode x{workers}", r["ours bf16"],
                     True, r["ours bf16 fwd"][0]))
        rows.append((f"    ours, CPU bf16 (opt-in): model forward only, bs {bs}", r["ours bf16 fwd"], True, False))

    if args.sweep:
        print("sweep: decode workers x torch threads ...")
        threads_before = torch.get_num_threads()
        for threads in (1, 2):
            for w in (0, 1, 2):
                torch.set_num_threads(threads)
                t = run_rounds({"ours": lambda w=w: ours_pipeline(encoder, paths, bs, w, scratch),
                                "fwd": lambda: forward_only(encoder.encode, px, n, bs, dev)}, args.rounds, dev)
                fwd = median_rate(t["fwd"], n)[0]
                rows.append((f"    sweep: {threads} torch threads, {w} decode workers (fwd {fwd:.1f} img/s)",
                             median_rate(t["ours"], n), True, fwd))
        torch.set_num_threads(threads_before)

    rel_n = args.rel_n if args.rel_n is not None else (1024 if dev.type == "cuda" else 16)
    rel_rows = []
    if rel_n:
        print("timing the relevance rows ...")
        rel_bs = relevance_batch_size(dev, args.rel_batch)
        rel_rows = relevance_rates(encoder, rel_n, rel_bs, args.rel_methods.split(","),
                                   args.rounds, not args.no_naive_relevance)

    rel_labels = [f"(c) relevance, 17 targets, {label}" for label, *_ in rel_rows]
    w = max([66] + [len(label) for label in rel_labels])
    print(f"\n{'step':{w}s} {'img/s':>8s} {'[min-max]':>15s} {'vs naive':>9s} {'of fwd':>7s}")
    for label, (med, lo, hi), show_ratio, show_fwd in rows:
        ratio = f"{med / naive_rate:8.2f}x" if show_ratio else ""
        ref = show_fwd if isinstance(show_fwd, float) else fwd_rate  # sweep rows: their own forward rate
        of_fwd = f"{100 * med / ref:6.0f}%" if show_fwd else ""
        print(f"{label:{w}s} {med:8.1f} {f'[{lo:.1f}-{hi:.1f}]':>15s} {ratio:>9s} {of_fwd:>7s}")
    base = {}
    for text, (label, med, lo, hi) in zip(rel_labels, rel_rows):
        method = label.split(":")[0]
        base.setdefault(method, med)
        ratio = f"{med / base[method]:8.2f}x"
        print(f"{text:{w}s} {med:8.1f} {f'[{lo:.1f}-{hi:.1f}]':>15s} {ratio:>9s}")
    print(f"(median of {args.rounds} rounds; the relevance ratio is against its own naive row)")
    naive.close()
    if "ours compiled" in r:
        eager, comp = r["ours"][0], r["ours compiled"][0]
        with_compile = n / (n / comp + compile_s)
        gain = 1 / eager - 1 / comp  # seconds saved per image
        even = (f"pays for itself from {compile_s / gain:,.0f} images a run" if gain > 0
                else "never pays for itself here (compiled is not faster than eager)")
        print(f"compile counted in: {n} images at {with_compile:.1f} img/s ({with_compile / naive_rate:.2f}x naive); "
              f"the compile {even}")


if __name__ == "__main__":
    main()
