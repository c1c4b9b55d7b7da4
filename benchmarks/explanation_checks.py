"""Explanation checks on planted data (do they say what they measure?): sign-correct faithfulness on the
probability scale, its stability over seeds, the fill (baseline) comparison, the sanity check's flags, and the cost.

    HF_HUB_OFFLINE=1 python benchmarks/explanation_checks.py [--images 24] [--seeds 10] [--quick]

Everything is made here, at test scale: the tiny random CLIP of the tests (32 px, 4 x 4 patches of 8 px,
2 blocks), a distiller trained (``DistillerTrainer``) on "checkerboard in one patch" (fake) against clean
images (real), and a shuffled-label control (the same images, the labels permuted). The maps under test:

- planted-box map: 1 on the artifact's patch, 1e-2 noise elsewhere (the patch the model uses, by design);
- occlusion-ordered maps: each patch's own occlusion effect (``DeletionInsertion.occlusion``), per target;
- the control's box map: the same box map scored on the shuffled-label control's fake probability;
- the library's maps (``AttentionRelevance``, last-block) for the seed-stability table.

Prints Markdown tables (benchmarks/RESULTS.md section 22).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import planted_image  # noqa: E402

from asap_core.method.faithfulness import DeletionInsertion  # noqa: E402
from asap_core.method.sanity import ParameterRandomisation  # noqa: E402
from asap_core.storage.schema import FAKE_LOGIT, N_TARGETS  # noqa: E402

SIDE = 4


def encoder_and_models(n_train: int = 120):
    """The tiny CLIP, the planted detector and the shuffled-label control."""
    from asap_core.method.training import DistillerTrainer
    from asap_core.model.encoder import ClipEncoder
    from asap_core.pipeline.demo import write_random_clip

    path = write_random_clip(Path(tempfile.mkdtemp()) / "clip", image_size=32, patch_size=8, dim=64, seed=0)
    enc = ClipEncoder.from_pretrained(str(path), device="cpu")
    rng = np.random.default_rng(0)
    images = [planted_image(rng, None) for _ in range(n_train)] + \
             [planted_image(rng, int(rng.integers(SIDE * SIDE))) for _ in range(n_train)]
    y = np.array([0] * n_train + [1] * n_train)
    emb = enc.encode_images(images).numpy()
    det = DistillerTrainer(projection=np.eye(64, dtype=np.float32), random_state=0).fit(emb, y)
    shuffled = np.random.default_rng(1).permutation(y)
    ctl = DistillerTrainer(projection=np.eye(64, dtype=np.float32), random_state=0).fit(emb, shuffled)
    return enc, det.model_, ctl.model_, images


def fakes(enc, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    pos = rng.integers(SIDE * SIDE, size=n)
    return enc.preprocess([planted_image(rng, int(p)) for p in pos]), pos


def box_maps(pos: np.ndarray, k: int) -> np.ndarray:
    """``[n, k, 4, 4]``: 1 on the artifact's patch, small noise elsewhere."""
    maps = np.random.default_rng(5).random((len(pos), k, SIDE * SIDE)) * 0.01
    maps[np.arange(len(pos)), :, pos] += 1.0
    return maps.reshape(len(pos), k, SIDE, SIDE)


def fmt(row) -> str:
    return f"{row['ratio']:.2f} [{row['ratio_low']:.2f}, {row['ratio_high']:.2f}] ({row['verdict']})"


