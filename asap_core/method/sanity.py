"""Sanity checks of relevance maps (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018): maps
that stay the same when the weights they claim to explain are destroyed explain something else (the
image's edges, the attention of untouched layers), not the model's decision; and maps that are the same
for every target explain none of them.

**Cascading parameter randomisation.** On copies (the shared encoder from ``model.factory`` and the
bundle's distiller are never touched), step 0 redraws every learned weight of the distiller (``dims``,
``head``, ``generator_head``; the fixed projection and standardisation buffers kept), step ``s`` >= 1
additionally redraws the vision tower's last ``s`` transformer blocks, down to the first block, and a last
step everything else (patch and position embeddings, layer norms, projection), as Adebayo et al. go down to
the first convolution. Each tensor is redrawn from a normal with its own mean and standard deviation (a
constant tensor, e.g. a fresh layer norm's weight, stays as it is); untouched tensors are shared, not
copied. After each step the maps are recomputed and compared with the original ones by two similarities
over the ``side²`` patches: the Spearman rank correlation, and a value-based similarity, the **SSIM** of the
two maps as they look on screen (``ssim_maps``): an edge map plus 5% of the real map keeps its rank
correlation moderate when the weights are redrawn, yet looks the same, and only a value-based similarity
sees it. The cascade runs for ``n_seeds`` redraw seeds; the figures are means over seeds and images with a
95% interval over images. ``cascade_table`` is the curve Adebayo et al. plot.

**Target sensitivity.** Per image and target, the median Spearman correlation of the target's map with the
maps of the other targets; per target, its mean over images. One map reused for every target gives 1.

Verdict (``sanity_verdict``, the one place): a target **fails** when, after redrawing the distiller or
after the whole cascade, either similarity stays above ``RANK_THRESHOLD`` = 0.5 (more than half of the
map's order survives, or it looks the same, the destruction of the weights it should depend on; two maps
that share nothing have a rank correlation of 0 with a standard deviation of ``1 / sqrt(P - 1)`` per
image, 0.14 for ViT-B/32), or when its target sensitivity exceeds ``TARGET_THRESHOLD``. For a randomly
initialised CLIP (the demo's fallback, ``EncoderInfo.source == "random"``) the test is **not assessed**:
redrawing a random model yields another random model, so the figures (still measured and shown) cannot
tell whether the maps explain a learned decision.

Quantus has this test (``quantus.MPRT``); it randomises the layers of one ``nn.Module`` in place (on its
copy) and resets them with their initialisers. Here the model is two (the shared CLIP and the distiller),
and the distiller must be redrawn first, so the cascade is written out; ``tests/method/test_sanity.py``
cross-checks it against ``MPRT``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..errors import InputError
from ..storage.schema import TARGET_NAMES
from .relevance import AttentionRelevance, _target_indices

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

SIMILARITIES: tuple[str, ...] = ("spearman", "ssim")
RANK_THRESHOLD = 0.5
TARGET_THRESHOLD = 0.9  # median rank correlation with the other targets' maps above this: one map for all
MAX_STEPS = 34  # cascade steps stored per image (distiller, up to 32 blocks, the rest; NaN beyond the model's)
DEFAULT_SEEDS = 3
SANITY_VERSION = 2  # bump when the randomisations or the similarities change
Z95 = 1.959964

#: ``explain(encoder, distiller, pixel_values, idx) -> [B, K, side, side]``: the maps under test
ExplainFunc = Callable[[object, object, "torch.Tensor", list[int]], "torch.Tensor"]


def _redraw_(tensors, generator: torch.Generator) -> None:
    """Redraw each tensor in place from a normal with its own mean and standard deviation."""
    import torch

    with torch.no_grad():
        for t in tensors:
            mean = t.float().mean()
            std = t.float().std() if t.numel() > 1 else torch.zeros(())
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
            t.copy_((mean + std * noise).to(t.dtype))


def _seed(*parts: int) -> int:
    """A torch seed from integers (redraw seed, block)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def randomised_distiller(distiller, random_state: int = 0):
    """A copy of ``distiller`` with its learned weights redrawn (seeded); buffers kept."""
    import torch

    out = copy.deepcopy(distiller)
    _redraw_(list(out.parameters()), torch.Generator().manual_seed(int(random_state)))
    return out.eval()


