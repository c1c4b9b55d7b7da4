"""Device helpers for the model stage: cores, torch threads, batch size from free GPU memory, compile.

Nothing here changes numbers on CPU by default: fp32 stays fp32 (bf16 only with ``ASAP_CPU_BF16=1``,
see ``preferred_dtype``), and ``torch.compile`` is opt-in (``ASAP_COMPILE=1`` or ``compile=True``).
On a GPU the encoder runs in bf16; these helpers pick a batch size that fits in the free memory and
stage host -> device copies through pinned memory so that they overlap with the model.
"""
from __future__ import annotations

import os
import platform
import shutil
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InputError
from ..settings import settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from .image_forward import ClipImageForward

MALLOC_KEEP_BYTES = 256 << 20
CPU_BATCH_SIZE = 32
GPU_MAX_BATCH = 1024


def cpu_cores() -> int:
    """Cores this process may run on (``sched_getaffinity``; containers often allow fewer than ``cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def configure_threads(device: torch.device | str, num_threads: int | None = None) -> int:
    """On CPU, torch intra-op threads: ``num_threads`` if given, else torch's own count (physical cores,
    or what ``torch.set_num_threads`` / ``OMP_NUM_THREADS`` chose) capped at the cores this process may
    use (containers often allow fewer than torch sees). Returns the count in effect.

    A no-op returning the current count on a GPU (the host threads only feed the device).
    """
    import torch

    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    n = num_threads or min(torch.get_num_threads(), cpu_cores())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_MALLOC_STATE: dict[str, bool] = {}


def keep_freed_memory(device: torch.device | str, limit_bytes: int = MALLOC_KEEP_BYTES) -> bool:
    """CPU model on Linux/glibc: let ``malloc`` serve blocks up to ``limit_bytes`` from its heap and keep
    up to ``limit_bytes`` of freed memory, instead of handing large blocks back to the kernel at once.

    Why: glibc returns large freed blocks (each ``[32, 50, 3072]`` fp32 MLP activation of a ViT-B/32
    batch is 20 MB) to the kernel, so the next batch's tensors of the same size fault in fresh zeroed
    pages, which costs a measurable share of the forward (benchmarks/RESULTS.md). Process-wide (``mallopt``),
    applied once; the cost is up to ``limit_bytes`` of RSS not returned after a peak. ``$ASAP_MALLOC_KEEP=0``
    turns it off; a no-op on a GPU and where glibc is absent (macOS, Windows, musl). Returns whether it is
    in effect.
    """
    import torch

    if torch.device(device).type != "cpu" or not settings().malloc_keep:
        return _MALLOC_STATE.get("on", False)
    if "on" not in _MALLOC_STATE:
        _MALLOC_STATE["on"] = _mallopt_keep(limit_bytes)
    return _MALLOC_STATE["on"]


def _mallopt_keep(limit_bytes: int) -> bool:
    """``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)`` to ``limit_bytes``; True if both took."""
    if platform.system() != "Linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl has mallopt with other semantics)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, int(limit_bytes)) and libc.mallopt(m_trim_threshold, int(limit_bytes)))


def device_name(device: torch.device | str) -> str:
    """Human-readable name: the GPU's name, or the CPU model with its core and thread counts."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU {model} ({cpu_cores()} cores, torch {torch.get_num_threads()} threads)"


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def preferred_dtype(device: torch.device | str) -> torch.dtype:
    """Model dtype: bf16 on CUDA; fp32 on CPU, unless ``$ASAP_CPU_BF16=1`` and the CPU has native bf16.

    CPU bf16 is opt-in because it changes the embeddings slightly; where the CPU has ``avx512_bf16`` /
    AMX it makes the ViT forward much faster (``benchmarks/embed_speed.py --cpu-bf16``).
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if settings().cpu_bf16 and cpu_has_native_bf16() else torch.float32


def cxx_compiler() -> str | None:
    """Path of the C++ compiler ``torch.compile`` needs on CPU (``$CXX``, ``c++``, ``g++``, ``clang++``), or None."""
    for name in (settings().cxx, "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


DTYPES = ("auto", "float32", "bfloat16")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the name used in cache keys, bundle metadata and tables."""
    return str(dtype).replace("torch.", "")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """``None`` / ``"auto"`` -> ``preferred_dtype(device)``; ``"float32"`` / ``"bfloat16"`` (or a torch dtype) as given.

    Raises ``InputError`` naming the choices for anything else.
    """
    import torch

    if dtype is None or dtype == "auto":
        return preferred_dtype(device)
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.bfloat16):
        return dtype
    if dtype in ("float32", "bfloat16"):
        return getattr(torch, dtype)
    raise InputError(f"dtype {dtype!r} is not supported.", f"use one of {', '.join(DTYPES)}.")


def compile_enabled(compile: bool | None = None) -> bool:
    """``compile`` if given, else ``$ASAP_COMPILE`` in (1, true, yes, on). Off by default everywhere.

    Why off (``benchmarks/embed_speed.py --compile``): on CPU the compiled forward gains on some machines
    and nothing on others, after a one-off compile that costs time and memory, so it pays only on long
    runs; on a GPU the decoder, not the model, bounds the end-to-end rate (docs/design.md §6).
    ``cli.cpu_speed_tip`` suggests it after long CPU runs.
    """
    if compile is not None:
        return bool(compile)
    return settings().compile