def baseline_table(enc, det, ctl, images, px, pos) -> None:
    """Planted-box / occlusion / control ratios and the fill's distance from the data, per fill."""
    mean_img = enc.preprocess(images).mean(0).numpy()
    clean = enc.preprocess(images[:40])
    print("| fill | fill's p_fake (clean / fakes) | box map, fake prob. | occlusion map, fake prob. | "
          "control's box map | occlusion maps credited (targets that react) |")
    print("|---|---|---|---|---|---|")
    for name, base in (("grey", "grey"), ("blur", "blur"), ("dataset mean", mean_img)):
        metric = DeletionInsertion(enc, det, baseline=base)
        none, every = np.zeros((1, SIDE * SIDE), bool), np.ones((1, SIDE * SIDE), bool)
        fill_p = np.mean([metric._forward(p, none)[0, FAKE_LOGIT] for p in [*px, *clean]])
        p_clean = np.mean([metric._forward(p, every)[0, FAKE_LOGIT] for p in clean])
        p_fake = np.mean([metric._forward(p, every)[0, FAKE_LOGIT] for p in px])
        box = metric.evaluate(px, box_maps(pos, 1), target=FAKE_LOGIT).summary().iloc[0]
        occ = metric.occlusion(px)
        occ_sum = metric.evaluate(px, occ).summary()
        react = occ_sum[occ_sum["n_images"] > 0]
        ctrl = DeletionInsertion(enc, ctl, baseline=base).evaluate(px, box_maps(pos, 1), target=FAKE_LOGIT)
        print(f"| {name} | {fill_p:.3f} ({p_clean:.3f} / {p_fake:.3f}) | {fmt(box)} | "
              f"{fmt(occ_sum.set_index('target').loc[FAKE_LOGIT])} | {fmt(ctrl.summary().iloc[0])} | "
              f"{int(react['beats_random'].sum())} of {len(react)} (min ratio {react['ratio'].min():.2f}) |")


def rises_under_fill(enc, det, px) -> None:
    """How many targets rise under the default fill on every image, and the occlusion maps' figures there."""
    metric = DeletionInsertion(enc, det)
    occ = metric.occlusion(px)
    res = metric.evaluate(px, occ)
    delta = res.curves[:, :, 0, 0] - res.curves[:, :, 0, -1]
    rising = [t for t in range(N_TARGETS) if (delta[:, t] < 0).all()]
    table = res.summary().set_index("target")
    print(f"\nTargets that rise under the fill on every image: {len(rising)} of {N_TARGETS}; their occlusion-"
          f"ordered maps: " + ", ".join(f"{t}: {table.loc[t, 'ratio']:.2f} [{table.loc[t, 'ratio_low']:.2f}, "
                                        f"{table.loc[t, 'ratio_high']:.2f}]" for t in rising))


def stability(enc, det, px, n_seeds: int, n_random: int = 16) -> None:
    """CV over ``n_seeds`` random_state values of the per-target summary ratio (``n_random`` orders), of the
    per-image ratios a tile shows, and the share of per-image verdicts that change with the seed."""
    from asap_core.method.relevance import relevance_maps

    maps = relevance_maps(enc, det, px).numpy()
    from asap_core.method.faithfulness import image_figures, ratio_verdict

    ratios, seconds, forwards, per_image, verdicts = [], [], [], [], []
    calls = []
    original = enc.embed
    enc.embed = lambda p, **kw: (calls.append(len(p)), original(p))[1]
    try:
        for seed in range(n_seeds):
            calls.clear()
            t0 = time.perf_counter()
            res = DeletionInsertion(enc, det, n_random=n_random, random_state=seed).evaluate(px, maps)
            seconds.append((time.perf_counter() - t0) / len(px))
            forwards.append(sum(calls) / len(px))
            ratios.append(res.summary()["ratio"].to_numpy())
            fig = image_figures(res.rows, res.x, list(range(N_TARGETS)))
            per_image.append(fig["ratio"])
            verdicts.append(np.vectorize(ratio_verdict)(fig["ratio"], fig["ratio_low"], fig["ratio_high"]))
    finally:
        del enc.embed
    from asap_core.method.faithfulness import occlusion_agreement, occlusion_summary

    t0 = time.perf_counter()
    effects = DeletionInsertion(enc, det).occlusion(px)
    occ_s = (time.perf_counter() - t0) / len(px)
    occ = occlusion_summary(occlusion_agreement(maps, effects), list(range(N_TARGETS))).set_index("target")
    print(f"\nOcclusion agreement of the last-block maps ({len(px)} images): fake target "
          f"{occ.loc[FAKE_LOGIT, 'occlusion_rho']:+.2f} [{occ.loc[FAKE_LOGIT, 'occlusion_low']:+.2f}, "
          f"{occ.loc[FAKE_LOGIT, 'occlusion_high']:+.2f}], dimensions median {occ['occlusion_rho'].median():+.2f}; "
          f"{occ_s:.3f} s and {SIDE * SIDE + 1} forwards per image")
    last = res.summary().set_index("target").loc[FAKE_LOGIT]
    print(f"Last-block maps, fake probability: ratio {fmt(last)}")
    r = np.array(ratios)  # [seeds, 17]
    cv = r.std(0, ddof=1) / r.mean(0)
    pi = np.array(per_image)  # [seeds, n, 17]
    with np.errstate(all="ignore"):
        pcv = np.nanmedian(pi.std(0, ddof=1) / np.abs(pi.mean(0)))
    v = np.array(verdicts)
    flips = float((v != v[:1]).any(0).mean())
    print(f"\nPer-image ratios ({n_random} orders): median CV over seeds {pcv:.1%}; per-image verdicts that change "
          f"with the seed: {flips:.1%}")
    print(f"\nSeed stability ({len(px)} images, {n_seeds} seeds, steps 16, n_random {n_random}, blur fill, all 17 "
          f"targets, last-block maps): CV of the per-target summary ratio: median {np.median(cv):.2%}, "
          f"max {cv.max():.2%} (target {int(cv.argmax())}); ratio range over targets {r.mean(0).min():.2f}-"
          f"{r.mean(0).max():.2f}. Cost per image: {np.median(seconds):.2f} s, {np.median(forwards):.0f} "
          f"perturbed copies through the model (median of {n_seeds} runs).")


