"""Command line: ``asap analyze DATA_DIR --out BUNDLE`` and friends (``info``, ``name``, ``serve``)."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from .analyses.checks_digest import checks_line, read_summary
from .errors import AsapError, InputError
from .hosting import HostedPolicy
from .model import device as model_device
from .model.device import DTYPES
from .serving import DEFAULT_PORT, config_toml, hosted_start_notes, server_options, streamlit_command
from .settings import settings
from .storage import schema as S
from .storage.bundle import Bundle
from .storage.labels import dimension_labels
from .views.trust import encoder_source, notices, trust_notices

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .pipeline.analyze import AnalyzeReport


class TqdmProgress:
    """``progress(stage, done, total)`` drawing one tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            if total == 0:
                return
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>9}", unit="img", dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asap",
                                description="ASAP Explorer: see why AI-generated images look fake.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="analyse an image folder into a bundle the explorer opens",
                       description="Scan DATA_DIR, embed with CLIP (cached), learn 16 authenticity dimensions, "
                                   "lay images out in cells and write the bundle.")
    a.add_argument("data_dir", help="image folder (real/ + fake/<generator>/, 0_real/1_fake, nature/ai, "
                                    "REAL/FAKE) or a CSV manifest path,label[,generator][,split]")
    a.add_argument("--out", required=True, help="bundle folder to write (replaced atomically if it exists)")
    a.add_argument("--model", default=None, help="HF CLIP id or local directory (default: $ASAP_MODEL or "
                                                 "openai/clip-vit-base-patch32)")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a.add_argument("--batch-size", type=int, default=None,
                   help="images per model call (default: from free GPU memory; 32 on CPU)")
    a.add_argument("--workers", type=int, default=None,
                   help="decode workers (default: on CPU one thread per core, decoding each batch while the model "
                        "waits; on a GPU, nvJPEG or 1 process per core but one, running ahead)")
    a.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="model precision (auto: bfloat16 on GPU, float32 on CPU unless ASAP_CPU_BF16=1); bfloat16 is "
                        "much faster on CPUs with bf16 units, its embeddings differ slightly and are cached apart")
    a.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the CLIP forward (default: $ASAP_COMPILE, off): a one-off compile and more "
                        "memory, then a faster forward on some CPUs; pays on long runs (benchmarks/RESULTS.md)")
    a.add_argument("--relevance", default=S.NO_RELEVANCE, choices=[S.NO_RELEVANCE, *S.RELEVANCE_METHODS],
                   help="precompute relevance maps for every image")
    a.add_argument("--grid", type=int, default=None,
                   help="cells per side of the overview (default: chosen so a cell holds about 10 images)")
    a.add_argument("--projection", default=None, help="vision-only projection matrix file (.safetensors/.npy/.pt)")
    a.add_argument("--distiller", default=None, help="apply the distiller of this bundle instead of training one")
    a.add_argument("--cache-dir", default=None,
                   help="cache folder (default: $ASAP_CACHE_DIR or ~/.cache/asap_explorer)")
    a.add_argument("--engine", default="local",  # checked by AnalyzeOptions.check (pipeline.analyze.ENGINES)
                   help="where hashing, decoding, the CLIP forward and relevance maps run: local (this process) or "
                        "ray (a pool of Ray Data actors; pip install -e '.[ray]'); same cache either way")
    a.add_argument("--ray-address", default=None,
                   help="with --engine ray: the cluster to join, e.g. ray://head:10001 or auto (default: start a "
                        "local one); images and model must be at the same paths on every node")
    a.add_argument("--from-embeddings", action="store_true",
                   help="DATA_DIR is a table (.parquet or .csv: image_id, path, label[, generator][, split]) of images "
                        "whose embeddings and thumbnails are already in the cache (same --model, --dtype, "
                        "--cache-dir): no scan, no hashing, no embedding; the later stages as usual (docs/scale.md)")
    a.add_argument("--faithfulness", type=int, default=0, metavar="N",
                   help="check the relevance maps on a seeded sample of N labelled images (both classes): deletion / "
                        "insertion curves against random, and the weight-randomisation sanity check; stored in the "
                        "bundle's cache for the app (default 0: off)")
    i = sub.add_parser("info", help="print what a bundle holds")
    i.add_argument("bundle")
    add_name_parser(sub)
    s = sub.add_parser("serve", help="serve the explorer (strict public options when ASAP_HOSTED=1)",
                       description="Run `streamlit run streamlit_app.py` with the options asap_core.serving derives "
                                   "from the settings: headless, no file watcher; in hosted mode also no error "
                                   "details for visitors, a minimal toolbar and uploads capped at ASAP_MAX_UPLOAD_MB.")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    s.add_argument("--address", default=None,
                   help="interface to listen on, e.g. 127.0.0.1 or 0.0.0.0 (default: Streamlit's, all of them)")
    s.add_argument("--print-config", action="store_true",
                   help="print the options as a .streamlit/config.toml (for hosts that run `streamlit run` "
                        "themselves) instead of serving")
    return p


def cmd_analyze(args: argparse.Namespace) -> int:
    # the pipeline imports torch: `--help`, `info`, `name` and `serve` run without it
    from .pipeline.analyze import AnalyzeOptions, analyze, analyze_embeddings

    opts = AnalyzeOptions(model=args.model, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                          compile=args.compile, dtype=args.dtype,
                          relevance=args.relevance, grid=args.grid, projection_file=args.projection,
                          distiller=args.distiller, cache_dir=args.cache_dir, engine=args.engine,
                          ray_address=args.ray_address, faithfulness=args.faithfulness)
    bars = TqdmProgress()
    t0 = time.perf_counter()
    try:
        run = analyze_embeddings if args.from_embeddings else analyze
        report = run(args.data_dir, args.out, opts, progress=bars)
    finally:
        bars.close()
    print(analyze_text(report))
    print(f"Total: {time.perf_counter() - t0:.1f}s")
    tip = cpu_speed_tip(args.device, args.dtype, bool(args.compile), report.timings.get("embed", 0.0))
    if tip:
        print(tip)
    return 0


