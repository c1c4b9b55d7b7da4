"""Model-parameter randomisation test of relevance maps (Adebayo et al., "Sanity checks for saliency maps",
NeurIPS 2018): maps that stay the same when the weights they claim to explain are destroyed explain
something else (the image's edges, the attention of untouched layers), not the model's decision.

Two randomisations, each on a copy (the shared encoder from ``model.factory`` and the bundle's distiller are
never touched):

- ``distiller``: every learned weight of the distiller (``dims``, ``head``, ``generator_head``) redrawn from a
  normal with the tensor's own mean and standard deviation (seeded); the fixed projection and
  standardisation buffers are kept.
- ``last-block``: every parameter of the vision tower's last transformer block redrawn the same way; the
  other blocks are shared with the original model, not copied (a copy of the module tree whose tensors,
  except the last block's, are the original ones).

Per image and target, the Spearman rank correlation between the original and the randomised map over the
``side²`` patches (NaN where either map is constant); per target, its mean over images.

Threshold: a target is flagged when a mean rank correlation exceeds ``RANK_THRESHOLD`` = 0.5. Two maps that
share nothing have a rank correlation of 0 with a standard deviation of ``1 / sqrt(P - 1)`` per image
(0.14 for ViT-B/32's 49 patches, 0.26 for 16 patches), so a mean above 0.5 is far outside chance, and it
means that more than half of the map's ordering survives the destruction of the weights it should depend
on. Methods that fail Adebayo et al.'s test (e.g. guided back-propagation) keep rank correlations near 1.

A map from a randomly initialised CLIP (the demo's fallback, ``EncoderInfo.source == "random"``) fails
regardless of the correlations: redrawing one block of a random model yields another random model, so the
correlation test cannot tell anything, and the maps carry no meaning. ``sanity_verdict`` is the one place
that turns the figures and that fact into a verdict.

Quantus has this test (``ModelParameterRandomisation``); it randomises the layers of one ``nn.Module`` it is
handed, in place, one cascade step per layer, and wants the explanation function to take that module. Here the
model is two (the shared CLIP and the distiller), the encoder must stay untouched, and only two
randomisations are wanted, so the test is written out here; the faithfulness curves are the ones
cross-checked against Quantus (``method.faithfulness``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..errors import InputError
from ..storage.schema import TARGET_NAMES
from .relevance import AttentionRelevance, _target_indices

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

RANDOMISATIONS: tuple[str, ...] = ("distiller", "last-block")
RANK_THRESHOLD = 0.5
SANITY_VERSION = 1  # bump when the randomisations or the correlation change

#: ``explain(encoder, distiller, pixel_values, idx) -> [B, K, side, side]``: the maps under test
ExplainFunc = Callable[[object, object, "torch.Tensor", list[int]], "torch.Tensor"]


def _redraw_(tensors, generator: "torch.Generator") -> None:
    """Redraw each tensor in place from a normal with its own mean and standard deviation."""
    import torch

    with torch.no_grad():
        for t in tensors:
            mean = t.float().mean()
            std = t.float().std() if t.numel() > 1 else torch.zeros(())
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
            t.copy_((mean + std * noise).to(t.dtype))


def randomised_distiller(distiller, random_state: int = 0):
    """A copy of ``distiller`` with its learned weights redrawn (seeded); buffers kept."""
    import torch

    out = copy.deepcopy(distiller)
    _redraw_(list(out.parameters()), torch.Generator().manual_seed(int(random_state)))
    return out.eval()


def randomised_last_block(encoder, random_state: int = 0):
    """A copy of ``encoder`` whose vision tower's last block is redrawn (seeded). Every other tensor is shared
    with ``encoder`` (not copied, never written); ``cache_key`` names the randomisation."""
    import torch

    from ..model.image_forward import ClipImageForward

    vm = encoder.vision_model
    last = vm.vision_model.encoder.layers[-1]
    own = {id(t) for t in [*last.parameters(), *last.buffers()]}
    memo = {id(t): t for t in [*vm.parameters(), *vm.buffers()] if id(t) not in own}
    vm2 = copy.deepcopy(vm, memo)
    block = vm2.vision_model.encoder.layers[-1]
    _redraw_([p.data for p in block.parameters()], torch.Generator().manual_seed(int(random_state)))
    out = copy.copy(encoder)  # the same info, preprocessing, device and dtype; other weights in one block
    out.vision_model = vm2
    out.image_forward = ClipImageForward(vm2).eval()
    out.cache_key = f"{encoder.cache_key}-random-last-block-{int(random_state)}"
    return out


def spearman_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank correlation of maps ``a, b [..., side, side]`` over the patches -> ``[...]`` (ties: average ranks;
    NaN where either map is constant)."""
    a = np.asarray(a, np.float64).reshape(*np.shape(a)[:-2], -1)
    b = np.asarray(b, np.float64).reshape(*np.shape(b)[:-2], -1)
    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / den, np.nan)


@dataclass(frozen=True)
class SanityVerdict:
    """``flagged`` (the maps fail the check) and one sentence for the views saying why (or that they pass)."""

    flagged: bool
    reason: str


