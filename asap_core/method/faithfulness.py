"""Faithfulness of patch-level relevance maps: deletion and insertion curves (Samek et al. 2017; Petsiuk et
al. 2018) against random patch orders and area-matched random masks, and the rank agreement of a map with
each patch's direct occlusion effect.

What it measures: whether removing patches in a map's order changes **this model's** target faster than
removing them at random, i.e. whether the map is faithful to the model. It does not test whether the
pattern the map points at is a real artifact of generated images: a model that learned a shortcut gets
faithful maps of the shortcut.

A map ``[side, side]`` orders the ViT's patches, most relevant first (ties: row-major order, as
``concepts.keep_mask``). ``steps`` steps remove (deletion) or reveal (insertion) ``k_j = round(j P / steps)``
patches, ``P = side²``, ``j = 0..steps``; a removed patch is replaced by the same patch of the **fill**
image ``b`` (``baseline``): ``"blur"`` (default: a Gaussian blur of the image with sigma one patch, RISE's
insertion start, which stays near the data), ``"grey"`` (0 in normalised pixel space, the CLIP mean colour)
or an array ``[3, S, S]`` / ``[3]`` in normalised pixel space (e.g. a dataset's mean image). Step ``j`` of
deletion keeps every patch but the first ``k_j``; step ``j`` of insertion starts from ``b`` and keeps only
the first ``k_j``. Each perturbed copy goes through the same path as the maps (``encoder.embed``, normalised
embeddings -> distiller); targets 0..15 are the dimensions of z in their own units, target 16 is scored on
the probability ``sigmoid(fake logit)`` (``fake_scale="probability"``, as Petsiuk et al. score a class),
not the logit, whose value on a far-from-data fill would dominate the normalisation.

Baselines, both target-independent and computed once per image for all 17 targets:

- random order: ``n_random`` seeded permutations of the patches; the curves of every order are kept
  (``FaithfulnessResult.orders``) and averaged;
- area-matched random mask: at every step ``n_random`` independent uniform draws of ``k_j`` patches (not
  nested across steps), averaged. Its expectation equals the random order's.

Sign convention and scale. The maps are non-negative: they claim which patches raise the target. Deletion
therefore measures how much of the target's own value is removed, ``f(x) - f(x_j)`` (positive when the
target falls), for every target, whichever way the fill moves it, in units of the target's **scale**
``s``: every curve is normalised as ``1 - (f(x) - f(x_j)) / s``, so deletion starts at 1 and a map is
credited when the target falls faster than with random orders.

- the fake target (16), on the probability: ``s = p(x)``, the probability itself (Petsiuk et al. score
  the raw class probability): the share of the fake probability removed. A model that barely reacts to the
  patches (a shuffled-label control, benchmarks/RESULTS.md section 22) is not credited for a small move
  that happens to be most of a small ``f(x) - f(b)``;
- the dimensions (0..15), which have no natural zero: ``s = |f(x) - f(b)|``, how far the target moves when
  every patch is replaced. Where the fill lowers the target this is ``(f(x_j) - f(b)) / (f(x) - f(b))``
  (deletion 1 -> 0, insertion 0 -> 1); where the fill raises it, the random deletion curve rises above 1
  (clipped to 1 in the ratio) and a map that lowers the target still beats it.

The occlusion effect of patch ``p`` is ``f(x) - f(x without p)`` (the drop when ``p`` alone is replaced), so a
map ordered by it is near-optimal for deletion on every target that reacts. Where ``s <= MIN_DELTA`` the
target does not react and the image's figures are NaN (left out).

Figures per image and target (``image_figures``): ``auc`` (trapezoid area over ``x = k_j / P``), areas
between curves (ABC) deletion ``auc(random) - auc(map)``, insertion ``auc(map) - auc(random)`` (positive
when the map beats random, up to ~0.5), and ``ratio`` = ``auc(random deletion) / auc(map deletion)`` on
curves **clipped** to [0, 1], the map's area floored at ``x_1 / 2`` (a curve that falls to 0 in the first
step): how many times less of the target is left, on average over the deletion, than with random orders.
1 for a map no better than random, below 1 for a misleading one. Its interval per image
(``ratio_low``, ``ratio_high``): the mean over the ``n_random`` orders +- 1.96 standard errors.

Per target (``summarise``), means over images are weighted by the scale ``s`` (an image where the target
barely reacts counts little); the weighted mean of the normalised ABC equals ``sum(raw ABC) / sum(s)``
for either sign of ``f(x) - f(b)``. The summary ratio is the ratio of the weighted mean clipped areas; its
95% interval is a percentile bootstrap over images (``N_BOOT`` resamples, seeded); ``verdict`` says "better
than random" only where the whole interval lies above ``1 + MIN_GAIN`` (it excludes 1, and the gain is not
negligible: see a shuffled-label control's box map in RESULTS.md section 22), "worse than random" where it lies below
``1 / (1 + MIN_GAIN)``, else "not clearly better than random"; under ``MIN_IMAGES_INTERVAL`` images "too
few images to tell".

Cost per image: ``2 + 2 (steps - 1) (K + 2 n_random)`` forwards at most (identical masks run once), in
batches of ``batch_size``; occlusion ``P + 1`` more.

Library: Quantus (``quantus.RegionPerturbation``) computes the same deletion curve for one target per call
and is the cross-check in ``tests/method/test_faithfulness.py``, not the runtime (17 calls, 17 times the random
baselines; no insertion curve nor per-step random masks; it brings OpenCV and scikit-image).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..storage.schema import FAKE_LOGIT, N_TARGETS, TARGET_NAMES
from .relevance import _target_indices
from .sanity import spearman_maps

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

CURVES: tuple[str, ...] = ("deletion", "insertion", "random_deletion", "random_insertion",
                           "mask_deletion", "mask_insertion")
MIN_DELTA = 1e-6  # |f(x) - f(baseline)| at or below this: the target ignores the perturbation (figures NaN)
FAITHFULNESS_VERSION = 2  # bump when the curves change for the same inputs and parameters
BASELINES: tuple[str, ...] = ("blur", "grey")
DEFAULT_BASELINE = "blur"  # chosen by measurement (benchmarks/RESULTS.md section 22)
N_BOOT = 1000  # bootstrap resamples of the summary ratio's interval
Z95 = 1.959964  # two-sided 95% normal quantile


def patch_counts(n_patches: int, steps: int) -> np.ndarray:
    """``[steps + 1]`` int: patches removed (or revealed) after step ``j``: ``round(j * P / steps)``."""
    return np.round(np.arange(steps + 1) * n_patches / steps).astype(np.int64)


def model_targets(encoder, distiller, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixel values ``[B, 3, S, S]`` -> all 17 targets ``[B, 17]`` float32 on CPU (z, then the fake logit),
    through ``encoder.embed`` (normalised embeddings) and the distiller, as the relevance maps see them."""
    import torch

    with torch.inference_mode():
        emb = encoder.embed(pixel_values)
        dist_dev = next(distiller.buffers(), None)
        z, logit = distiller(emb.to(dist_dev.device if dist_dev is not None else emb.device))
        return torch.cat([z, logit[:, None]], dim=1).float().cpu()