def n_blocks(encoder) -> int:
    """Transformer blocks of the encoder's vision tower."""
    return len(encoder.vision_model.vision_model.encoder.layers)


def _rest(vm) -> list:
    """The vision tower's parameters outside its blocks: patch and position embeddings, class token, layer
    norms before and after the blocks, the output projection."""
    inside = {id(t) for t in vm.vision_model.encoder.layers.parameters()}
    return [t for t in vm.parameters() if id(t) not in inside]


def randomised_blocks(encoder, n_last: int, random_state: int = 0):
    """A copy of ``encoder`` whose vision tower's last ``n_last`` blocks are redrawn (block ``i`` with seed
    ``(random_state, i)``, so the cascade is cumulative); ``n_last`` = blocks + 1 also redraws everything
    outside the blocks (``_rest``: embeddings, layer norms, projection). Every other tensor is shared with
    ``encoder`` (not copied, never written); ``cache_key`` names the randomisation."""
    import torch

    # torch only when a check runs: the analyses import this module, and bundles open without torch
    from ..model.image_forward import ClipImageForward

    vm = encoder.vision_model
    layers = vm.vision_model.encoder.layers
    chosen = list(range(max(len(layers) - int(n_last), 0), len(layers)))
    rest = int(n_last) > len(layers)
    own = {id(t) for i in chosen for t in [*layers[i].parameters(), *layers[i].buffers()]}
    own |= {id(t) for t in _rest(vm)} if rest else set()
    memo = {id(t): t for t in [*vm.parameters(), *vm.buffers()] if id(t) not in own}
    vm2 = copy.deepcopy(vm, memo)
    for i in chosen:
        block = vm2.vision_model.encoder.layers[i]
        _redraw_([p.data for p in block.parameters()], torch.Generator().manual_seed(_seed(random_state, i)))
    if rest:
        _redraw_([p.data for p in _rest(vm2)], torch.Generator().manual_seed(_seed(random_state, len(layers))))
    out = copy.copy(encoder)  # the same info, preprocessing, device and dtype; other weights shared
    out.vision_model = vm2
    out.image_forward = ClipImageForward(vm2).eval()
    out.cache_key = f"{encoder.cache_key}-random-blocks-{int(n_last)}-{int(random_state)}"
    return out


def randomised_last_block(encoder, random_state: int = 0):
    """``randomised_blocks(encoder, 1, random_state)``: only the last block redrawn."""
    return randomised_blocks(encoder, 1, random_state)


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


def ssim_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structural similarity of maps ``a, b [..., side, side]`` -> ``[...]``, as they look on screen: each map
    min-max scaled to [0, 1] (as the overlay shows it), then one SSIM window over the whole map (Wang et al.
    2004, ``C1 = 0.01²``, ``C2 = 0.03²``). 1 for maps that look the same; about 0 for unrelated ones; a constant
    map counts as all zeros."""
    def scaled(m):
        m = np.asarray(m, np.float64).reshape(*np.shape(m)[:-2], -1)
        m = np.nan_to_num(m, nan=0.0)
        lo, hi = m.min(-1, keepdims=True), m.max(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)

    x, y = scaled(a), scaled(b)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = x.mean(-1), y.mean(-1)
    vx, vy = x.var(-1), y.var(-1)
    cov = ((x - mx[..., None]) * (y - my[..., None])).mean(-1)
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def map_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[..., 2]``: ``SIMILARITIES`` (Spearman, SSIM) of maps ``a, b [..., side, side]``."""
    return np.stack([spearman_maps(a, b), ssim_maps(a, b)], axis=-1)


def target_sensitivity(maps: np.ndarray) -> np.ndarray:
    """Maps ``[B, K, side, side]`` -> ``[B, K]``: per image, the median rank correlation of each target's map
    with the other targets' maps (NaN with one target)."""
    maps = np.asarray(maps, np.float64)
    n_k = maps.shape[1]
    if n_k < 2:
        return np.full(maps.shape[:2], np.nan)
    rho = spearman_maps(maps[:, :, None], maps[:, None, :])  # [B, K, K]
    rho[:, np.arange(n_k), np.arange(n_k)] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(rho, axis=-1)