def sanity_verdict(rho_distiller: float, rho_last_block: float, encoder_random: bool,
                   threshold: float = RANK_THRESHOLD) -> SanityVerdict:
    """The verdict on one target's maps from its mean rank correlations after randomising the distiller and
    the encoder's last block, and whether the encoder itself is a random initialisation."""
    if encoder_random:
        return SanityVerdict(True, "the CLIP is randomly initialised: its maps carry no meaning whatever the "
                                   "correlations")
    high = [f"{name} ({rho:.2f})" for name, rho in (("distiller", rho_distiller), ("last block", rho_last_block))
            if np.isfinite(rho) and rho > threshold]
    if high:
        return SanityVerdict(True, "maps barely change when the weights are randomised: rank correlation above "
                                   f"{threshold:g} after randomising the {' and the '.join(high)}")
    if not (np.isfinite(rho_distiller) or np.isfinite(rho_last_block)):
        return SanityVerdict(True, "no map varied across patches: the check could not be run")
    return SanityVerdict(False, f"maps change when the weights are randomised (rank correlation at most {threshold:g})")


def attention_explain(method: str) -> ExplainFunc:
    """The library's maps (``AttentionRelevance`` with ``method``) as an ``ExplainFunc``."""
    def explain(encoder, distiller, pixel_values, idx):
        return AttentionRelevance(encoder, distiller, method).attribute(pixel_values, target=idx)

    return explain


@dataclass
class SanityResult:
    """``rho [B, K, 2]``: rank correlation per image and target after each of ``RANDOMISATIONS``;
    ``targets`` (K indices); ``encoder_random``; ``threshold``."""

    targets: list[int]
    rho: np.ndarray
    encoder_random: bool
    threshold: float = RANK_THRESHOLD

    def summary(self) -> pd.DataFrame:
        """One row per target: target, target_name, n_images, rho_distiller, rho_last_block (means over images),
        encoder_random, flagged, reason (``sanity_verdict``)."""
        return summarise_rho(self.rho, self.targets, self.encoder_random, self.threshold)


def summarise_rho(rho: np.ndarray, targets: Sequence[int], encoder_random: bool,
                  threshold: float = RANK_THRESHOLD) -> pd.DataFrame:
    """``rho [N, K, 2]`` -> one row per target (``SanityResult.summary``)."""
    rows = []
    for k, t in enumerate(targets):
        means = []
        for r in range(len(RANDOMISATIONS)):
            v = rho[:, k, r]
            means.append(float(np.nanmean(v)) if np.isfinite(v).any() else np.nan)
        verdict = sanity_verdict(means[0], means[1], encoder_random, threshold)
        rows.append({"target": int(t), "target_name": TARGET_NAMES[t], "n_images": int(len(rho)),
                     "rho_distiller": means[0], "rho_last_block": means[1], "encoder_random": bool(encoder_random),
                     "flagged": verdict.flagged, "reason": verdict.reason})
    return pd.DataFrame(rows)


class ParameterRandomisation:
    """Captum-shaped model-parameter randomisation test.

    ``ParameterRandomisation(encoder, distiller, method="last-block", random_state=0).evaluate(pixel_values
    [B, 3, S, S], target=None)`` -> ``SanityResult`` (``rho [B, K, 2]``). ``explain`` replaces the maps under
    test (default: ``AttentionRelevance`` with ``method``); ``encoder_random`` (default: from
    ``encoder.info.source``) marks a randomly initialised CLIP. ``original`` in ``evaluate``: the maps
    ``[B, K, side, side]`` already computed with the unchanged models (e.g. cached), else computed here.
    """

    def __init__(self, encoder, distiller, method: str = "last-block", random_state: int = 0,
                 explain: ExplainFunc | None = None, encoder_random: bool | None = None,
                 threshold: float = RANK_THRESHOLD) -> None:
        self.encoder = encoder
        self.distiller = distiller
        self.method = method
        self.random_state = random_state
        self.explain = explain
        self.encoder_random = encoder_random
        self.threshold = threshold

    def evaluate(self, pixel_values: "torch.Tensor", target: int | Sequence[int] | None = None,
                 original=None) -> SanityResult:
        idx = _target_indices(target)
        explain = self.explain or attention_explain(self.method)
        if original is None:
            original = explain(self.encoder, self.distiller, pixel_values, idx)
        original = np.asarray(original.detach().cpu() if hasattr(original, "detach") else original, np.float64)
        if original.shape[:2] != (len(pixel_values), len(idx)):
            raise InputError(f"original maps have shape {original.shape}, expected [{len(pixel_values)}, {len(idx)}, "
                             "side, side].", "pass the maps of the same images and targets, or none.")
        rand_dist = randomised_distiller(self.distiller, self.random_state)
        rand_enc = randomised_last_block(self.encoder, self.random_state)
        rho = np.stack([spearman_maps(original, np.asarray(explain(enc, dist, pixel_values, idx), np.float64))
                        for enc, dist in ((self.encoder, rand_dist), (rand_enc, self.distiller))], axis=-1)
        random_enc = self.encoder_random
        if random_enc is None:
            random_enc = getattr(getattr(self.encoder, "info", None), "source", "") == "random"
        return SanityResult(idx, rho, bool(random_enc), self.threshold)


__all__ = ["ParameterRandomisation", "RANDOMISATIONS", "RANK_THRESHOLD", "SANITY_VERSION", "SanityResult",
           "SanityVerdict", "attention_explain", "randomised_distiller", "randomised_last_block", "sanity_verdict",
           "spearman_maps", "summarise_rho"]
