"""The whole ``analyze`` against the naive embedding alone, in one run (the aim: at most 1.25x).

Same JPEG files, same weights (the random ViT-B/32-architecture ``CLIPModel`` of ``embed_speed``), CPU:

(a) naive: ``embed_speed``'s loop (``PIL`` + ``CLIPImageProcessor`` + ``CLIPModel.get_image_features`` fp32,
    batch 32) in a Python process of its own, the model already loaded: the embedding alone;
(b) ``asap_core.pipeline.analyze.analyze`` on the same folder (``real/`` and ``fake/`` halves), a fresh
    empty cache and a fresh bundle each round, ``--relevance`` off (the default): scan, hash, embed,
    projection (the texted copies' second forward over a sample), distiller training, t-SNE layout, write.
    The model is loaded once by a warm-up run on a few images (``factory.load_encoder`` keeps it), as the
    naive process loads its model once; so neither side's timed rounds include loading the model.

    python benchmarks/analyze_overhead.py                     # 300 synthetic 500x375 JPEGs, 3 rounds
    python benchmarks/analyze_overhead.py --width 1024 --height 768   # larger photos: decode weighs more
    python benchmarks/analyze_overhead.py --images DIR --n 300
    python benchmarks/analyze_overhead.py --quality /work/shared/data/faces140k_subset   # accuracy, text subspace

Each round times (a) then (b) once per ``--projection-samples`` setting; the ratio is taken per round (both
sides under the same machine load) and the table gives every round and the median, with the seconds per stage
of ``analyze`` (``AnalyzeReport.timings``). Images: ``--images DIR`` (JPEGs, the first ``--n`` sorted, split into halves
labelled real and fake by symlinks), else ``--n`` synthetic camera-like JPEGs (mosaics of the face crops
under /work/shared/data when present, ``--width`` x ``--height``, quality 90) written once into ``--scratch``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_speed import NAIVE_BATCH, NaiveProcess, ensure_images, ensure_model


def labelled_folder(root: Path, files: list[str]) -> list[str]:
    """``root/real`` and ``root/fake`` holding symlinks to the first and second half of ``files``; returns
    the link paths in the order of ``files`` (the naive side reads the same bytes)."""
    if root.exists():
        shutil.rmtree(root)
    out = []
    for i, f in enumerate(files):
        sub = root / ("real" if i < len(files) // 2 else "fake")
        sub.mkdir(parents=True, exist_ok=True)
        link = sub / f"{i:05d}{Path(f).suffix.lower()}"
        os.symlink(os.path.abspath(f), link)
        out.append(str(link))
    return out


def source_files(args) -> list[str]:
    if args.images:
        files = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if len(files) < args.n:
            sys.exit(f"{len(files)} JPEG files under {args.images}, --n {args.n} asked")
        return files[:args.n]
    name = "jpg500" if (args.width, args.height) == (500, 375) else f"jpg{args.width}x{args.height}"  # embed_speed's
    return ensure_images(Path(args.scratch) / name, args.n, args.width, args.height)


def run_analyze(folder: Path, model_dir: Path, scratch: Path, samples: int | None = None):
    """One ``analyze`` of ``folder`` into a fresh cache and bundle (both removed after); its report."""
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze

    work = Path(tempfile.mkdtemp(prefix="analyze-overhead-", dir=scratch))
    opts = AnalyzeOptions(model=str(model_dir), device="cpu", cache_dir=str(work / "cache"),
                          projection_samples=samples)
    try:
        return analyze(folder, work / "bundle", opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quality(folder: Path, model_dir: Path, scratch: Path, n_each: int, seeds: int = 3) -> None:
    """Validation accuracy / ROC-AUC of the distiller and the written subspace the projection found, for
    ``projection_samples`` 128 and the default, seeds 0 .. ``seeds - 1`` (each seed: another sample, split
    and training order), on ``n_each`` images of each of ``folder``'s ``real/`` and ``fake/`` (one cache: the
    embeddings are computed once). Subspace overlap: mean squared cosine of the principal angles between
    two sets of 8 text directions (1: the same subspace); the default's against 128 images' of the same
    seed, next to two 128-image samples (seeds s and s + 1) against each other."""
    from asap_core.method.projection import VisionOnlyProjection
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.pipeline.stages import model_dir as bundle_model

    files = [sorted(str(p) for p in (folder / side).rglob("*.jpg"))[:n_each] for side in ("real", "fake")]
    sub = scratch / f"analyze-quality-{os.getpid()}"
    labelled_folder(sub, files[0] + files[1])
    work = Path(tempfile.mkdtemp(prefix="analyze-quality-", dir=scratch))
    text, scores = {}, {}
    try:
        for seed in range(seeds):
            for samples in (128, None):
                opts = AnalyzeOptions(model=str(model_dir), device="cpu", cache_dir=str(work / "cache"),
                                      projection_samples=samples, random_state=seed)
                report = analyze(sub, work / f"bundle-{seed}-{samples}", opts)
                t = VisionOnlyProjection.from_pretrained(bundle_model(str(report.bundle))).text_components_
                text[(samples, seed)] = t.astype(np.float64)
                val = report.metrics["val"]
                scores.setdefault(samples, []).append((val["accuracy"], val["roc_auc"]))
                print(f"  projection_samples {samples or 'default'}, seed {seed}: {report.n_used} images, val "
                      f"({val['n']}) accuracy {val['accuracy']:.3f} AUC {val['roc_auc']:.3f}", flush=True)
    finally:
        shutil.rmtree(sub, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    def overlap(a, b) -> float:
        return float(np.linalg.norm(a @ b.T) ** 2 / len(a))

    for samples, rows in scores.items():
        acc, auc = np.mean(rows, axis=0)
        print(f"projection_samples {samples or 'default'}: mean over {seeds} seeds accuracy {acc:.3f} AUC {auc:.3f}")
    same = [overlap(text[(None, s)], text[(128, s)]) for s in range(seeds)]
    other = [overlap(text[(128, s)], text[(128, s + 1)]) for s in range(seeds - 1)]
    print("text subspace overlap: default vs 128 (same seed) " + ", ".join(f"{v:.3f}" for v in same)
          + "; 128 vs 128 (next seed) " + ", ".join(f"{v:.3f}" for v in other))
    held = [sorted(str(p) for p in (folder / side).rglob("*.jpg"))[n_each:n_each + 80] for side in ("real", "fake")]
    text_share_curve(files[0] + files[1], held[0] + held[1], model_dir)


def text_share_curve(train: list[str], held: list[str], model_dir: Path, sizes=(16, 32, 48, 64, 96, 128, 256),
                     draws: int = 5) -> None:
    """Prints, per sample size m, the share of the variance of held-out texted-minus-clean differences (160
    images of ``held``, other words) that lies in the 8 text directions fitted on m of 256 differences of
    ``train`` (mean [min-max] over ``draws`` subsamples): the quantity the projection removes. Crops as
    ``analyze`` makes them (``stages._sample_images``); the held-out set's own top 8 is the ceiling."""
    from asap_core.method.projection import render_text
    from asap_core.model.factory import load_encoder
    from asap_core.pipeline.stages import _sample_images

    encoder = load_encoder(str(model_dir), device="cpu", dtype=torch.float32)

    def diffs(paths: list[str], n: int, seed: int) -> np.ndarray:
        _, crops = _sample_images(paths, [None] * len(paths), n, seed, encoder.preprocessor)
        rng = np.random.default_rng(seed)
        with torch.inference_mode():
            out = [encoder.encode_crops([render_text(c, rng) for c in crops[i:i + 32]]).numpy()
                   - encoder.encode_crops(crops[i:i + 32]).numpy() for i in range(0, len(crops), 32)]
        return np.concatenate(out).astype(np.float64)

    fit, test = diffs(train, 256, 0), diffs(held, 160, 99)
    test -= test.mean(0)
    total = float((test ** 2).sum())

    def share(d: np.ndarray) -> float:
        vt = np.linalg.svd(d - d.mean(0), full_matrices=False)[2][:8]
        return float(((test @ vt.T) ** 2).sum()) / total

    print("share of held-out texted-minus-clean variance in 8 text directions fitted on m images "
          f"(a random 8 of {fit.shape[1]}: {8 / fit.shape[1]:.3f}; the held-out set's own top 8: {share(test):.3f}):")
    for m in sizes:
        v = [share(fit[np.random.default_rng(s).permutation(len(fit))[:m]]) for s in range(draws)]
        print(f"  m = {m:3d}: {np.mean(v):.3f} [{min(v):.3f}-{max(v):.3f}]")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def print_table(rounds: list[dict], n: int) -> None:
    stages = [k for k in rounds[0]["timings"]]
    for r in rounds[1:]:
        stages += [k for k in r["timings"] if k not in stages]
    cols = ["naive embed s", "analyze s", "ratio", "load avg"] + stages
    rows = [[f"{r['naive']:.1f}", f"{r['whole']:.1f}", f"{r['whole'] / r['naive']:.2f}x", r["load"]]
            + [f"{r['timings'].get(s, 0.0):.1f}" for s in stages] for r in rounds]
    med = [f"{statistics.median(r['naive'] for r in rounds):.1f}",
           f"{statistics.median(r['whole'] for r in rounds):.1f}",
           f"{statistics.median(r['whole'] / r['naive'] for r in rounds):.2f}x", ""] + \
          [f"{statistics.median(r['timings'].get(s, 0.0) for r in rounds):.1f}" for s in stages]
    print(f" {n} images; per-stage columns are analyze's own timings (seconds)")
    print("| round | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for i, row in enumerate(rows):
        print(f"| {i + 1} | " + " | ".join(row) + " |")
    print("| median | " + " | ".join(med) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="images (default 300)")
    ap.add_argument("--images", default=None, help="folder of JPEGs (default: synthetic in --scratch)")
    ap.add_argument("--width", type=int, default=500, help="synthetic JPEGs (default 500, embed_speed's)")
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--scratch", default="/tmp/perf", help="model, images and temporary caches go here")
    ap.add_argument("--model-dir", default=None, help="default: SCRATCH/b32full (created if missing)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--projection-samples", default="default",
                    help="comma list of AnalyzeOptions.projection_samples to time in each round, 'default' for "
                         "the option's default (stages.projection_sample_size), e.g. 128,default")
    ap.add_argument("--quality", default=None, metavar="DIR",
                    help="instead: accuracy and text subspace for 128 vs the default sample on DIR's real/ and fake/")
    ap.add_argument("--quality-n", type=int, default=150, help="--quality: images of each class (default 150)")
    ap.add_argument("--quality-seeds", type=int, default=3, help="--quality: seeds (default 3)")
    args = ap.parse_args(argv)

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(Path(args.model_dir) if args.model_dir else scratch / "b32full")
    if args.quality:
        quality(Path(args.quality), model_dir, scratch, args.quality_n, args.quality_seeds)
        return
    files = source_files(args)
    folder = scratch / f"analyze-overhead-{os.getpid()}"
    paths = labelled_folder(folder, files)
    warm_folder = scratch / f"analyze-overhead-warm-{os.getpid()}"
    labelled_folder(warm_folder, files[:16])

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dev = torch.device("cpu")
    from PIL import Image

    size = Image.open(paths[0]).size
    print(f"CPU, torch {torch.__version__}, {os.cpu_count()} cores; {len(paths)} JPEG ({size[0]}x{size[1]} first); "
          f"ViT-B/32 architecture, random weights ({model_dir}); load average {load_average()}")
    naive = NaiveProcess(model_dir, dev, paths[:NAIVE_BATCH])
    try:
        naive.pipeline(paths[:2 * NAIVE_BATCH])  # warm-up
        run_analyze(warm_folder, model_dir, scratch)  # loads the model once
        settings = [None if v.strip() == "default" else int(v) for v in args.projection_samples.split(",")]
        rounds = {v: [] for v in settings}
        for r in range(args.rounds):
            t0 = time.perf_counter()
            naive.pipeline(paths)
            t_naive = time.perf_counter() - t0
            for v in settings:
                t0 = time.perf_counter()
                report = run_analyze(folder, model_dir, scratch, v)
                t_whole = time.perf_counter() - t0
                rounds[v].append({"naive": t_naive, "whole": t_whole, "timings": dict(report.timings),
                                  "load": load_average().split()[0]})
                val = report.metrics.get("val", {})
                print(f"  round {r + 1}/{args.rounds}, projection_samples {v or 'default'}: naive {t_naive:.1f}s, "
                      f"analyze {t_whole:.1f}s ({t_whole / t_naive:.2f}x); val accuracy {val.get('accuracy', 0):.3f} "
                      f"AUC {val.get('roc_auc', 0):.3f}", flush=True)
    finally:
        naive.close()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(warm_folder, ignore_errors=True)
    for v, rows in rounds.items():
        print(f"\nprojection_samples {v or 'default (stages.projection_sample_size)'}:", end="")
        print_table(rows, len(paths))


if __name__ == "__main__":
    main()
