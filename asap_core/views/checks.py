"""How far to trust a map, in the views' words: faithfulness (deletion against random) and the sanity check
(parameter randomisation) as sentences, tile captions, a per-dimension table and a chart.

Pure functions over the reports of ``analyses.explanation_checks`` (``FaithfulnessReport.summary`` /
``per_image``, ``SanityReport.summary``); dimension names come in as ``views.labels`` gives them.
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from ..analyses.explanation_checks import DEFAULT_RANDOM, DEFAULT_STEPS
from ..storage.schema import FAKE_LOGIT, N_TARGETS
from ..storage.labels import target_label
from .text import as_text

#: a ratio within this of 1 reads "no better than random" (the per-image spread of the curves is larger)
NEUTRAL_BAND = 0.1
#: forward passes one relevance map costs, counted as the budget counts images (forward + batched VJP)
MAP_PASSES = 3
#: images per on-demand check (the dimension's top images; the attention view's picked images)
CHECK_IMAGES = 4


def forwards_per_image(n_targets: int, steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM) -> int:
    """Forward passes of one image's deletion and insertion curves for ``n_targets`` targets (at most; see
    ``method.faithfulness``): ``2 + 2 (steps - 1) (K + 2 n_random)``."""
    return 2 + 2 * (int(steps) - 1) * (int(n_targets) + 2 * int(n_random))


def check_charge(n_faithfulness: int, n_targets: int, n_sanity: int) -> int:
    """What computing the checks costs a visitor, in relevance-map images (the budget's unit): the curves of
    ``n_faithfulness`` images over ``n_targets`` targets, and the sanity check of ``n_sanity`` images (two
    recomputed maps each, one per randomised model)."""
    passes = n_faithfulness * forwards_per_image(n_targets) + n_sanity * 2 * MAP_PASSES
    return int(np.ceil(passes / MAP_PASSES))


def ratio_text(ratio: float) -> str:
    """``2.3`` -> "2.3x more faithful than random"; near 1 "no better than random"; below "worse than random"."""
    if ratio is None or not np.isfinite(ratio):
        return "faithfulness not measurable (the target does not react to removing patches)"
    if ratio >= 1 + NEUTRAL_BAND:
        return f"{ratio:.1f}x more faithful than random"
    if ratio > 1 - NEUTRAL_BAND:
        return "no more faithful than random"
    return f"less faithful than random ({ratio:.2f}x)"


def _row(table: pd.DataFrame | None, target: int) -> pd.Series | None:
    if table is None or table.empty:
        return None
    hit = table[table["target"] == int(target)]
    return None if hit.empty else hit.iloc[0]


def trust_lines(target: int, faith: pd.DataFrame | None, sanity: pd.DataFrame | None,
                names: Sequence[str] = ()) -> list[str]:
    """Sentences (Markdown; names and stored reasons shown as text) on one target's maps (``faith`` /
    ``sanity``: report summaries; None: not computed)."""
    name = as_text(target_label(target, names))
    lines = []
    f = _row(faith, target)
    if f is not None:
        n = int(f["n_images"])
        verdict = ratio_text(float(f["ratio"]))
        sure = "" if bool(f["beats_random"]) else " (not significant on so few images)" if n < 8 else \
            " (within the noise: not better than random)"
        ratio = float(f["ratio"])
        pace = "faster than" if ratio >= 1 + NEUTRAL_BAND else "about as fast as" if ratio > 1 - NEUTRAL_BAND \
            else "more slowly than"
        lines.append(f"**{name}: its maps are {verdict}**{sure if ratio >= 1 + NEUTRAL_BAND else ''}: "
                     f"removing patches in the map's order lowers it {pace} in a random order "
                     f"(area between curves {f['deletion_abc']:+.3f}; {n} image{'s' * (n != 1)}).")
    s = _row(sanity, target)
    if s is not None:
        mark = "Fails the sanity check" if bool(s["flagged"]) else "Passes the sanity check"
        lines.append(f"**{mark}**: {as_text(s['reason'])} (rank correlation {s['rho_distiller']:.2f} with the "
                     f"classifier redrawn, {s['rho_last_block']:.2f} with CLIP's last block redrawn).")
    return lines


def tile_note(image_id: str, target: int, per_image: pd.DataFrame | None, flagged: set[int]) -> str:
    """The short addition to one attention tile's caption: " · 1.8x random", " · fails sanity" or ""."""
    parts = []
    if per_image is not None and not per_image.empty:
        hit = per_image[(per_image["image_id"] == image_id) & (per_image["target"] == int(target))]
        if not hit.empty and np.isfinite(hit.iloc[0]["ratio"]):
            parts.append(f"{float(hit.iloc[0]['ratio']):.1f}x random")
    if int(target) in flagged:
        parts.append("fails sanity")
    return "".join(f" · {p}" for p in parts)