@dataclass(frozen=True)
class SanityVerdict:
    """``status`` ("passes", "fails", "not assessed"), ``flagged`` (status is "fails") and one sentence saying
    why, with the measured figures."""

    status: str
    reason: str

    @property
    def flagged(self) -> bool:
        return self.status == "fails"


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def sanity_verdict(after_distiller: Sequence[float], after_cascade: Sequence[float], target_rho: float,
                   encoder_random: bool, threshold: float = RANK_THRESHOLD,
                   target_threshold: float = TARGET_THRESHOLD) -> SanityVerdict:
    """The verdict on one target's maps from its mean similarities (``SIMILARITIES``: Spearman, SSIM) after
    redrawing the distiller and after the whole cascade, its target sensitivity, and whether
    the CLIP is a random initialisation (then "not assessed", with the figures)."""
    figures = (f"rank correlation {_fmt(after_distiller[0])} with the classifier redrawn, {_fmt(after_cascade[0])} "
               f"with every layer redrawn; SSIM {_fmt(after_distiller[1])} / {_fmt(after_cascade[1])}; "
               f"{_fmt(target_rho)} with the other targets' maps")
    if encoder_random:
        return SanityVerdict("not assessed", f"not assessed: this CLIP is a random initialisation ({figures})")
    survive = [f"{what} ({v:.2f})" for what, vals in (("after redrawing the classifier", after_distiller),
                                                        ("after redrawing every layer", after_cascade))
               for v in vals if np.isfinite(v) and v > threshold][:1]
    if survive:
        return SanityVerdict("fails", f"the maps barely change when the weights are redrawn: similarity above "
                                      f"{threshold:g} {survive[0]} ({figures})")
    if np.isfinite(target_rho) and target_rho > target_threshold:
        return SanityVerdict("fails", f"the maps are the same for every target: rank correlation {target_rho:.2f} "
                                      f"with the other targets' maps ({figures})")
    if not any(np.isfinite(v) for v in (*after_distiller, *after_cascade)):
        return SanityVerdict("fails", "no map varied across patches: the check could not be run")
    return SanityVerdict("passes", f"the maps change when the weights are redrawn and differ between targets "
                                   f"({figures})")


def attention_explain(method: str) -> ExplainFunc:
    """The library's maps (``AttentionRelevance`` with ``method``) as an ``ExplainFunc``."""
    def explain(encoder, distiller, pixel_values, idx):
        return AttentionRelevance(encoder, distiller, method).attribute(pixel_values, target=idx)

    return explain


def step_names(n_steps: int) -> list[str]:
    """Names of the cascade's steps: "classifier", then "+ block L-1" ... "+ block 0" and "+ embeddings"
    (``n_steps - 2`` blocks, then everything else)."""
    blocks = n_steps - 2
    return ["classifier"] + [f"+ block {blocks - s}" for s in range(1, blocks + 1)] + ["+ embeddings"]


@dataclass
class SanityResult:
    """``similarity [B, n_seeds, MAX_STEPS, K, 2]``: ``SIMILARITIES`` after each cascade step (NaN beyond
    ``n_steps``); ``target_rho [B, K]`` (``target_sensitivity``); ``targets`` (K indices); ``n_steps``;
    ``encoder_random``; ``threshold``."""

    targets: list[int]
    similarity: np.ndarray
    target_rho: np.ndarray
    n_steps: int
    encoder_random: bool
    threshold: float = RANK_THRESHOLD

    @property
    def rho(self) -> np.ndarray:
        """``[B, K, 2]``: mean rank correlation over seeds after redrawing the distiller, then everything."""
        sp = np.nanmean(self.similarity[..., 0], axis=1)  # [B, steps, K]
        return np.stack([sp[:, 0], sp[:, self.n_steps - 1]], axis=-1)

    def summary(self) -> pd.DataFrame:
        """One row per target (``summarise_similarity``)."""
        return summarise_similarity(self.similarity, self.target_rho, self.targets, self.encoder_random,
                                    self.threshold)


def valid_steps(similarity: np.ndarray) -> int:
    """Cascade steps present in ``similarity [..., MAX_STEPS, K, 2]`` (SSIM is never NaN there)."""
    finite = np.isfinite(similarity[..., 1]).reshape(-1, similarity.shape[-3], similarity.shape[-2]).any(axis=(0, 2))
    return int(finite.sum())