def compiled_forward(image_forward: ClipImageForward, batch_size: int, with_last_input: bool = False
                     ) -> Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]:
    """``pixels [n, 3, S, S]`` (any float dtype) ``-> image_embeds [n, D]`` (the model's dtype) through
    ``torch.compile(image_forward)`` (``ClipEncoder.image_forward``); with ``with_last_input``
    ``-> (image_embeds [n, D], last layer's input [n, T, d])`` (see ``ClipImageForward.forward``).

    The module itself is left untouched. Every call is padded to ``batch_size`` rows so that one static
    graph serves the whole run (no recompile on the last batch). If compiling fails (no C++ compiler, an
    unsupported platform) the first call warns once and the run goes on with the eager module.

    On CPU the graph is compiled with inductor's ``freezing`` (weights as constants, prepacked for
    oneDNN, bias and activation fused into the matrix products), the fastest of the variants measured;
    embeddings equal eager ones to float rounding. Needs inference mode (``embed_files`` runs in it).
    """
    import contextlib

    import torch

    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = torch.compile(image_forward, dynamic=False)
    ok = False  # a compiled call has succeeded: later failures are real errors, not a missing compiler
    on_cpu = next(image_forward.parameters()).device.type == "cpu"

    def options():
        if not on_cpu:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)  # read when the graph compiles (the first call)

    def forward(pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        nonlocal fn, ok
        n = pixels.shape[0]
        if n < batch_size:
            pad = pixels.new_zeros((batch_size - n, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        try:
            with options():
                out = _rows(fn(pixels, with_last_input=with_last_input), n)
        except Exception as exc:
            if ok:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          f"running the model uncompiled. Set ASAP_COMPILE=0 to skip the attempt.", RuntimeWarning,
                          stacklevel=2)
            fn = image_forward
            out = _rows(image_forward(pixels, with_last_input=with_last_input), n)
        ok = True
        return out

    return forward


def _rows(out: torch.Tensor | tuple[torch.Tensor, ...], n: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The first ``n`` rows of a tensor or of each tensor of a tuple (drops the padding)."""
    return tuple(t[:n] for t in out) if isinstance(out, tuple) else out[:n]


def gpu_batch_size(vision_model, image_size: int, device: torch.device, dtype: torch.dtype,
                   memory_fraction: float = 0.5, max_batch: int = GPU_MAX_BATCH, probe: int = 8) -> int:
    """Largest power of two ``<= max_batch`` whose inference activations fit in ``memory_fraction`` of the
    free GPU memory, measured with one probe forward of ``probe`` images (peak bytes per image)."""
    import torch

    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.zeros(probe, 3, image_size, image_size, device=device, dtype=dtype)
    with torch.inference_mode():
        vision_model(pixel_values=x)
    torch.cuda.synchronize(device)
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    del x
    budget = int(free * memory_fraction) // per_image
    bs = 1
    while bs * 2 <= min(budget, max_batch):
        bs *= 2
    return max(1, bs)


def choose_batch_size(encoder, requested: int | None = None) -> int:
    """``requested`` when given; else from free memory on a GPU, ``CPU_BATCH_SIZE`` (32) on CPU."""
    if requested:
        return int(requested)
    if encoder.device.type == "cuda":
        try:
            return gpu_batch_size(encoder.vision_model, encoder.image_size, encoder.device, encoder.dtype)
        except RuntimeError:  # e.g. out of memory already at the probe
            return 64
    return CPU_BATCH_SIZE


CPU_RELEVANCE_BATCH = 8
GPU_RELEVANCE_BATCH = 128


def relevance_batch_size(device: torch.device | str, requested: int | None = None) -> int:
    """Images per batched relevance VJP: ``requested``, else 128 on a GPU and 8 on CPU (docs/design.md §6).

    On CPU rollout is faster and lighter at 8 than at 32 (its 17 cotangents go back through every layer);
    last-block, which backpropagates through one token of one layer, runs alike at both
    (``benchmarks/relevance_speed.py --no-naive``).
    """
    import torch

    if requested:
        return int(requested)
    return GPU_RELEVANCE_BATCH if torch.device(device).type == "cuda" else CPU_RELEVANCE_BATCH


def to_device(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> ``device``; on CUDA through pinned memory with a non-blocking copy.

    The returned tensor is ordered on the current stream: kernels launched after it see the data.
    The pinned staging copy is kept alive by the caching host allocator until the copy has run.
    """
    if device.type != "cuda":
        return pixels.to(device)
    src = pixels if pixels.is_pinned() else pixels.pin_memory()
    return src.to(device, non_blocking=True)


def to_pinned_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """A CUDA tensor -> a pinned host copy, queued on the current stream (non-blocking: record an event and
    synchronise it before reading). ``None`` stays ``None``."""
    if t is None:
        return None
    import torch

    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


__all__ = ["CPU_BATCH_SIZE", "CPU_RELEVANCE_BATCH", "DTYPES", "GPU_RELEVANCE_BATCH",
           "choose_batch_size", "compile_enabled", "compiled_forward", "configure_threads", "cpu_cores",
           "cpu_has_native_bf16", "cxx_compiler", "device_name", "dtype_name", "gpu_batch_size",
           "keep_freed_memory", "preferred_dtype", "relevance_batch_size", "resolve_dtype", "to_device",
           "to_pinned_host"]