def flagged_targets(sanity: pd.DataFrame | None) -> set[int]:
    """Targets whose maps fail the sanity check."""
    if sanity is None or sanity.empty:
        return set()
    return {int(t) for t in sanity.loc[sanity["flagged"].astype(bool), "target"]}


def flagged_reason(sanity: pd.DataFrame) -> str:
    """One sentence for the flagged targets of a sanity summary: the most common reason, or "" if none."""
    reasons = sanity.loc[sanity["flagged"].astype(bool), "reason"] if sanity is not None else pd.Series([], dtype=str)
    return "" if reasons.empty else f"{reasons.value_counts().index[0]}."


def checks_table(faith: pd.DataFrame | None, sanity: pd.DataFrame | None,
                 names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per target present in either summary: target, name, faithful (ratio), beats random, rank
    correlation after randomising the classifier / the last block, sanity (passes / fails)."""
    targets = sorted({int(t) for t in (faith["target"] if faith is not None else [])}
                     | {int(t) for t in (sanity["target"] if sanity is not None else [])})
    rows = []
    for t in targets:
        f, s = _row(faith, t), _row(sanity, t)
        rows.append({"target": t, "name": target_label(t, names),
                     "x more faithful than random": float(f["ratio"]) if f is not None else np.nan,
                     "beats random": bool(f["beats_random"]) if f is not None else None,
                     "rank corr., classifier redrawn": float(s["rho_distiller"]) if s is not None else np.nan,
                     "rank corr., last block redrawn": float(s["rho_last_block"]) if s is not None else np.nan,
                     "sanity": ("fails" if bool(s["flagged"]) else "passes") if s is not None else ""})
    return pd.DataFrame(rows)


def curves_chart(curves: pd.DataFrame, target: int, names: Sequence[str] = (),
                 width: int = 300) -> alt.Chart:
    """Deletion curve of ``target``: the map's order against the random order and area-matched random masks
    (normalised target value over the fraction of patches removed)."""
    c = curves[(curves["target"] == int(target)) & curves["curve"].isin(["deletion", "random_deletion",
                                                                          "mask_deletion"])].copy()
    c["order"] = c["curve"].map({"deletion": "map's order", "random_deletion": "random order",
                                 "mask_deletion": "random mask, same area"})
    return alt.Chart(c, title=f"Deletion curve · {target_label(target, names)}").mark_line(point=True).encode(
        x=alt.X("x:Q", title="fraction of patches removed"),
        y=alt.Y("y:Q", title="score left (1 = image)"),
        color=alt.Color("order:N", title="patches removed in"),
        tooltip=["order", alt.Tooltip("x:Q", format=".2f"), alt.Tooltip("y:Q", format=".3f")],
    ).properties(width=width, height=240)


def check_targets_for(dim: int) -> list[int]:
    """The targets a dimension's check computes: the dimension and the fake logit (what its maps explain)."""
    return sorted({int(dim), FAKE_LOGIT}) if 0 <= int(dim) < N_TARGETS else [FAKE_LOGIT]


def attention_check_targets(rows: Sequence[dict], k: int = 3) -> list[int]:
    """The targets the attention view checks: the fake logit and, per image, the ``k`` dimensions that
    support its prediction most (``rows`` of ``views.attention.attention_rows``, whose ``order`` is that)."""
    return sorted({FAKE_LOGIT} | {int(d) for r in rows for d in list(r["order"])[:k]})


def tile_captions(row: dict, per_image: pd.DataFrame | None, flagged: set[int]) -> list[str]:
    """The captions of one image's tiles (``row["tiles"]``) with each map's check appended (``tile_note``)."""
    return [t.caption + ("" if t.target < 0 else tile_note(row["image_id"], t.target, per_image, flagged))
            for t in row["tiles"]]