def sanity_flags(enc, det, px) -> None:
    """One map reused for every target; the library's maps; flagged counts (CLIP treated as trained)."""
    from asap_core.method.relevance import AttentionRelevance

    def reused(encoder, distiller, p, idx):
        one = AttentionRelevance(encoder, distiller, "last-block").attribute(p, target=[FAKE_LOGIT])
        return one.expand(-1, len(idx), -1, -1)

    def edges(encoder, distiller, p, idx):
        grey = p.mean(1)
        e = (grey[:, 1:, :-1] - grey[:, :-1, :-1]).abs() + (grey[:, :-1, 1:] - grey[:, :-1, :-1]).abs()
        e = torch.nn.functional.pad(e, (0, 1, 0, 1)).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2))
        real = AttentionRelevance(encoder, distiller, "last-block").attribute(p, target=idx)
        real = real / real.flatten(2).amax(-1).clamp(min=1e-12)[..., None, None]
        return e[:, None] / e.flatten(1).amax(-1)[:, None, None, None] + 0.05 * real

    for name, explain in (("one map for all targets", reused), ("edge map + 5% of the real map", edges),
                          ("last-block maps", None)):
        t0 = time.perf_counter()
        res = ParameterRandomisation(enc, det, explain=explain, encoder_random=False).evaluate(px)
        s = res.summary()
        print(f"\nSanity, {name} ({len(px)} images, 3 seeds, cascade of {res.n_steps} steps): "
              f"{int(s['flagged'].sum())} of {len(s)} targets flagged; target sensitivity median "
              f"{s['target_rho'].median():.2f}; rank corr. after the classifier median "
              f"{s['rho_distiller'].median():.2f}"
              f", after the cascade {s['rho_cascade'].median():.2f}; SSIM after the classifier median "
              f"{s['ssim_distiller'].median():.2f}; {(time.perf_counter() - t0) / len(px):.2f} s / image")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--only", default="baseline,rises,stability,sanity")
    ap.add_argument("--n-random", type=int, default=16, help="random orders in the stability table")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    enc, det, ctl, images = encoder_and_models()
    px, pos = fakes(enc, args.images)
    parts = args.only.split(",")
    if "baseline" in parts:
        baseline_table(enc, det, ctl, images, px, pos)
    if "rises" in parts:
        rises_under_fill(enc, det, px)
    if "stability" in parts:
        stability(enc, det, px, args.seeds, args.n_random)
    if "sanity" in parts:
        sanity_flags(enc, det, px[:8])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