def _per_image(similarity: np.ndarray) -> np.ndarray:
    """``[B, seeds, steps, K, 2]`` -> ``[B, steps, K, 2]``: means over seeds (NaN-aware)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(similarity, axis=1)


def _mean_ci(v: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) over images of ``v [B]``: mean +- 1.96 standard errors (NaN with < 2 values)."""
    v = v[np.isfinite(v)]
    if not len(v):
        return np.nan, np.nan, np.nan
    mean = float(v.mean())
    half = Z95 * float(v.std(ddof=1)) / np.sqrt(len(v)) if len(v) > 1 else np.nan
    return mean, mean - half, mean + half


SANITY_COLUMNS: tuple[str, ...] = (
    "target", "target_name", "n_images", "n_seeds", "rho_distiller", "rho_distiller_low", "rho_distiller_high",
    "ssim_distiller", "rho_cascade", "rho_cascade_low", "rho_cascade_high", "ssim_cascade", "target_rho",
    "encoder_random", "status", "flagged", "reason")


def summarise_similarity(similarity: np.ndarray, target_rho: np.ndarray, targets: Sequence[int],
                         encoder_random: bool, threshold: float = RANK_THRESHOLD) -> pd.DataFrame:
    """``similarity [B, seeds, MAX_STEPS, K, 2]``, ``target_rho [B, K]`` -> one row per target
    (``SANITY_COLUMNS``): means over seeds and images with 95% intervals over images, after redrawing the
    distiller (``*_distiller``) and after the whole cascade (``*_cascade``), and the verdict."""
    per = _per_image(similarity)
    last = max(valid_steps(similarity) - 1, 0)
    rows = []
    for k, t in enumerate(targets):
        d, dl, dh = _mean_ci(per[:, 0, k, 0])
        c, cl, ch = _mean_ci(per[:, last, k, 0])
        td, tc = _mean_ci(per[:, 0, k, 1])[0], _mean_ci(per[:, last, k, 1])[0]
        trho = _mean_ci(target_rho[:, k])[0]
        verdict = sanity_verdict((d, td), (c, tc), trho, encoder_random, threshold)
        rows.append({"target": int(t), "target_name": TARGET_NAMES[t], "n_images": int(len(similarity)),
                     "n_seeds": int(similarity.shape[1]), "rho_distiller": d, "rho_distiller_low": dl,
                     "rho_distiller_high": dh, "ssim_distiller": td, "rho_cascade": c, "rho_cascade_low": cl,
                     "rho_cascade_high": ch, "ssim_cascade": tc, "target_rho": trho,
                     "encoder_random": bool(encoder_random), "status": verdict.status, "flagged": verdict.flagged,
                     "reason": verdict.reason})
    return pd.DataFrame(rows, columns=list(SANITY_COLUMNS))


