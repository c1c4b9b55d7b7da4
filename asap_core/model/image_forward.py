"""Inference forward of a CLIP vision tower that computes only what the image embedding reads.

The embedding is ``visual_projection(post_layernorm(h_L[:, 0]))``: of the last layer's output only the
class token is used. So the last layer attends with the class-token query alone (keys and values still
over all ``T`` tokens) and runs its output projection and MLP on one token instead of ``T``. For
ViT-B/32 (``T = 50``) that drops 10 of the last layer's 12 ``d x d`` matrix products per token, 6.9 % of
the forward's FLOPs; every other layer is the Hugging Face computation op for op (same modules, same
``scaled_dot_product_attention``), so the embeddings equal ``CLIPVisionModelWithProjection``'s
``image_embeds`` to float rounding (the last layer's products see other matrix shapes).

The same observation makes ``last-block`` relevance cheap (``class_token_attention``): the targets
depend on the last layer's attention only through its class-token row, so layers ``0..L-2`` run without
autograd and the backward covers one token of one layer. Rollout needs every layer's attention and
keeps the Hugging Face forward (``ClipEncoder.embed(..., output_attentions=True)``).

Both split at the last layer's input ``h [B, T, d]`` (``last_layer_input``): ``forward(px,
with_last_input=True)`` hands it out with the embeddings, and ``class_token_attention_from(h)`` starts
from it, so the relevance pass of ``analyze`` can reuse what the embedding pass computed instead of
decoding the image and running layers ``0..L-2`` a second time (``relevance_store``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import torch
import torch.nn.functional as F


class _Attention(Protocol):
    """The parts of a Hugging Face ``CLIPAttention`` this forward reads."""

    num_heads: int
    scale: float
    q_proj: torch.nn.Linear
    k_proj: torch.nn.Linear
    v_proj: torch.nn.Linear
    out_proj: torch.nn.Linear


class _EncoderLayer(Protocol):
    """A pre-norm ``CLIPEncoderLayer``: attention and MLP, each behind a layer norm."""

    self_attn: _Attention
    layer_norm1: torch.nn.LayerNorm
    layer_norm2: torch.nn.LayerNorm
    mlp: torch.nn.Module


class _Encoder(Protocol):
    layers: Sequence[_EncoderLayer]


class _Embeddings(Protocol):
    """Patch and position embeddings: ``pixel_values [B, 3, S, S] -> [B, T, d]``."""

    patch_embedding: torch.nn.Conv2d

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...


class _VisionTower(Protocol):
    embeddings: _Embeddings
    pre_layrnorm: torch.nn.LayerNorm
    encoder: _Encoder
    post_layernorm: torch.nn.LayerNorm


class _VisionWithProjection(Protocol):
    """The layout of ``CLIPVisionModelWithProjection`` (any Hugging Face version this project supports)."""

    vision_model: _VisionTower
    visual_projection: torch.nn.Linear


class ClipImageForward(torch.nn.Module):
    """``forward(pixel_values [B, 3, S, S]) -> image_embeds [B, D]`` (the model's dtype, not normalised).

    Wraps the submodules of a ``CLIPVisionModelWithProjection`` (shares its parameters: moving or
    casting that model moves this one). Differentiable, ``torch.compile``-able, no attention outputs.
    """

    def __init__(self, vision_model: torch.nn.Module) -> None:
        super().__init__()
        # torch types a submodule attribute as ``Tensor | Module``; the layout is CLIP's, as documented above
        model = cast(_VisionWithProjection, vision_model)
        self.tower = model.vision_model
        self.projection = model.visual_projection

    def last_layer_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` -> the last layer's input ``h [B, T, d]`` (the model's dtype):
        embeddings, pre-layernorm and layers ``0..L-2``, exactly as ``forward`` computes them."""
        tower = self.tower
        dtype = tower.embeddings.patch_embedding.weight.dtype
        h = tower.pre_layrnorm(tower.embeddings(pixel_values.to(dtype)))  # [B, T, d]
        for layer in tower.encoder.layers[:-1]:
            h = _layer(layer, h, class_token_only=False)
        return h

    def forward(self, pixel_values: torch.Tensor, with_last_input: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``image_embeds [B, D]``; with ``with_last_input`` also the last layer's input ``h [B, T, d]``."""
        h = self.last_layer_input(pixel_values)
        embeds = self.embeds_from(h)
        return (embeds, h) if with_last_input else embeds

    def embeds_from(self, last_input: torch.Tensor) -> torch.Tensor:
        """The last layer's input ``h [B, T, d]`` -> ``image_embeds [B, D]`` (the class token's path only)."""
        tower = self.tower
        h = _layer(tower.encoder.layers[-1], last_input, class_token_only=True)  # [B, 1, d]
        return self.projection(tower.post_layernorm(h[:, 0]))

    def class_token_attention(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_embeds [B, D], attention [B, H, T])``: the embeddings as ``forward`` gives them, and the
        last layer's softmax attention of the class token over all ``T`` tokens, a leaf of the autograd
        graph (``requires_grad``) that the embeddings depend on.

        ``torch.autograd.grad(f(image_embeds), attention)`` is then ``d f / d A[:, :, 0, :]`` of the full
        model (the other rows of ``A`` do not reach the embedding). Layers before the last, and the
        attention itself, run without autograd; softmax in float32 as in Hugging Face's eager attention.
        """
        with torch.no_grad():
            h = self.last_layer_input(pixel_values)
        return self.class_token_attention_from(h)

    def class_token_attention_from(self, last_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``class_token_attention`` from the last layer's input ``h [B, T, d]`` (any float dtype; cast to
        the model's), as ``last_layer_input`` or ``forward(..., with_last_input=True)`` gave it."""
        tower = self.tower
        last = tower.encoder.layers[-1]
        attn = last.self_attn
        with torch.no_grad():
            h = last_input.to(tower.embeddings.patch_embedding.weight.dtype)
            q, k, v = _heads(attn, last.layer_norm1(h), class_token_only=True)  # [B, H, 1 | T, d/H]
            scores = torch.matmul(q, k.transpose(2, 3)) * attn.scale  # [B, H, 1, T]
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)[:, :, 0]
        probs = probs.detach().requires_grad_(True)  # [B, H, T]
        o = torch.matmul(probs.unsqueeze(2), v)  # [B, H, 1, d/H]
        h = h[:, :1] + attn.out_proj(o.transpose(1, 2).flatten(2))
        h = h + last.mlp(last.layer_norm2(h))
        return self.projection(tower.post_layernorm(h[:, 0])), probs


def _heads(attn: _Attention, y: torch.Tensor, class_token_only: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised tokens ``y [B, T, d]`` -> per-head ``q [B, H, Tq, d/H]`` (``Tq`` = 1 for the class token
    only, else ``T``), ``k`` and ``v`` ``[B, H, T, d/H]``."""
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    q = attn.q_proj(y[:, :1] if class_token_only else y)
    return split(q), split(attn.k_proj(y)), split(attn.v_proj(y))


def _layer(layer: _EncoderLayer, h: torch.Tensor, class_token_only: bool) -> torch.Tensor:
    """One pre-norm CLIP encoder layer: ``h [B, T, d] -> [B, T, d]``, or ``[B, 1, d]`` (class token) when
    ``class_token_only``."""
    attn = layer.self_attn
    q, k, v = _heads(attn, layer.layer_norm1(h), class_token_only)
    o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # [B, H, Tq, d/H]
    h = (h[:, :1] if class_token_only else h) + attn.out_proj(o.transpose(1, 2).flatten(2))
    return h + layer.mlp(layer.layer_norm2(h))
