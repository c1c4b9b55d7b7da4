"""Relevance maps: where in the image each of the 16 dimensions and the fake logit looks.

Method (docs/design.md §3.6, Chefer et al. 2021 as used in their CLIP code):

- ``last-block``: ``A`` = softmax attention of the last block ``[B, H, T, T]``, ``G = dtarget/dA``;
  ``map = mean_heads(clamp(G * A, min=0))[CLS, 1:]`` reshaped to ``side x side``.
- ``rollout``: ``R = I``; for every block in order ``R = R + mean_heads(clamp(G_l * A_l, min=0)) @ R``;
  ``map = R[CLS, 1:]``.

All targets come from ONE forward pass and ONE batched vector-Jacobian product
(``torch.autograd.grad(..., is_grads_batched=True)``, i.e. ``vmap`` over the backward with the rows
of an identity matrix as cotangents), not one backward per target.

Maps are at patch resolution, row-major in the ViT's patch order: row 0 is the top of the (centre-
cropped) image, column 0 its left. Display helpers (``upsample_map``, ``overlay``) are pure numpy, so
this module imports without torch (torch is imported inside the functions that need it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import InputError
from ..model.device import relevance_batch_size
from ..storage.schema import FAKE_LOGIT, N_DIMS, N_TARGETS, RELEVANCE_METHODS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch



def _check_method(method: str) -> str:
    if method not in RELEVANCE_METHODS:
        raise InputError(f"Unknown relevance method '{method}'.", f"use one of: {', '.join(RELEVANCE_METHODS)}.")
    return method


def _target_indices(target: int | Sequence[int] | None) -> list[int]:
    """``None`` -> all 17; an int or a list of ints in ``[0, 17)`` (16 = fake logit)."""
    if target is None:
        return list(range(N_TARGETS))
    idx = [int(target)] if isinstance(target, (int, np.integer)) else [int(t) for t in target]
    if not idx:
        raise InputError("No relevance target was given.", "pass target=None for all 17, or indices 0..16.")
    bad = [t for t in idx if not 0 <= t < N_TARGETS]
    if bad:
        raise InputError(f"Relevance target(s) {bad} out of range.",
                         f"targets are 0..{N_DIMS - 1} (dimensions) and {FAKE_LOGIT} (fake logit).")
    return idx


class AttentionRelevance:
    """Captum-style attribution of the distiller's outputs to image patches.

    Parameters
    ----------
    encoder : ``ClipEncoder``, the CLIP whose attention is read (``patch_side`` patches per side).
    distiller : ``Distiller``, maps the image embedding to z ``[16]`` and the fake logit.
    method : ``"last-block"`` or ``"rollout"`` (``schema.RELEVANCE_METHODS``).

    Targets 0..15 are the dimensions of z, 16 (``schema.FAKE_LOGIT``) is the fake logit.

    Examples
    --------
    ``AttentionRelevance(encoder, distiller).attribute(pixel_values, target=16)`` -> ``[B, 1, side, side]``.

    ``last-block`` runs ``ClipImageForward.class_token_attention``: the layers before the last without
    autograd, and the backward through one token of the last layer, so it costs little more than an
    inference forward. ``rollout`` runs the Hugging Face forward with eager attention and back-propagates through
    every layer. Memory: the batched VJP holds ``K x B x H x T`` gradients for ``last-block`` and
    ``K x B x H x T x T`` per layer for ``rollout``, e.g. ~1.1 GB per layer on ViT-L/14 (L 24, H 16,
    T 257) at B = 32, K = 17 in bf16: lower the batch size for large models.
    """

    def __init__(self, encoder, distiller, method: str = "last-block") -> None:
        self.encoder = encoder
        self.distiller = distiller
        self.method = _check_method(method)

    def attribute(self, pixel_values: torch.Tensor, target: int | Sequence[int] | None = None) -> torch.Tensor:
        """Relevance maps of the requested targets.

        Parameters
        ----------
        pixel_values : ``[B, 3, S, S]``, as from ``encoder.preprocess``.
        target : one target index, a sequence of K indices, or None for all 17 (dimensions, then fake logit).

        Returns
        -------
        ``[B, K, side, side]`` float32 on CPU, >= 0 (unnormalised); works under ``torch.inference_mode``.
        """
        import torch

        idx = _target_indices(target)
        if pixel_values.ndim != 4:
            raise InputError(f"pixel_values must be [B, 3, S, S], got shape {tuple(pixel_values.shape)}.",
                             "preprocess images with encoder.preprocess(list_of_PIL).")
        side = self.encoder.patch_side
        n = pixel_values.shape[0]
        if n == 0:
            return torch.zeros(0, len(idx), side, side)
        # inference_mode(False): autograd cannot record through inference tensors, so a caller under
        # torch.inference_mode() still gets maps; the input is cloned outside inference mode for that reason.
        with torch.inference_mode(False), torch.enable_grad():
            if self.method == "last-block":  # no switch of the shared model: no lock
                maps = self._attribute(pixel_values, idx)
            else:
                # torch only here: this module's display helpers (overlay, upsample_map) run without it
                from ..model.encoder import eager_attention

                with eager_attention(self.encoder.vision_model):
                    maps = self._attribute(pixel_values, idx)
        return maps.reshape(n, len(idx), side, side)

    def attribute_from_last_input(self, last_input: torch.Tensor, target: int | Sequence[int] | None = None
                                  ) -> torch.Tensor:
        """``attribute`` from the last layer's input ``[B, T, d]`` (any float dtype), as the embedding pass
        kept it (``ClipImageForward.forward(..., with_last_input=True)``): no decode, no layers ``0..L-2``.
        ``last-block`` only (rollout needs every layer's attention). -> ``[B, K, side, side]`` float32, CPU."""
        import torch

        if self.method != "last-block":
            raise InputError(f"relevance from the last layer's input needs method 'last-block', not '{self.method}'.",
                             "call attribute(pixel_values) for rollout maps.")
        idx = _target_indices(target)
        side = self.encoder.patch_side
        if last_input.ndim != 3 or last_input.shape[1] != side * side + 1:
            raise InputError(f"last_input must be [B, {side * side + 1}, d], got shape {tuple(last_input.shape)}.",
                             "pass the second output of image_forward(pixel_values, with_last_input=True).")
        n = last_input.shape[0]
        if n == 0:
            return torch.zeros(0, len(idx), side, side)
        with torch.inference_mode(False), torch.enable_grad():
            h = last_input.detach().to(self.encoder.device).clone()  # clone: out of inference mode
            image_embeds, cls_attention = self.encoder.image_forward.class_token_attention_from(h)
            maps = self._vjp_maps(self._targets(image_embeds, idx), (cls_attention,), len(idx))
        return maps.reshape(n, len(idx), side, side)

    def _targets(self, image_embeds: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """Projected image embeddings ``[B, D]`` -> the requested targets ``[B, K]`` (z dims, fake logit)."""
        import torch

        emb = torch.nn.functional.normalize(image_embeds.float(), dim=-1)  # as ClipEncoder.embed
        dist_dev = next(self.distiller.buffers(), None)
        dist_dev = dist_dev.device if dist_dev is not None else emb.device
        z, logit = self.distiller(emb.to(dist_dev))
        return torch.cat([z, logit[:, None]], dim=1)[:, idx]

    def _forward(self, pixel_values: torch.Tensor, idx: list[int]):
        """One forward pass -> (targets [B, K], attentions in the graph).

        ``last-block``: one tensor ``[B, H, T]``, the class token's attention in the last layer
        (``ClipImageForward.class_token_attention``: layers before it run without autograd). ``rollout``:
        the Hugging Face forward's tuple of ``[B, H, T, T]``, one per layer.
        """
        enc = self.encoder
        px = pixel_values.detach().to(enc.device, enc.dtype)
        if self.method == "last-block":
            image_embeds, cls_attention = enc.image_forward.class_token_attention(px)
            return self._targets(image_embeds, idx), (cls_attention,)
        # The weights are frozen, so nothing would require grad: make the input a grad leaf so that the
        # attention probabilities become (non-leaf) nodes of the graph. Only the paths from the targets to
        # the attentions are back-propagated; no gradient for the pixels is ever computed.
        out = enc.vision_model(pixel_values=px.clone().requires_grad_(True), output_attentions=True)
        attentions = out.attentions
        if not attentions or any(a is None for a in attentions):
            raise RuntimeError("the vision model returned no attention probabilities (needs eager attention)")
        if not all(a.requires_grad for a in attentions):
            raise RuntimeError("the attention probabilities are not part of the autograd graph")
        return self._targets(out.image_embeds, idx), attentions

    def _attribute(self, pixel_values: torch.Tensor, idx: list[int]) -> torch.Tensor:
        targets, inputs = self._forward(pixel_values, idx)
        return self._vjp_maps(targets, inputs, len(idx))

    def _vjp_maps(self, targets: torch.Tensor, inputs: tuple, k: int) -> torch.Tensor:
        """Targets ``[B, K]`` and the attentions they depend on -> maps ``[B, K, T-1]`` (one batched VJP)."""
        import torch

        # cotangents: row j of the identity for every image -> grads[l][j] = d target_j / d A_l
        eye = torch.eye(k, dtype=targets.dtype, device=targets.device)
        grad_outputs = eye[:, None, :].expand(k, targets.shape[0], k).contiguous()
        grads = list(torch.autograd.grad(targets, inputs, grad_outputs=grad_outputs, is_grads_batched=True))
        if self.method == "last-block":
            g, a = grads.pop(), inputs[0].detach()  # [K, B, H, T], [B, H, T]: the CLS row
            cam = (g[..., 1:].float() * a[None, ..., 1:].float()).clamp(min=0).mean(dim=2)  # [K, B, T-1]
        else:
            t = inputs[0].shape[-1]
            r = torch.eye(t, device=inputs[0].device, dtype=torch.float32)
            r = r.expand(k, inputs[0].shape[0], t, t)
            for a in inputs:
                g = grads.pop(0)  # the list lets go of each layer's gradients once used
                cam = (g.float() * a.detach()[None].float()).clamp(min=0).mean(dim=2)  # [K, B, T, T]
                del g
                r = r + cam @ r
            cam = r[..., 0, 1:]
        return cam.transpose(0, 1).contiguous().cpu()  # [B, K, T-1]


def relevance_maps(encoder, distiller, pixel_values: torch.Tensor, method: str = "last-block") -> torch.Tensor:
    """All 17 relevance maps of a batch: ``AttentionRelevance(encoder, distiller, method).attribute(px)``.

    Parameters
    ----------
    encoder : ``ClipEncoder``.
    distiller : ``Distiller``.
    pixel_values : ``[B, 3, S, S]``, as from ``encoder.preprocess``.
    method : ``"last-block"`` or ``"rollout"``.

    Returns
    -------
    ``[B, 17, side, side]`` float32 on CPU: the 16 dimensions of z, then the fake logit. One forward pass and
    one batched VJP; works under ``torch.inference_mode``.
    """
    return AttentionRelevance(encoder, distiller, method).attribute(pixel_values, target=None)


def relevance_for_images(encoder, distiller, images: Sequence[Image.Image], method: str = "last-block",
                         batch_size: int | None = None,
                         progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """PIL images -> relevance maps ``[N, 17, side, side]`` float16, computed ``batch_size`` at a time
    (``None``: ``device.relevance_batch_size``, 8 on CPU, 128 on GPU).

    ``progress(done, total)`` is called after every batch. Raw (unnormalised) values are kept, so maps
    compare across images and targets; values below ~6e-5 become float16 subnormals (coarser steps).
    """
    side = encoder.patch_side
    total = len(images)
    out = np.zeros((total, N_TARGETS, side, side), dtype=np.float16)
    explainer = AttentionRelevance(encoder, distiller, method)
    bs = max(relevance_batch_size(encoder.device, batch_size), 1)
    for start in range(0, total, bs):
        chunk = images[start:start + bs]
        maps = explainer.attribute(encoder.preprocess(chunk), target=None)
        out[start:start + len(chunk)] = maps.numpy().astype(np.float16)
        if progress is not None:
            progress(start + len(chunk), total)
    return out


# ---------------------------------------------------------------- display (numpy only)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for resizing one axis (half-pixel centres, edges clamped)."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, x - i0


def upsample_map(m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map ``[side, side]`` (or ``[h, w]``) to ``[size, size]`` (or ``size=(h, w)``), float32.

    Same convention as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
    """
    m = np.asarray(m, dtype=np.float32)
    if m.ndim != 2:
        raise InputError(f"a relevance map must be 2-D, got shape {m.shape}.", "pass one map, e.g. maps[i, 16].")
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    r0, r1, wr = _bilinear_axis(m.shape[0], int(h))
    c0, c1, wc = _bilinear_axis(m.shape[1], int(w))
    top = m[r0][:, c0] * (1 - wc) + m[r0][:, c1] * wc
    bot = m[r1][:, c0] * (1 - wc) + m[r1][:, c1] * wc
    return (top * (1 - wr[:, None]) + bot * wr[:, None]).astype(np.float32)


def colormap(x: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Values in ``[0, 1]`` ``[...]`` -> RGB uint8 ``[..., 3]``. ``jet`` (blue -> red) or ``gray``."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    if cmap in ("jet", "jet-like"):
        rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3.0, 2.0, 1.0)], axis=-1)
    elif cmap == "gray":
        rgb = np.stack([x, x, x], axis=-1)
    else:
        raise InputError(f"Unknown colour map '{cmap}'.", "use 'jet' or 'gray'.")
    return np.round(rgb * 255).astype(np.uint8)


def _centre_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s))


def overlay(image: Image.Image, m: np.ndarray, alpha: float = 0.5, cmap: str = "jet",
            normalize: bool = True) -> Image.Image:
    """Blend a colour-mapped relevance map over ``image``; returns an RGB PIL image.

    The map covers what CLIP saw, the centre square of the image, so a non-square image is
    centre-cropped to a square first. ``normalize`` rescales the map to ``[0, 1]`` (min-max);
    otherwise values are clipped to ``[0, 1]``. ``alpha`` is the opacity of the map.
    """
    base = _centre_square(image.convert("RGB"))
    m = np.asarray(m, dtype=np.float32)
    if normalize:
        lo, hi = float(np.min(m)), float(np.max(m))
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    heat = colormap(upsample_map(m, (base.height, base.width)), cmap).astype(np.float32)
    out = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
