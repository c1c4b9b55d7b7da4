"""CLIP image encoder: loads any Hugging Face CLIP checkpoint (hub id or local directory)."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import ModelLoadError
from ..settings import settings
from ..storage.schema import is_random_clip
from .device import preferred_dtype
from .hints import DEFAULT_MODEL, MissingWeights
from .image_forward import ClipImageForward
from .preprocess import ClipPreprocessor

ATTENTION = "sdpa"  # the one attention policy (model.factory); rollout switches to eager for its call
QUICK_GELU_SCALE = 1.702  # quick_gelu(h) = h * sigmoid(1.702 h)


def resolve_model_id(model: str | None = None) -> str:
    """``model`` if given, else ``$ASAP_MODEL``, else the default ViT-B/32."""
    return model or settings().model or DEFAULT_MODEL


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for, but no CUDA GPU is visible.",
                             "use --device cpu (or auto), or install a CUDA build of torch.")
    return torch.device(device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers a TCP connect within ``timeout`` seconds."""
    s = settings()
    if s.hf_offline:
        return False
    host = s.hf_endpoint.split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _fingerprint(model_dir: Path, model_id: str) -> str:
    """Short hash of the config and the weight files (size + first/last MiB) of a checkpoint."""
    h = hashlib.sha1()
    for f in [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors")), *sorted(model_dir.glob("*.bin"))]:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(size - (1 << 20), 0))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a CLIP checkpoint is, read from its files without building the model.

    ``embed_dim`` (D), ``image_size`` (input side, px), ``patch_side`` (patches per side),
    ``hidden_size`` (d, width of the vision tower's tokens), ``cache_key`` (weights + preprocessing: keys
    every embedding cache), ``source`` (``schema.ENCODER_SOURCES``: "hub", "local", or "random" for a
    randomly initialised CLIP such as the demo's fallback).
    """

    model_id: str
    model_dir: Path
    preprocessor: ClipPreprocessor
    embed_dim: int
    image_size: int
    patch_side: int
    fingerprint: str
    hidden_size: int = 768
    source: str = "hub"

    @property
    def cache_key(self) -> str:
        return hashlib.sha1(f"{self.fingerprint}|{self.preprocessor.version}".encode()).hexdigest()[:16]


def inspect_checkpoint(model: str | None = None) -> CheckpointInfo:
    """Find a checkpoint (local directory, HF cache, or the Hub when reachable) and read its shapes.

    Raises ``MissingWeights`` (a ``ModelLoadError``) with a fix when it cannot be had.
    """
    model_id = resolve_model_id(model)
    local = Path(model_id).expanduser()
    looks_local = local.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if looks_local:
        if not (local / "config.json").is_file():
            raise MissingWeights(f"Model directory '{model_id}' does not exist or has no config.json.")
        model_dir = local.resolve()
        model_id = str(model_dir)
        source = "random" if is_random_clip(model_dir) else "local"
    else:
        cached = _cached_snapshot_dir(model_id)
        if cached is None and not _hub_reachable():
            raise MissingWeights(
                f"Could not load CLIP model '{model_id}': it is not in the local Hugging Face cache "
                "and the Hub cannot be reached (no network).", model_id)
        model_dir = cached if cached is not None else _download(model_id)
        source = "hub"
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MissingWeights(f"{model_dir / 'config.json'} cannot be read ({exc}).", model_id) from None
    vision = cfg.get("vision_config", cfg)
    image_size = int(vision.get("image_size", 224))
    patch_size = int(vision.get("patch_size", 32))
    embed_dim = int(vision.get("projection_dim", cfg.get("projection_dim", 512)))
    return CheckpointInfo(model_id, model_dir, ClipPreprocessor.from_pretrained(model_dir, image_size), embed_dim,
                          image_size, image_size // patch_size, _fingerprint(model_dir, model_id),
                          int(vision.get("hidden_size", 768)), source)


def _download(model_id: str) -> Path:
    """Fetch a checkpoint's config, weights and preprocessor config from the Hub."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:
        raise MissingWeights(f"Could not download CLIP model '{model_id}' ({exc}).", model_id) from None


class ClipEncoder:
    """CLIP vision tower with its projection; returns L2-normalised image embeddings ``[B, D]``.

    Attributes: ``vision_model`` (``CLIPVisionModelWithProjection``; attention maps, relevance),
    ``image_forward`` (``ClipImageForward`` over the same weights: embeddings only, the class token's
    path through the last layer), ``preprocessor``, ``model_id``, ``device``, ``dtype``, ``embed_dim`` (D),
    ``patch_side`` (patches per side).
    """

    def __init__(self, vision_model, info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> None:
        self.vision_model = vision_model.eval().requires_grad_(False)
        self.image_forward = ClipImageForward(self.vision_model).eval()
        self.info = info
        self.preprocessor = info.preprocessor
        self.model_id = info.model_id
        self.device = device
        self.dtype = dtype
        self.embed_dim: int = info.embed_dim
        self.image_size: int = info.image_size
        self.patch_side: int = info.patch_side
        self.cache_key: str = info.cache_key

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str = "auto",
                        dtype: torch.dtype | None = None) -> ClipEncoder:
        """Load a CLIP checkpoint by hub id or local directory (``CLIPModel`` or ``CLIPVisionModelWithProjection``),
        with ``ATTENTION`` (see ``model.factory``: callers get encoders from ``load_encoder``, which caches).

        Raises ``ModelLoadError`` with a fix when the weights cannot be had (offline, no such directory).
        """
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        info = inspect_checkpoint(model)
        dev = resolve_device(device)
        dtype = dtype or preferred_dtype(dev)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            vm = CLIPVisionModelWithProjection.from_pretrained(  # fp32 first: the fold below is exact there
                str(info.model_dir), local_files_only=True, attn_implementation=ATTENTION,
                dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise MissingWeights(f"Could not load CLIP model '{info.model_id}' from {info.model_dir}: {exc}",
                                 info.model_id) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        fold_quick_gelu(vm)
        # transformers wraps PreTrainedModel.to with functools.wraps, whose stub leaves `self` unbound
        return cls(vm.to(dev, dtype), info, dev, dtype)  # type: ignore[arg-type]

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> pixel values ``[B, 3, S, S]`` float32 on CPU."""
        return self.preprocessor(images)

    def embed(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """Differentiable forward: pixel values ``[B, 3, S, S]`` -> normalised embeddings ``[B, D]`` (float32).

        With ``output_attentions`` returns ``(embeds, attentions)``, attentions a tuple of ``[B, H, T, T]``
        (the full Hugging Face forward); without, the embeddings come from ``image_forward`` (same values to
        float rounding, 6.9 % fewer FLOPs for ViT-B/32).
        """
        pixel_values = pixel_values.to(self.device, self.dtype)
        if not output_attentions:
            return torch.nn.functional.normalize(self.image_forward(pixel_values).float(), dim=-1)
        with eager_attention(self.vision_model):
            out = self.vision_model(pixel_values=pixel_values, output_attentions=True)
        return torch.nn.functional.normalize(out.image_embeds.float(), dim=-1), out.attentions

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixel values ``[B, 3, S, S]`` -> normalised embeddings ``[B, D]`` float32 on CPU, no grad."""
        return self.embed(pixel_values).cpu()

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised embeddings ``[B, D]`` float32 on CPU."""
        return self.encode(self.preprocess(images))

    def encode_crops(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images already at the model input size (``preprocessor.crops``) -> embeddings ``[B, D]`` float32."""
        return self.encode(torch.from_numpy(self.preprocessor.crops(images)))


# Serialises the switch below in one process: it mutates a model shared by every caller of load_encoder.
_ATTENTION_LOCK = threading.RLock()


@contextmanager
def eager_attention(vision_model) -> Iterator[None]:
    """Run the block with eager attention (``sdpa`` returns no attention probabilities), then switch back.

    The one exception to the ``ATTENTION`` policy: for full attention maps (rollout relevance,
    ``ClipEncoder.embed(..., output_attentions=True)``). Holds a process-wide lock for the block; a plain
    ``encode`` running at the same time in another thread merely runs eager (same numbers, slower).
    """
    with _ATTENTION_LOCK:
        previous = vision_model.config._attn_implementation
        if previous == "eager":
            yield
            return
        vision_model.set_attn_implementation("eager")
        try:
            yield
        finally:
            vision_model.set_attn_implementation(previous)


def fold_quick_gelu(vision_model) -> int:
    """Rewrite every ``fc2(quick_gelu(fc1(x)))`` MLP of a CLIP vision tower as ``fc2'(silu(fc1'(x)))``, in place.

    ``quick_gelu(h) = h * sigmoid(1.702 h) = silu(1.702 h) / 1.702``, so scaling ``fc1`` (weight and bias)
    by 1.702 and ``fc2``'s weight by 1 / 1.702 gives the same function with one fused ``silu`` kernel
    instead of three element-wise passes over ``[B, T, 4 D]`` (mul, sigmoid, mul): fewer passes in the
    forward, fewer saved tensors in the relevance backward. Outputs agree to float rounding. Call it on
    fp32 weights. Returns the number
    of MLPs rewritten (0 for models with another activation, which are left as they are).
    """
    from transformers.activations import QuickGELUActivation

    done = 0
    for module in vision_model.modules():
        act = getattr(module, "activation_fn", None)
        if not (isinstance(act, QuickGELUActivation) and hasattr(module, "fc1") and hasattr(module, "fc2")):
            continue
        with torch.no_grad():
            module.fc1.weight.mul_(QUICK_GELU_SCALE)
            if module.fc1.bias is not None:
                module.fc1.bias.mul_(QUICK_GELU_SCALE)
            module.fc2.weight.div_(QUICK_GELU_SCALE)
        module.activation_fn = SiLU()
        done += 1
    return done


class SiLU(torch.nn.SiLU):
    """``silu(x)``, written into ``x`` when no autograd graph is being recorded (``no_grad`` /
    ``inference_mode``): the ``[B, T, 4 D]`` output of ``fc1`` is read by nothing else, so the forward
    skips allocating and filling a second 20 MB buffer per MLP (ViT-B/32, batch 32). Under autograd it is
    the plain out-of-place ``silu`` (its backward needs the input).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x, inplace=not torch.is_grad_enabled())


def _cached_snapshot_dir(model_id: str) -> Path | None:
    """Local snapshot folder of a hub model in the HF cache, if present."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        return None