def scored(values: np.ndarray, fake_scale: str = "probability") -> np.ndarray:
    """Targets ``[..., 17]`` as the checks score them: the fake logit (16) as ``sigmoid`` when
    ``fake_scale == "probability"``, unchanged when ``"logit"``; dimensions unchanged."""
    if fake_scale not in ("probability", "logit"):
        raise InputError(f"fake_scale '{fake_scale}' is not 'probability' or 'logit'.", "use 'probability'.")
    out = np.array(values, np.float64, copy=True)
    if fake_scale == "probability":
        out[..., FAKE_LOGIT] = 1.0 / (1.0 + np.exp(-out[..., FAKE_LOGIT]))
    return out


def blurred(px: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of ``px [..., 3, S, S]`` with ``sigma`` pixels (separable, edges replicated)."""
    import torch
    import torch.nn.functional as F

    radius = max(int(np.ceil(3 * sigma)), 1)
    radius = min(radius, px.shape[-1] - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(float(sigma), 1e-6)) ** 2)
    k = (k / k.sum()).to(px.dtype)
    x = px.reshape(-1, 1, *px.shape[-2:])
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(px.shape)


def fill_image(px: torch.Tensor, baseline, patch: int) -> torch.Tensor:
    """The fill ``b`` of one image ``px [3, S, S]``: ``"blur"`` (sigma one patch), ``"grey"`` (0), a number,
    or an array broadcastable to ``[3, S, S]`` (normalised pixel space)."""
    import torch

    if isinstance(baseline, str):
        if baseline == "blur":
            return blurred(px, float(patch))
        if baseline == "grey":
            return torch.zeros_like(px)
        raise InputError(f"baseline '{baseline}' is not one of {', '.join(BASELINES)}.",
                         "use 'blur', 'grey', a number or a [3, S, S] array in normalised pixel space.")
    value = torch.as_tensor(np.asarray(baseline, np.float32)).to(px.dtype)
    if value.ndim == 1:
        value = value[:, None, None]
    return torch.broadcast_to(value, px.shape).clone()


class _MaskBank:
    """Distinct keep-masks ``[P]`` bool, each stored once; ``index(mask)`` -> its row."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self._seen: dict[bytes, int] = {}

    def index(self, keep: np.ndarray) -> int:
        key = np.packbits(keep).tobytes()
        if key not in self._seen:
            self._seen[key] = len(self.rows)
            self.rows.append(keep)
        return self._seen[key]


def _prefix_masks(order: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[steps + 1, P]`` bool: the first ``counts[j]`` patches of ``order``."""
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[None, :] < counts[:, None]


@dataclass
class FaithfulnessResult:
    """Deletion / insertion curves of ``DeletionInsertion.evaluate``.

    ``targets``: the K target indices; ``x [steps + 1]``: fraction of patches removed / revealed;
    ``curves [B, K, 6, steps + 1]``: target values as scored (``scored``), in ``CURVES`` order;
    ``orders [B, K, n_random, steps + 1]``: the deletion curve of each random order (their mean is
    ``random_deletion``).
    """

    targets: list[int]
    x: np.ndarray
    curves: np.ndarray
    orders: np.ndarray

    def curve(self, name: str) -> np.ndarray:
        """One curve ``[B, K, steps + 1]`` (raw), ``name`` in ``CURVES``."""
        return self.curves[:, :, CURVES.index(name)]

    @property
    def deletion(self) -> np.ndarray:
        return self.curve("deletion")

    @property
    def insertion(self) -> np.ndarray:
        return self.curve("insertion")

    @property
    def rows(self) -> np.ndarray:
        """``[B, K, 6 + n_random, steps + 1]``: curves then orders, as the checks' cache stores them."""
        return np.concatenate([self.curves, self.orders], axis=2)

    def per_image(self, image_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per image and target (``per_image_table``)."""
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(self.curves))]
        return per_image_table(self.rows, self.x, self.targets, ids)

    def summary(self, random_state: int = 0) -> pd.DataFrame:
        """One row per target (``summarise``)."""
        return summarise(self.rows, self.x, self.targets, random_state=random_state)


class DeletionInsertion:
    """Captum-shaped faithfulness metric for patch-level maps of a CLIP ViT + distiller.

    Parameters
    ----------
    encoder : ``ClipEncoder`` (``patch_side`` patches per side).
    distiller : ``Distiller`` whose z dimensions and fake logit are scored.
    steps : curve points after the start.
    n_random : random orders (and random masks per step), averaged (benchmarks/RESULTS.md section 22 shows
        how the summary ratio varies with it).
    baseline : the fill of a removed patch: ``"blur"``, ``"grey"``, a number or an array (see the module).
    fake_scale : ``"probability"`` (sigmoid of the fake logit) or ``"logit"``.
    batch_size : perturbed copies per forward.
    random_state : seed of the random baselines; per image the seed is ``(random_state, seeds[b])``, so an
        image's figures do not depend on its batch.

    Examples
    --------
    ``DeletionInsertion(encoder, distiller).evaluate(pixel_values, maps).summary()``: one row per target;
    ``occlusion(pixel_values)`` -> each patch's occlusion effect ``[B, 17, side, side]``.
    """

    def __init__(self, encoder, distiller, steps: int = 16, n_random: int = 16, baseline=DEFAULT_BASELINE,
                 fake_scale: str = "probability", batch_size: int = 64, random_state: int = 0) -> None:
        self.encoder = encoder
        self.distiller = distiller
        self.steps = steps
        self.n_random = n_random
        self.baseline = baseline
        self.fake_scale = fake_scale
        self.batch_size = batch_size
        self.random_state = random_state

    def _check(self, pixel_values, attributions: np.ndarray, idx: list[int]) -> int:
        """Patches per side; ``InputError`` for shapes that do not fit."""
        if int(self.steps) < 1 or int(self.n_random) < 1:
            raise InputError(f"steps = {self.steps}, n_random = {self.n_random}: both must be at least 1.",
                             "use steps=16, n_random=16.")
        side = self.encoder.patch_side
        if pixel_values.ndim != 4:
            raise InputError(f"pixel_values must be [B, 3, S, S], got shape {tuple(pixel_values.shape)}.",
                             "preprocess images with encoder.preprocess(list_of_PIL).")
        b, _, s, _ = pixel_values.shape
        if attributions.shape != (b, len(idx), side, side):
            raise InputError(f"attributions have shape {attributions.shape}, expected {(b, len(idx), side, side)}.",
                             "pass maps [B, K, side, side] of the same images, one per requested target.")
        if s % side:
            raise InputError(f"{s} px inputs do not split into {side} x {side} patches.",
                             "pass pixel_values from encoder.preprocess.")
        return side

    def evaluate(self, pixel_values: torch.Tensor, attributions, target: int | Sequence[int] | None = None,
                 seeds: Sequence[int] | None = None) -> FaithfulnessResult:
        """Deletion and insertion curves of every image and requested target.

        Parameters
        ----------
        pixel_values : ``[B, 3, S, S]``, as from ``encoder.preprocess``.
        attributions : ``[B, K, side, side]`` maps (array or tensor), one per requested target.
        target : one index, K indices, or None for all 17 (then ``attributions`` holds 17 maps).
        seeds : one integer per image (default ``0..B-1``): with ``random_state``, the seed of its random orders.

        Returns
        -------
        ``FaithfulnessResult``: ``curves [B, K, 6, steps + 1]`` (``CURVES``), ``orders [B, K, n_random,
        steps + 1]``, ``x [steps + 1]`` (fraction of patches removed / revealed).
        """
        idx = _target_indices(target)
        attributions = np.asarray(attributions.detach().cpu() if hasattr(attributions, "detach") else attributions,
                                  dtype=np.float64)
        side = self._check(pixel_values, attributions, idx)
        counts = patch_counts(side * side, int(self.steps))
        seeds = list(range(len(pixel_values))) if seeds is None else [int(s) for s in seeds]
        n_r = int(self.n_random)
        curves = np.zeros((len(pixel_values), len(idx), len(CURVES), len(counts)), np.float64)
        orders = np.zeros((len(pixel_values), len(idx), n_r, len(counts)), np.float64)
        for b in range(len(pixel_values)):
            rng = np.random.default_rng((int(self.random_state), seeds[b]))
            both = self._image_curves(pixel_values[b], attributions[b], idx, counts, rng)
            curves[b], orders[b] = both[:, :len(CURVES)], both[:, len(CURVES):]
        return FaithfulnessResult(idx, counts / (side * side), curves, orders)

    def _image_curves(self, px: torch.Tensor, maps: np.ndarray, idx: list[int], counts: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
        """``[K, 6 + n_random, steps + 1]``: curves then the random orders' deletion curves of one image
        ``px [3, S, S]`` with its maps ``[K, side, side]``."""
        n_p, n_r, n_k = maps.shape[-1] ** 2, int(self.n_random), len(idx)
        bank = _MaskBank()
        rows = np.zeros((n_k + 2 * n_r, 2, len(counts)), np.int64)  # [map per target | order | mask, del/ins]
        for k in range(n_k):
            flat = np.nan_to_num(maps[k].reshape(-1), nan=-np.inf)
            self._add_nested(bank, rows[k], _prefix_masks(np.argsort(-flat, kind="stable"), counts))
        for r in range(n_r):
            self._add_nested(bank, rows[n_k + r], _prefix_masks(rng.permutation(n_p), counts))
        for r in range(n_r):
            for j, c in enumerate(counts):
                gone, shown = np.zeros(n_p, bool), np.zeros(n_p, bool)
                gone[rng.choice(n_p, size=c, replace=False)] = True
                shown[rng.choice(n_p, size=c, replace=False)] = True
                rows[n_k + n_r + r, :, j] = bank.index(~gone), bank.index(shown)
        values = self._forward(px, np.stack(bank.rows))  # [M, 17]
        out = np.zeros((n_k, len(CURVES) + n_r, len(counts)))
        for k, t in enumerate(idx):
            v = values[:, t]
            out[k, 0:2] = v[rows[k]]
            out[k, 2:4] = v[rows[n_k:n_k + n_r]].mean(axis=0)
            out[k, 4:6] = v[rows[n_k + n_r:]].mean(axis=0)
            out[k, 6:] = v[rows[n_k:n_k + n_r, 0]]
        return out

    @staticmethod
    def _add_nested(bank: _MaskBank, rows: np.ndarray, prefixes: np.ndarray) -> None:
        """Deletion (keep all but the prefix) and insertion (keep the prefix) rows ``[2, steps + 1]``."""
        for j, first in enumerate(prefixes):
            rows[0, j], rows[1, j] = bank.index(~first), bank.index(first)

    def _forward(self, px: torch.Tensor, keep: np.ndarray) -> np.ndarray:
        """``px [3, S, S]`` with keep-masks ``[M, P]`` -> scored targets ``[M, 17]`` (float64), ``batch_size``
        copies at a time; removed patches come from the fill image."""
        import torch

        side = self.encoder.patch_side
        patch = px.shape[-1] // side
        px = px.detach().float().cpu()
        fill = fill_image(px, self.baseline, patch).float()
        out = np.zeros((len(keep), N_TARGETS))
        for start in range(0, len(keep), max(int(self.batch_size), 1)):
            m = torch.from_numpy(keep[start:start + int(self.batch_size)]).reshape(-1, 1, side, side)
            m = m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)  # [m, 1, S, S]
            batch = torch.where(m, px[None], fill[None])
            out[start:start + len(m)] = model_targets(self.encoder, self.distiller, batch).double().numpy()
        return scored(out, self.fake_scale)

    def occlusion(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Each patch's occlusion effect ``[B, 17, side, side]``: ``f(x) - f(x without p)``, the drop of each
        (scored) target when patch ``p`` alone is replaced by the fill. ``P + 1`` forwards per image, batched."""
        side = self.encoder.patch_side
        n_p = side * side
        keep = np.ones((n_p + 1, n_p), bool)
        keep[np.arange(n_p), np.arange(n_p)] = False  # row P: the image itself
        out = np.zeros((len(pixel_values), N_TARGETS, side, side))
        for b in range(len(pixel_values)):
            v = self._forward(pixel_values[b], keep)  # [P + 1, 17]
            out[b] = (v[-1] - v[:n_p]).T.reshape(N_TARGETS, side, side)
        return out


# ----------------------------------------------------------------------------- figures (numpy only)


def curve_scale(curves: np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
    """``[..., K]``: each image and target's scale ``s`` (see the module) from ``curves [..., K, R, T]``:
    ``f(x)`` for the fake target (16, scored on the probability), ``|f(x) - f(b)|`` for the dimensions
    (``targets`` None: all dimensions)."""
    full, empty = curves[..., 0, 0], curves[..., 0, -1]
    scale = np.abs(full - empty)
    if targets is not None:
        fake = np.asarray(targets) == FAKE_LOGIT
        scale = np.where(fake, full, scale)
    return scale


def normalise_curves(curves: np.ndarray, targets: Sequence[int] | None = None) -> np.ndarray:
    """Curves ``[..., K, R, T]`` (``CURVES`` first, then any random orders) of ``targets`` -> ``1 - (f(x) - f)
    / s`` (``curve_scale``; see the module's sign convention); NaN where ``s <= MIN_DELTA``.

    ``f(x)`` is the deletion curve's first point (the image), ``f(b)`` its last (every patch replaced)."""
    full = curves[..., 0, :1]
    scale = curve_scale(curves, targets)[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - (full[..., None, :] - curves) / scale
    return np.where(scale > MIN_DELTA, out, np.nan)


def curve_auc(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid area of ``curves [..., T]`` over ``x [T]`` (0..1) -> ``[...]``."""
    dx = np.diff(np.asarray(x, np.float64))
    return ((curves[..., 1:] + curves[..., :-1]) * 0.5 * dx).sum(axis=-1)


def image_figures(curves: np.ndarray, x: np.ndarray, targets: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per image and target (``[..., K]`` each) from ``curves [..., K, 6 (+ n_random), T]``: AUCs of every
    curve (``<curve>_auc``, normalised), the areas between curves (``deletion_abc``, ``insertion_abc``, and
    ``*_abc_mask`` against area-matched masks), the ``ratio`` with its interval over the random orders
    (``ratio_low``, ``ratio_high``; NaN without orders), ``delta = f(x) - f(b)`` and the ``scale``
    (``curve_scale``; ``targets`` None: all dimensions). See the module."""
    norm = normalise_curves(curves, targets)
    auc = curve_auc(norm[..., :len(CURVES), :], x)  # [..., 6]
    out = {f"{name}_auc": auc[..., i] for i, name in enumerate(CURVES)}
    out["deletion_abc"] = out["random_deletion_auc"] - out["deletion_auc"]
    out["insertion_abc"] = out["insertion_auc"] - out["random_insertion_auc"]
    out["deletion_abc_mask"] = out["mask_deletion_auc"] - out["deletion_auc"]
    out["insertion_abc_mask"] = out["insertion_auc"] - out["mask_insertion_auc"]
    clipped = curve_auc(np.clip(norm, 0.0, 1.0), x)  # [..., R]
    floor_map = np.maximum(clipped[..., 0], x[1] / 2)
    out["ratio"] = clipped[..., 2] / floor_map
    n_r = curves.shape[-2] - len(CURVES)
    if n_r >= 2:
        se = clipped[..., len(CURVES):].std(axis=-1, ddof=1) / np.sqrt(n_r) / floor_map
        out["ratio_low"], out["ratio_high"] = out["ratio"] - Z95 * se, out["ratio"] + Z95 * se
    else:
        out["ratio_low"] = out["ratio_high"] = np.full_like(out["ratio"], np.nan)
    out["delta"] = curves[..., 0, 0] - curves[..., 0, -1]
    out["scale"] = curve_scale(curves, targets)
    return out


def per_image_table(curves: np.ndarray, x: np.ndarray, targets: Sequence[int], image_ids: Sequence[str]
                    ) -> pd.DataFrame:
    """Long table, one row per image and target: image_id, target, target_name, deletion_abc, insertion_abc,
    deletion_abc_mask, insertion_abc_mask, ratio, ratio_low, ratio_high, delta (what a tile shows)."""
    fig = image_figures(curves, x, targets)
    n, k = curves.shape[:2]
    cols = ["deletion_abc", "insertion_abc", "deletion_abc_mask", "insertion_abc_mask", "ratio", "ratio_low",
            "ratio_high", "delta"]
    return pd.DataFrame({
        "image_id": np.repeat(np.asarray(image_ids, dtype=object), k),
        "target": np.tile(np.asarray(targets, np.int64), n),
        "target_name": np.tile(np.asarray([TARGET_NAMES[t] for t in targets], dtype=object), n),
        **{c: fig[c].reshape(-1) for c in cols}})


SUMMARY_COLUMNS: tuple[str, ...] = (
    "target", "target_name", "n_images", "deletion_auc", "random_deletion_auc", "mask_deletion_auc", "insertion_auc",
    "random_insertion_auc", "mask_insertion_auc", "deletion_abc", "deletion_abc_se", "deletion_abc_mask",
    "insertion_abc", "insertion_abc_se", "insertion_abc_mask", "ratio", "ratio_low", "ratio_high",
    "mean_abs_delta", "verdict", "beats_random")
#: the verdicts of ``ratio_verdict``, as the views print them
VERDICTS: tuple[str, ...] = ("better than random", "not clearly better than random", "worse than random",
                             "too few images to tell", "not measurable")
#: the smallest gain over random a verdict credits: the ratio's whole interval above ``1 + MIN_GAIN``
MIN_GAIN = 0.05
MIN_IMAGES_INTERVAL = 3  # fewer images: no bootstrap interval


def _weighted(values: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(weighted mean, its standard error) of ``values [n]`` with weights ``w [n]``; NaN where undefined."""
    n, total = len(values), float(w.sum())
    if not n or total <= 0:
        return np.nan, np.nan
    mean = float((w * values).sum() / total)
    if n < 2:
        return mean, np.nan
    return mean, float(np.sqrt((w ** 2 * (values - mean) ** 2).sum() * n / (n - 1)) / total)


def bootstrap_ratio(area_map: np.ndarray, area_random: np.ndarray, w: np.ndarray, floor: float,
                    n_boot: int = N_BOOT, random_state: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval over images of ``mean_w(area_random) / max(mean_w(area_map), floor)``
    (clipped areas ``[n]``, weights ``[n]``); NaN below ``MIN_IMAGES_INTERVAL`` images."""
    n = len(w)
    if n < MIN_IMAGES_INTERVAL or float(w.sum()) <= 0:
        return np.nan, np.nan
    pick = np.random.default_rng(int(random_state)).integers(n, size=(int(n_boot), n))
    ws = w[pick].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = ((w * area_random)[pick].sum(1) / ws) / np.maximum((w * area_map)[pick].sum(1) / ws, floor)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def ratio_verdict(ratio: float, low: float, high: float, min_gain: float = MIN_GAIN) -> str:
    """One of ``VERDICTS``: "better than random" only where the whole interval lies above ``1 + min_gain``
    (so it excludes 1 and the gain is not negligible), "worse than random" where it lies below
    ``1 / (1 + min_gain)``, else "not clearly better than random"."""
    if ratio is None or not np.isfinite(ratio):
        return "not measurable"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "too few images to tell"
    if low > 1 + min_gain:
        return "better than random"
    return "worse than random" if high < 1 / (1 + min_gain) else "not clearly better than random"


def summarise(curves: np.ndarray, x: np.ndarray, targets: Sequence[int], random_state: int = 0) -> pd.DataFrame:
    """One row per target (``SUMMARY_COLUMNS``) from ``curves [N, K, 6 (+ n_random), T]``: over the images whose
    target reacts (``n_images``), the scale-weighted means of the normalised AUCs and areas between
    curves, the standard errors of the two ABCs, ``ratio`` from the weighted mean clipped AUCs with its
    bootstrap interval (``ratio_low``, ``ratio_high``), ``mean_abs_delta``, ``verdict`` (``ratio_verdict``)
    and ``beats_random`` (the verdict is "better than random")."""
    fig = image_figures(curves, x, targets)
    clipped = curve_auc(np.clip(normalise_curves(curves, targets), 0.0, 1.0), x)  # [N, K, R]
    rows = []
    for k, t in enumerate(targets):
        ok = np.isfinite(fig["deletion_abc"][:, k])
        w = fig["scale"][ok, k]
        row: dict[str, Any] = {"target": int(t), "target_name": TARGET_NAMES[t], "n_images": int(ok.sum())}
        for c in ("deletion_auc", "random_deletion_auc", "mask_deletion_auc", "insertion_auc", "random_insertion_auc",
                  "mask_insertion_auc", "deletion_abc", "deletion_abc_mask", "insertion_abc", "insertion_abc_mask"):
            row[c], se = _weighted(fig[c][ok, k], w)
            if c in ("deletion_abc", "insertion_abc"):
                row[f"{c}_se"] = se
        area_map, area_random = _weighted(clipped[ok, k, 0], w)[0], _weighted(clipped[ok, k, 2], w)[0]
        row["ratio"] = area_random / max(area_map, x[1] / 2) if np.isfinite(area_map) else np.nan
        row["ratio_low"], row["ratio_high"] = bootstrap_ratio(clipped[ok, k, 0], clipped[ok, k, 2], w, x[1] / 2,
                                                              random_state=random_state)
        row["mean_abs_delta"] = float(np.abs(fig["delta"][:, k]).mean()) if len(curves) else np.nan
        row["verdict"] = ratio_verdict(row["ratio"], row["ratio_low"], row["ratio_high"])
        row["beats_random"] = row["verdict"] == "better than random"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def mean_curves(curves: np.ndarray, x: np.ndarray, targets: Sequence[int]) -> pd.DataFrame:
    """Long table of the normalised curves averaged over images as ``summarise`` averages (weighted by
    the scale ``s``, NaN images left out), for plotting: target, target_name, curve (``CURVES``), x, y."""
    norm = normalise_curves(curves, targets)  # [N, K, R, T]
    w = curve_scale(curves, targets)  # [N, K]
    rows = []
    for k, t in enumerate(targets):
        ok = np.isfinite(norm[:, k, 0, 0])
        for c, name in enumerate(CURVES):
            total = w[ok, k].sum()
            y = (w[ok, k, None] * norm[ok, k, c]).sum(0) / total if total > 0 else np.full(len(x), np.nan)
            rows += [{"target": int(t), "target_name": TARGET_NAMES[t], "curve": name, "x": float(xi),
                      "y": float(yi)} for xi, yi in zip(x, y)]
    return pd.DataFrame(rows, columns=["target", "target_name", "curve", "x", "y"])


def occlusion_agreement(maps: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Rank agreement (Spearman over the patches) of maps ``[..., side, side]`` with the occlusion effects
    of the same targets (``DeletionInsertion.occlusion``) -> ``[...]``; NaN where either is constant."""
    return spearman_maps(maps, effects)


def mean_interval(values: np.ndarray) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite ``values``: the 95% interval mean +- 1.96 standard errors (NaN
    below ``MIN_IMAGES_INTERVAL`` values)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.nan, np.nan, np.nan, 0
    mean = float(v.mean())
    if len(v) < MIN_IMAGES_INTERVAL:
        return mean, np.nan, np.nan, len(v)
    half = Z95 * float(v.std(ddof=1)) / np.sqrt(len(v))
    return mean, mean - half, mean + half, len(v)


def occlusion_summary(rho: np.ndarray, targets: Sequence[int]) -> pd.DataFrame:
    """``rho [N, K]`` (``occlusion_agreement``) -> one row per target: target, target_name, n_images,
    occlusion_rho (mean over images), occlusion_low, occlusion_high (``mean_interval``)."""
    rows = []
    for k, t in enumerate(targets):
        mean, low, high, n = mean_interval(rho[:, k])
        rows.append({"target": int(t), "target_name": TARGET_NAMES[t], "n_images": n, "occlusion_rho": mean,
                     "occlusion_low": low, "occlusion_high": high})
    return pd.DataFrame(rows, columns=["target", "target_name", "n_images", "occlusion_rho", "occlusion_low",
                                       "occlusion_high"])


__all__ = ["BASELINES", "CURVES", "DEFAULT_BASELINE", "DeletionInsertion", "FAITHFULNESS_VERSION", "FaithfulnessResult",
           "MIN_DELTA", "MIN_GAIN", "SUMMARY_COLUMNS", "VERDICTS", "blurred", "bootstrap_ratio", "curve_auc",
           "curve_scale", "fill_image",
           "image_figures", "mean_curves", "mean_interval", "model_targets", "normalise_curves", "occlusion_agreement",
           "occlusion_summary", "patch_counts", "per_image_table", "ratio_verdict", "scored", "summarise"]
