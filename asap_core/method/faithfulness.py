"""Faithfulness of patch-level relevance maps: deletion and insertion curves (Samek et al. 2017; Petsiuk et
al. 2018), against a random patch order and against area-matched random masks.

A map ``[side, side]`` orders the ViT's patches, most relevant first (ties: row-major order, as
``concepts.keep_mask``). ``steps`` steps remove (deletion) or reveal (insertion) ``k_j = round(j P / steps)``
patches, ``P = side²``, ``j = 0..steps``; a removed patch is set to ``baseline`` in normalised pixel space
(0 = the CLIP mean colour, the colour ``concepts.mean_fill`` paints). Step ``j`` of deletion keeps every
patch but the first ``k_j``; step ``j`` of insertion starts from the all-baseline image and keeps only the
first ``k_j``. Each perturbed copy goes through the same path as the maps (``encoder.embed``, normalised
embeddings -> distiller) and the target's value is recorded (targets 0..15: dimensions of z, 16: fake logit).

Baselines, both target-independent and computed once per image for all 17 targets:

- random order: ``n_random`` seeded permutations of the patches, curves averaged;
- area-matched random mask: at every step ``n_random`` independent uniform draws of ``k_j`` patches (not
  nested across steps), averaged. Its expectation equals the random order's; it answers "does the map's top
  ``k_j`` beat any ``k_j`` patches" step by step, as ``analyses.patterns`` does for one area.

Figures per image and target (``summarise``): curves are normalised as ``(f(x_j) - f(b)) / (f(x) - f(b))``
(``x`` the image, ``b`` the all-baseline image), so deletion runs from 1 to 0 and insertion from 0 to 1 in
every unit, and figures compare across dimensions; where ``|f(x) - f(b)| <= MIN_DELTA`` the target does not
react to the perturbation at all and the image's figures are NaN (left out of the means). ``auc``: trapezoid
area over ``x = k_j / P`` in [0, 1]. Area between curves (ABC): deletion ``auc(random) - auc(map)``,
insertion ``auc(map) - auc(random)``: positive when the map beats random, up to ~0.5. ``ratio``: "k times more
faithful than random" = ``auc(random deletion) / auc(map deletion)`` on curves clipped to [0, 1], the map's
area floored at ``x_1 / 2`` (the area of a curve that falls to 0 in the first step, the fastest drop the
steps resolve): how many times less of the target is left, on average over the deletion, when patches go in
the map's order. 1 for a map no better than random, below 1 for a misleading one.

Per target, means over images are weighted by ``|f(x) - f(b)|``: an image where the target barely reacts to
the perturbation (a small denominator, a wild normalised curve) counts little; the weighted mean of the
normalised ABC is the sum of the raw areas between curves over the sum of ``|f(x) - f(b)|``.

Cost per image: ``2 + 2 (steps - 1) (K + 2 n_random)`` forwards at most (identical masks are run once), in
batches of ``batch_size`` perturbed copies: 752 for all 17 targets at the defaults.

Library: Quantus (``quantus.RegionPerturbation``, Samek et al.'s region perturbation) is the well-kept
implementation that fits patch-level ViT maps: with ``patch_size`` = the ViT's patch, ``order="morf"``,
baseline 0 and one region per step it computes ``f(x) - f(x_k)`` along our deletion curve, and
``tests/test_faithfulness.py`` checks that the two agree. It is the cross-check, not the runtime: it evaluates
one target per call (17 calls, 17 times the random baselines; here the masks are shared by all targets), has
no insertion curve nor per-step random masks, and brings OpenCV, scikit-image and matplotlib into the app
(``requirements-dev.txt`` only). ``captum.metrics.infidelity`` measures another thing (the squared error of
the attribution's linear prediction under random input noise), not the patch order of a map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..storage.schema import N_TARGETS, TARGET_NAMES
from .relevance import _target_indices

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

CURVES: tuple[str, ...] = ("deletion", "insertion", "random_deletion", "random_insertion",
                           "mask_deletion", "mask_insertion")
MIN_DELTA = 1e-6  # |f(x) - f(baseline)| at or below this: the target ignores the perturbation (figures NaN)
FAITHFULNESS_VERSION = 1  # bump when the curves change for the same inputs and parameters


def patch_counts(n_patches: int, steps: int) -> np.ndarray:
    """``[steps + 1]`` int: patches removed (or revealed) after step ``j``: ``round(j * P / steps)``."""
    return np.round(np.arange(steps + 1) * n_patches / steps).astype(np.int64)


def model_targets(encoder, distiller, pixel_values: "torch.Tensor") -> "torch.Tensor":
    """Pixel values ``[B, 3, S, S]`` -> all 17 targets ``[B, 17]`` float32 on CPU (z, then the fake logit),
    through ``encoder.embed`` (normalised embeddings) and the distiller, as the relevance maps see them."""
    import torch

    with torch.inference_mode():
        emb = encoder.embed(pixel_values)
        dist_dev = next(distiller.buffers(), None)
        z, logit = distiller(emb.to(dist_dev.device if dist_dev is not None else emb.device))
        return torch.cat([z, logit[:, None]], dim=1).float().cpu()


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
    ``curves [B, K, 6, steps + 1]``: raw target values (the target's own units), in ``CURVES`` order.
    """

    targets: list[int]
    x: np.ndarray
    curves: np.ndarray

    def curve(self, name: str) -> np.ndarray:
        """One curve ``[B, K, steps + 1]`` (raw), ``name`` in ``CURVES``."""
        return self.curves[:, :, CURVES.index(name)]

    @property
    def deletion(self) -> np.ndarray:
        return self.curve("deletion")

    @property
    def insertion(self) -> np.ndarray:
        return self.curve("insertion")

    def per_image(self, image_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per image and target (``per_image_table``)."""
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(self.curves))]
        return per_image_table(self.curves, self.x, self.targets, ids)

    def summary(self) -> pd.DataFrame:
        """One row per target (``summarise``)."""
        return summarise(self.curves, self.x, self.targets)


class DeletionInsertion:
    """Captum-shaped faithfulness metric for patch-level maps of a CLIP ViT + distiller.

    ``DeletionInsertion(encoder, distiller, steps=16, n_random=4).evaluate(pixel_values [B, 3, S, S],
    attributions [B, K, side, side], target=None)`` -> ``FaithfulnessResult`` (curves ``[B, K, 6, steps + 1]``).

    Parameters: ``steps`` (curve points after the start), ``n_random`` (random orders and random masks per
    step, averaged), ``baseline`` (value of a removed patch in normalised pixel space; 0 = CLIP mean colour),
    ``batch_size`` (perturbed copies per forward), ``random_state`` (seed of the random baselines; per image
    the seed is ``(random_state, seeds[b])``, so an image's figures do not depend on its batch).
    """

    def __init__(self, encoder, distiller, steps: int = 16, n_random: int = 4, baseline: float = 0.0,
                 batch_size: int = 64, random_state: int = 0) -> None:
        self.encoder = encoder
        self.distiller = distiller
        self.steps = steps
        self.n_random = n_random
        self.baseline = baseline
        self.batch_size = batch_size
        self.random_state = random_state

    def _check(self, pixel_values, attributions: np.ndarray, idx: list[int]) -> int:
        """Patches per side; ``InputError`` for shapes that do not fit."""
        if int(self.steps) < 1 or int(self.n_random) < 1:
            raise InputError(f"steps = {self.steps}, n_random = {self.n_random}: both must be at least 1.",
                             "use steps=16, n_random=4.")
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

    def evaluate(self, pixel_values: "torch.Tensor", attributions, target: int | Sequence[int] | None = None,
                 seeds: Sequence[int] | None = None) -> FaithfulnessResult:
        """Curves for every image and requested target (``None``: all 17; ``attributions`` then has 17 maps)."""
        idx = _target_indices(target)
        attributions = np.asarray(attributions.detach().cpu() if hasattr(attributions, "detach") else attributions,
                                  dtype=np.float64)
        side = self._check(pixel_values, attributions, idx)
        counts = patch_counts(side * side, int(self.steps))
        seeds = list(range(len(pixel_values))) if seeds is None else [int(s) for s in seeds]
        curves = np.zeros((len(pixel_values), len(idx), len(CURVES), len(counts)), np.float64)
        for b in range(len(pixel_values)):
            rng = np.random.default_rng((int(self.random_state), seeds[b]))
            curves[b] = self._image_curves(pixel_values[b], attributions[b], idx, counts, rng)
        return FaithfulnessResult(idx, counts / (side * side), curves)

    def _image_curves(self, px: "torch.Tensor", maps: np.ndarray, idx: list[int], counts: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
        """``[K, 6, steps + 1]`` raw curves of one image ``px [3, S, S]`` with its maps ``[K, side, side]``."""
        n_p, n_r = maps.shape[-1] ** 2, int(self.n_random)
        bank = _MaskBank()
        rows = np.zeros((len(idx) + 2 * n_r, 2, len(counts)), np.int64)  # [map per target | order | mask, del/ins]
        for k in range(len(idx)):
            flat = np.nan_to_num(maps[k].reshape(-1), nan=-np.inf)
            self._add_nested(bank, rows[k], _prefix_masks(np.argsort(-flat, kind="stable"), counts))
        for r in range(n_r):
            self._add_nested(bank, rows[len(idx) + r], _prefix_masks(rng.permutation(n_p), counts))
        for r in range(n_r):
            for j, c in enumerate(counts):
                gone, shown = np.zeros(n_p, bool), np.zeros(n_p, bool)
                gone[rng.choice(n_p, size=c, replace=False)] = True
                shown[rng.choice(n_p, size=c, replace=False)] = True
                rows[len(idx) + n_r + r, :, j] = bank.index(~gone), bank.index(shown)
        values = self._forward(px, np.stack(bank.rows))  # [M, 17]
        out = np.zeros((len(idx), len(CURVES), len(counts)))
        for k, t in enumerate(idx):
            v = values[:, t]
            out[k, 0:2] = v[rows[k]]
            out[k, 2:4] = v[rows[len(idx):len(idx) + n_r]].mean(axis=0)
            out[k, 4:6] = v[rows[len(idx) + n_r:]].mean(axis=0)
        return out

    @staticmethod
    def _add_nested(bank: _MaskBank, rows: np.ndarray, prefixes: np.ndarray) -> None:
        """Deletion (keep all but the prefix) and insertion (keep the prefix) rows ``[2, steps + 1]``."""
        for j, first in enumerate(prefixes):
            rows[0, j], rows[1, j] = bank.index(~first), bank.index(first)

    def _forward(self, px: "torch.Tensor", keep: np.ndarray) -> np.ndarray:
        """``px [3, S, S]`` with keep-masks ``[M, P]`` -> targets ``[M, 17]`` (float64), ``batch_size`` at a time."""
        import torch

        side = self.encoder.patch_side
        patch = px.shape[-1] // side
        px = px.detach().float().cpu()
        out = np.zeros((len(keep), N_TARGETS))
        for start in range(0, len(keep), max(int(self.batch_size), 1)):
            m = torch.from_numpy(keep[start:start + int(self.batch_size)]).reshape(-1, 1, side, side)
            m = m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)  # [m, 1, S, S]
            batch = torch.where(m, px[None], torch.tensor(float(self.baseline)))
            out[start:start + len(m)] = model_targets(self.encoder, self.distiller, batch).double().numpy()
        return out


# ----------------------------------------------------------------------------- figures (numpy only)


def normalise_curves(curves: np.ndarray) -> np.ndarray:
    """Raw curves ``[..., 6, T]`` -> ``(f - f(b)) / (f(x) - f(b))``; NaN where ``|f(x) - f(b)| <= MIN_DELTA``.

    ``f(x)`` is the deletion curve's first point (the image), ``f(b)`` its last (every patch removed)."""
    full, empty = curves[..., 0, :1], curves[..., 0, -1:]
    delta = full - empty
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (curves - empty[..., None, :]) / delta[..., None, :]
    return np.where(np.abs(delta[..., None, :]) > MIN_DELTA, out, np.nan)


def curve_auc(curves: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid area of ``curves [..., T]`` over ``x [T]`` (0..1) -> ``[...]``."""
    dx = np.diff(np.asarray(x, np.float64))
    return ((curves[..., 1:] + curves[..., :-1]) * 0.5 * dx).sum(axis=-1)


def image_figures(curves: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per image and target (``[..., K]`` each): AUCs of every curve (``<curve>_auc``, normalised), the areas
    between curves (``deletion_abc``, ``insertion_abc``, and ``*_abc_mask`` against area-matched masks), the
    ``ratio`` and ``delta = f(x) - f(b)`` (raw units). See the module docstring."""
    norm = normalise_curves(curves)
    auc = curve_auc(norm, x)  # [..., 6]
    out = {f"{name}_auc": auc[..., i] for i, name in enumerate(CURVES)}
    out["deletion_abc"] = out["random_deletion_auc"] - out["deletion_auc"]
    out["insertion_abc"] = out["insertion_auc"] - out["random_insertion_auc"]
    out["deletion_abc_mask"] = out["mask_deletion_auc"] - out["deletion_auc"]
    out["insertion_abc_mask"] = out["insertion_auc"] - out["mask_insertion_auc"]
    clipped = curve_auc(np.clip(norm, 0.0, 1.0), x)
    out["ratio"] = clipped[..., 2] / np.maximum(clipped[..., 0], x[1] / 2)
    out["delta"] = curves[..., 0, 0] - curves[..., 0, -1]
    return out


def per_image_table(curves: np.ndarray, x: np.ndarray, targets: Sequence[int], image_ids: Sequence[str]
                    ) -> pd.DataFrame:
    """Long table, one row per image and target: image_id, target, target_name, deletion_abc, insertion_abc,
    deletion_abc_mask, insertion_abc_mask, ratio, delta (what a tile shows)."""
    fig = image_figures(curves, x)
    n, k = curves.shape[:2]
    cols = ["deletion_abc", "insertion_abc", "deletion_abc_mask", "insertion_abc_mask", "ratio", "delta"]
    return pd.DataFrame({
        "image_id": np.repeat(np.asarray(image_ids, dtype=object), k),
        "target": np.tile(np.asarray(targets, np.int64), n),
        "target_name": np.tile(np.asarray([TARGET_NAMES[t] for t in targets], dtype=object), n),
        **{c: fig[c].reshape(-1) for c in cols}})


SUMMARY_COLUMNS: tuple[str, ...] = (
    "target", "target_name", "n_images", "deletion_auc", "random_deletion_auc", "mask_deletion_auc", "insertion_auc",
    "random_insertion_auc", "mask_insertion_auc", "deletion_abc", "deletion_abc_se", "deletion_abc_mask",
    "insertion_abc", "insertion_abc_se", "insertion_abc_mask", "ratio", "mean_abs_delta", "beats_random")


def _weighted(values: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(weighted mean, its standard error) of ``values [n]`` with weights ``w [n]``; NaN where undefined."""
    n, total = len(values), float(w.sum())
    if not n or total <= 0:
        return np.nan, np.nan
    mean = float((w * values).sum() / total)
    if n < 2:
        return mean, np.nan
    return mean, float(np.sqrt((w ** 2 * (values - mean) ** 2).sum() * n / (n - 1)) / total)


def summarise(curves: np.ndarray, x: np.ndarray, targets: Sequence[int]) -> pd.DataFrame:
    """One row per target (``SUMMARY_COLUMNS``): over the images whose target reacts (``n_images``), the
    ``|f(x) - f(b)|``-weighted means of the normalised AUCs and areas between curves, the standard errors of
    the two ABCs (``*_se``), ``ratio`` from the weighted mean clipped AUCs, ``mean_abs_delta`` (raw units) and
    ``beats_random``: deletion ABC more than two standard errors above 0 (False with fewer than 2 images)."""
    fig = image_figures(curves, x)
    clipped = curve_auc(np.clip(normalise_curves(curves), 0.0, 1.0), x)  # [N, K, 6]
    rows = []
    for k, t in enumerate(targets):
        ok = np.isfinite(fig["deletion_abc"][:, k])
        w = np.abs(fig["delta"][ok, k])
        row = {"target": int(t), "target_name": TARGET_NAMES[t], "n_images": int(ok.sum())}
        for c in ("deletion_auc", "random_deletion_auc", "mask_deletion_auc", "insertion_auc", "random_insertion_auc",
                  "mask_insertion_auc", "deletion_abc", "deletion_abc_mask", "insertion_abc", "insertion_abc_mask"):
            row[c], se = _weighted(fig[c][ok, k], w)
            if c in ("deletion_abc", "insertion_abc"):
                row[f"{c}_se"] = se
        area_map, area_random = _weighted(clipped[ok, k, 0], w)[0], _weighted(clipped[ok, k, 2], w)[0]
        row["ratio"] = area_random / max(area_map, x[1] / 2) if np.isfinite(area_map) else np.nan
        row["mean_abs_delta"] = float(np.abs(fig["delta"][:, k]).mean()) if len(curves) else np.nan
        row["beats_random"] = bool(row["n_images"] > 1 and row["deletion_abc"] > 2 * row["deletion_abc_se"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def mean_curves(curves: np.ndarray, x: np.ndarray, targets: Sequence[int]) -> pd.DataFrame:
    """Long table of the normalised curves averaged over images as ``summarise`` averages (weighted by
    ``|f(x) - f(b)|``, NaN images left out), for plotting: target, target_name, curve (``CURVES``), x, y."""
    norm = normalise_curves(curves)  # [N, K, 6, T]
    w = np.abs(curves[:, :, 0, 0] - curves[:, :, 0, -1])  # [N, K]
    rows = []
    for k, t in enumerate(targets):
        ok = np.isfinite(norm[:, k, 0, 0])
        for c, name in enumerate(CURVES):
            total = w[ok, k].sum()
            y = (w[ok, k, None] * norm[ok, k, c]).sum(0) / total if total > 0 else np.full(len(x), np.nan)
            rows += [{"target": int(t), "target_name": TARGET_NAMES[t], "curve": name, "x": float(xi),
                      "y": float(yi)} for xi, yi in zip(x, y)]
    return pd.DataFrame(rows, columns=["target", "target_name", "curve", "x", "y"])


__all__ = ["CURVES", "DeletionInsertion", "FAITHFULNESS_VERSION", "FaithfulnessResult", "MIN_DELTA", "SUMMARY_COLUMNS",
           "curve_auc", "image_figures", "mean_curves", "model_targets", "normalise_curves", "patch_counts",
           "per_image_table", "summarise"]