def cascade_table(similarity: np.ndarray, targets: Sequence[int]) -> pd.DataFrame:
    """The cascade curve: one row per step, target and similarity: step, step_name, target, target_name,
    similarity (``SIMILARITIES``), value (mean over seeds and images), low, high (95% over images)."""
    per = _per_image(similarity)
    n_steps = valid_steps(similarity)
    names = step_names(n_steps)
    rows = []
    for s in range(n_steps):
        for k, t in enumerate(targets):
            for m, sim in enumerate(SIMILARITIES):
                mean, low, high = _mean_ci(per[:, s, k, m])
                rows.append({"step": s, "step_name": names[s], "target": int(t), "target_name": TARGET_NAMES[t],
                             "similarity": sim, "value": mean, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["step", "step_name", "target", "target_name", "similarity", "value", "low",
                                       "high"])


class ParameterRandomisation:
    """Captum-shaped cascading model-parameter randomisation test with a target-sensitivity check.

    Parameters
    ----------
    encoder : ``ClipEncoder`` whose vision blocks the cascade redraws (on copies).
    distiller : ``Distiller``, redrawn first (on a copy).
    method : the relevance method whose maps are tested (``AttentionRelevance``), unless ``explain`` is given.
    random_state : base seed; redraw seed ``r`` of ``n_seeds`` uses ``(random_state, r)``.
    n_seeds : redraw seeds of the cascade (its figures are averaged).
    cascade : redraw the blocks down to the first (True) or stop after the distiller (False).
    explain : ``ExplainFunc`` replacing the maps under test.
    encoder_random : whether the CLIP is a random initialisation (default: ``encoder.info.source``).
    threshold : ``RANK_THRESHOLD``.

    Examples
    --------
    ``ParameterRandomisation(encoder, distiller).evaluate(pixel_values).summary()``: one row per target.
    """

    def __init__(self, encoder, distiller, method: str = "last-block", random_state: int = 0,
                 n_seeds: int = DEFAULT_SEEDS, cascade: bool = True,
                 explain: ExplainFunc | None = None, encoder_random: bool | None = None,
                 threshold: float = RANK_THRESHOLD) -> None:
        self.encoder = encoder
        self.distiller = distiller
        self.method = method
        self.random_state = random_state
        self.n_seeds = n_seeds
        self.cascade = cascade
        self.explain = explain
        self.encoder_random = encoder_random
        self.threshold = threshold

    def _original(self, pixel_values, idx: list[int], original) -> np.ndarray:
        explain = self.explain or attention_explain(self.method)
        if original is None:
            original = explain(self.encoder, self.distiller, pixel_values, idx)
        original = np.asarray(original.detach().cpu() if hasattr(original, "detach") else original, np.float64)
        if original.shape[:2] != (len(pixel_values), len(idx)):
            raise InputError(f"original maps have shape {original.shape}, expected [{len(pixel_values)}, {len(idx)}, "
                             "side, side].", "pass the maps of the same images and targets, or none.")
        return original

    def evaluate(self, pixel_values: torch.Tensor, target: int | Sequence[int] | None = None,
                 original=None) -> SanityResult:
        """Similarities of the maps to the original ones after every cascade step and redraw seed.

        Parameters
        ----------
        pixel_values : ``[B, 3, S, S]``, as from ``encoder.preprocess``.
        target : one index, K indices, or None for all 17.
        original : ``[B, K, side, side]`` maps of the unchanged models (e.g. cached); None: computed here.

        Returns
        -------
        ``SanityResult``: ``similarity [B, n_seeds, MAX_STEPS, K, 2]`` (``SIMILARITIES``; NaN past the steps
        run), ``target_rho [B, K]`` (target sensitivity).
        """
        idx = _target_indices(target)
        if int(self.n_seeds) < 1:
            raise InputError(f"n_seeds = {self.n_seeds} must be at least 1.", "use n_seeds=3.")
        explain = self.explain or attention_explain(self.method)
        original = self._original(pixel_values, idx, original)
        n_steps = min(2 + n_blocks(self.encoder), MAX_STEPS) if self.cascade else 1
        sim = np.full((len(pixel_values), int(self.n_seeds), MAX_STEPS, len(idx), 2), np.nan)
        for r in range(int(self.n_seeds)):
            seed = _seed(self.random_state, r)
            dist = randomised_distiller(self.distiller, seed)
            for s in range(n_steps):
                enc = self.encoder if s == 0 else randomised_blocks(self.encoder, s, seed)
                maps = np.asarray(explain(enc, dist, pixel_values, idx), np.float64)
                sim[:, r, s] = map_similarity(original, maps)
        random_enc = self.encoder_random
        if random_enc is None:
            random_enc = getattr(getattr(self.encoder, "info", None), "source", "") == "random"
        return SanityResult(idx, sim, target_sensitivity(original), n_steps, bool(random_enc), self.threshold)


__all__ = ["DEFAULT_SEEDS", "MAX_STEPS", "ParameterRandomisation", "RANK_THRESHOLD", "SANITY_COLUMNS",
           "SANITY_VERSION", "SIMILARITIES", "SanityResult", "SanityVerdict", "TARGET_THRESHOLD", "attention_explain",
           "cascade_table", "map_similarity", "n_blocks", "randomised_blocks", "randomised_distiller",
           "randomised_last_block", "sanity_verdict", "spearman_maps", "ssim_maps", "step_names",
           "summarise_similarity", "target_sensitivity", "valid_steps"]