def analyze_text(report: AnalyzeReport, where: str = "cli") -> str:
    """``analyze``'s summary, then what its figures are worth (``views.trust`` notices, fixes worded for
    ``where``: ``model.hints.WHERES``)."""
    return "\n".join([report.summary(), *(n.line() for n in notices(report.encoder_source, report.metrics, where))])


def cpu_speed_tip(device: str, dtype: str, compiled: bool, embed_seconds: float,
                  min_seconds: float = 30.0) -> str | None:
    """After a long embedding run on CPU: the options that would have made it faster here, else None.

    ``--compile`` where a C++ compiler exists and it was off; ``--dtype bfloat16`` on a float32 run where
    the CPU multiplies bf16 in hardware (``avx512_bf16`` / AMX).
    """
    # torch only after a run that imported it already: the other commands run without it
    import torch

    from .model.encoder import resolve_device

    dev = resolve_device(device)
    if dev.type != "cpu" or embed_seconds < min_seconds:
        return None
    options = []
    if not compiled and model_device.cxx_compiler():
        options.append("`--compile` (a one-off compile, then a faster forward; same embeddings to float rounding)")
    if model_device.resolve_dtype(dtype, dev) == torch.float32 and model_device.cpu_has_native_bf16():
        options.append("`--dtype bfloat16` (this CPU multiplies bf16 in hardware; embeddings differ slightly from "
                       "float32 and are cached separately)")
    return "Tip: to embed faster on this CPU, " + "; ".join(options) + "." if options else None


def cmd_info(args: argparse.Namespace) -> int:
    b = Bundle.open(args.bundle, read_tables=True)  # every table read: a damaged file exits 2 here, named
    c, enc = b.counts, b.encoder_info
    print(f"{b.path}: {c.used} images ({c.real} real, {c.fake} fake), {c.cells} cells; encoder {enc.model_id} "
          f"({enc.dtype}), source {encoder_source(enc)}; layout {b.layout}")
    val = b.metrics.get("val")
    if val:
        print(f"validation accuracy {_figure(val.get('accuracy'))}, AP {_figure(val.get('ap'))}, "
              f"ROC-AUC {_figure(val.get('roc_auc'))}")
    print(f"skipped files: {len(b.skipped)}")
    try:
        checks = read_summary(b)
        line = checks_line(checks) if checks else None
    except Exception:
        line = "Explanation checks: the stored digest cannot be read (run `analyze --faithfulness N` again)."
    if line:
        print(line)
    for notice in trust_notices(b, where="cli"):
        print(notice.line())
    return 0


def _figure(value) -> str:
    """A metric as ``info`` prints it: three decimals, "n/a" when missing."""
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def add_name_parser(sub) -> None:
    """``name BUNDLE [DIM [NAME | --clear]]``: name a dimension of a bundle (for operators of a hosted explorer,
    whose visitors read names but cannot write them)."""
    n = sub.add_parser("name", help="name a dimension of a bundle (shown in every view, link and export)",
                       description="Name dimension DIM (0..15) of BUNDLE, or clear its name with --clear; "
                                   "without DIM, print the dimensions and their names.")
    n.add_argument("bundle")
    n.add_argument("dim", type=int, nargs="?", default=None, help=f"dimension, 0..{S.N_DIMS - 1}")
    n.add_argument("name", nargs="?", default=None,
                   help=f"a short name (at most {S.MAX_DIMENSION_NAME} characters), e.g. \"smooth skin\"")
    n.add_argument("--clear", action="store_true", help="remove the name of DIM")


def cmd_name(args: argparse.Namespace) -> int:
    b = Bundle.open(args.bundle)
    if args.dim is None:
        if args.name is not None or args.clear:
            raise InputError("name: a NAME or --clear needs a DIM.", "run `asap name BUNDLE DIM NAME`.")
        names = b.dimension_names
    else:
        if args.clear == (args.name is not None):
            raise InputError("name: give either a NAME or --clear.",
                             'run `asap name BUNDLE DIM "NAME"` or `... name BUNDLE DIM --clear`.')
        names = b.set_dimension_name(args.dim, None if args.clear else args.name)
    for label in dimension_labels(names):
        print(label)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Print the config, or replace this process with the ``streamlit run`` of ``asap_core.serving``."""
    s = settings()
    if args.print_config:
        print(config_toml(server_options(s)), end="")
        return 0
    if s.hosted:
        policy = HostedPolicy.from_settings(s)  # InputError now, not on the first visit, when the root is unset
        if not policy.list_bundles():
            print(f"warning: no bundles (sub-folders with a bundle.json) under ASAP_BUNDLE_ROOT={policy.bundle_root}; "
                  "visitors will have nothing to open.", file=sys.stderr)
        for note in hosted_start_notes(s):
            print(f"note: {note}", file=sys.stderr)
    argv = streamlit_command(s, port=args.port, address=args.address)
    print(shlex.join(argv), file=sys.stderr, flush=True)
    sys.stdout.flush()
    if os.name == "nt":  # no exec on Windows: run it as a child
        return subprocess.call(argv)
    os.execv(argv[0], argv)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"analyze": cmd_analyze, "info": cmd_info, "name": cmd_name, "serve": cmd_serve}[args.command](args)
    except AsapError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished batches are cached; run the same command again to resume.", file=sys.stderr)
        return 130
