"""How far to trust a map, in the views' words: faithfulness to this model (deletion against random orders,
agreement with each patch's occlusion effect) and the sanity check (cascading parameter randomisation,
target sensitivity) as sentences, tile notes, a per-dimension table and charts.

Every sentence says what its figure tests (whether the maps follow what **this model** uses, not whether the
pattern is a real artifact of generated images), with its 95% interval and the number of images. Pure
functions over the reports of ``analyses.explanation_checks`` (``FaithfulnessReport.summary`` /
``per_image``, ``SanityReport.summary`` / ``cascade``); dimension names come in as ``storage.labels`` gives them.
What computing the checks costs a visitor: ``views.cost.checks_cost``.
"""
from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from ..storage.labels import target_label
from ..storage.schema import FAKE_LOGIT, N_TARGETS
from .text import as_text

#: images per on-demand check (the dimension's top images; the attention view's picked images)
CHECK_IMAGES = 4
#: the sentence every faithfulness figure carries
WHAT_IT_TESTS = ("This tests whether the maps follow what this model uses, not whether the pattern is a real "
                 "artifact of generated images.")


def _interval(low: float, high: float, digits: int = 1, signed: bool = False) -> str:
    """" (95% interval 1.2-2.4" + ...)" or "" where the interval is not defined."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"95% interval {f.format(low)} to {f.format(high)}, "


def _images(n: int) -> str:
    return f"{n} image{'s' * (n != 1)}"


def ratio_text(ratio: float) -> str:
    """``2.34`` -> "2.3x"; NaN -> "not measurable"."""
    return f"{ratio:.1f}x" if ratio is not None and np.isfinite(ratio) else "not measurable"


def _row(table: pd.DataFrame | None, target: int) -> pd.Series | None:
    if table is None or table.empty:
        return None
    hit = table[table["target"] == int(target)]
    return None if hit.empty else hit.iloc[0]


def faithfulness_line(target: int, f: pd.Series, names: Sequence[str] = ()) -> str:
    """One sentence on a target's deletion figure: verdict, ratio, interval, images, what it tests."""
    name, n, ratio = as_text(target_label(target, names)), int(f["n_images"]), float(f["ratio"])
    what = "the fake probability" if int(target) == FAKE_LOGIT else "the dimension's value"
    if not np.isfinite(ratio):
        return (f"**{name} · faithfulness to this model: not measurable**: {what} does not react to removing "
                f"patches ({_images(n)}).")
    verdict = str(f.get("verdict", ""))
    return (f"**{name} · faithfulness to this model: {verdict}**: removing patches in the map's order leaves "
            f"{ratio_text(ratio)} less of {what} than removing them in a random order ("
            f"{_interval(float(f['ratio_low']), float(f['ratio_high']))}{_images(n)}). {WHAT_IT_TESTS}")


def occlusion_line(f: pd.Series) -> str:
    """One sentence on a target's agreement with direct occlusion (rank correlation, interval, images)."""
    rho = float(f.get("occlusion_rho", np.nan))
    if not np.isfinite(rho):
        return ""
    n = int(f["n_images"])
    return (f"**Agreement with occlusion: {rho:+.2f}** (rank correlation between the map and how much the "
            f"target drops when each patch alone is blurred out; 1 = the map ranks the patches the model uses "
            f"as occlusion does, 0 = unrelated; "
            f"{_interval(float(f['occlusion_low']), float(f['occlusion_high']), 2, True)}{_images(n)}).")


def sanity_line(s: pd.Series) -> str:
    """One sentence on a target's sanity check: status, why (escaped), seeds and images."""
    status = str(s.get("status", "fails" if bool(s.get("flagged")) else "passes"))
    parts = [f"{int(s['n_seeds'])} redraws" if "n_seeds" in s else "",
             _images(int(s["n_images"])) if "n_images" in s else ""]
    counts = ", ".join(c for c in parts if c)
    reason = str(s["reason"]).removeprefix(f"{status}: ")  # "not assessed: this CLIP is ..." says it once
    return f"**Sanity check: {status}**: {as_text(reason)}" + (f" ({counts})." if counts else ".")


def trust_lines(target: int, faith: pd.DataFrame | None, sanity: pd.DataFrame | None,
                names: Sequence[str] = ()) -> list[str]:
    """Plain sentences on one target's maps (``faith`` / ``sanity``: report summaries; None: not computed)."""
    lines = []
    f = _row(faith, target)
    if f is not None:
        lines.append(faithfulness_line(target, f, names))
        occ = occlusion_line(f)
        if occ:
            lines.append(occ)
    s = _row(sanity, target)
    if s is not None:
        lines.append(sanity_line(s))
    return lines


def tile_note(image_id: str, target: int, per_image: pd.DataFrame | None, flagged: set[int]) -> str:
    """The short addition to one attention tile's caption: " · 1.8x random (1.2-2.4)" (only with its
    interval over the random orders), " · fails sanity", or ""."""
    parts = []
    if per_image is not None and not per_image.empty:
        hit = per_image[(per_image["image_id"] == image_id) & (per_image["target"] == int(target))]
        if not hit.empty:
            r = hit.iloc[0]
            if np.isfinite(r["ratio"]) and np.isfinite(r.get("ratio_low", np.nan)):
                parts.append(f"{float(r['ratio']):.1f}x random ({max(float(r['ratio_low']), 0):.1f}-"
                             f"{float(r['ratio_high']):.1f})")
    if int(target) in flagged:
        parts.append("fails sanity")
    return "".join(f" · {p}" for p in parts)


def flagged_targets(sanity: pd.DataFrame | None) -> set[int]:
    """Targets whose maps fail the sanity check."""
    if sanity is None or sanity.empty:
        return set()
    return {int(t) for t in sanity.loc[sanity["status"] == "fails", "target"]}


def not_assessed(sanity: pd.DataFrame | None) -> bool:
    """Whether the sanity check was not assessed (a random CLIP)."""
    return sanity is not None and not sanity.empty and bool((sanity["status"] == "not assessed").all())


def flagged_reason(sanity: pd.DataFrame) -> str:
    """One sentence for the flagged targets of a sanity summary: the most common reason, or "" if none."""
    if sanity is None:
        return ""
    reasons = sanity.loc[sanity["status"] == "fails", "reason"].str.split(" \\(").str[0]
    return "" if reasons.empty else f"{reasons.value_counts().index[0]}."


def checks_table(faith: pd.DataFrame | None, sanity: pd.DataFrame | None,
                 names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per target present in either summary: target, name, faithfulness to this model (ratio, its
    interval, verdict), agreement with occlusion, sanity (status, rank correlations, target sensitivity)."""
    targets = sorted({int(t) for t in (faith["target"] if faith is not None else [])}
                     | {int(t) for t in (sanity["target"] if sanity is not None else [])})
    nan = np.nan
    rows = []
    for t in targets:
        f, s = _row(faith, t), _row(sanity, t)
        rows.append({"target": t, "name": target_label(t, names),
                     "x less left than random": float(f["ratio"]) if f is not None else nan,
                     "95% low": float(f["ratio_low"]) if f is not None else nan,
                     "95% high": float(f["ratio_high"]) if f is not None else nan,
                     "faithfulness": str(f["verdict"]) if f is not None else "",
                     "agreement with occlusion": float(f.get("occlusion_rho", nan)) if f is not None else nan,
                     "sanity": str(s["status"]) if s is not None else "",
                     "rank corr., classifier redrawn": float(s["rho_distiller"]) if s is not None else nan,
                     "rank corr., every layer redrawn": float(s["rho_cascade"]) if s is not None else nan,
                     "rank corr. with other targets": float(s["target_rho"]) if s is not None else nan})
    return pd.DataFrame(rows)


def curves_chart(curves: pd.DataFrame, target: int, names: Sequence[str] = (),
                 width: int = 300) -> alt.Chart:
    """Deletion curve of ``target``: the map's order against the random order and area-matched random masks
    (share of the target's value left over the fraction of patches removed)."""
    c = curves[(curves["target"] == int(target)) & curves["curve"].isin(["deletion", "random_deletion",
                                                                          "mask_deletion"])].copy()
    c["order"] = c["curve"].map({"deletion": "map's order", "random_deletion": "random order",
                                 "mask_deletion": "random mask, same area"})
    return alt.Chart(c, title=f"Deletion curve · {target_label(target, names)}").mark_line(point=True).encode(
        x=alt.X("x:Q", title="fraction of patches removed (blurred out)"),
        y=alt.Y("y:Q", title="share of the target left (1 = image)"),
        color=alt.Color("order:N", title="patches removed in"),
        tooltip=["order", alt.Tooltip("x:Q", format=".2f"), alt.Tooltip("y:Q", format=".3f")],
    ).properties(width=width, height=240)


def cascade_chart(cascade: pd.DataFrame, target: int, names: Sequence[str] = (), width: int = 300) -> alt.LayerChart:
    """The sanity cascade of ``target`` (Adebayo et al.'s plot): similarity of the maps to the original after
    redrawing the classifier, then CLIP's blocks from the last down to the first, with 95% intervals."""
    c = cascade[cascade["target"] == int(target)].copy()
    c["similarity"] = c["similarity"].map({"spearman": "rank correlation", "ssim": "SSIM (looks the same)"})
    base = alt.Chart(c).encode(
        x=alt.X("step_name:N", sort=list(dict.fromkeys(c["step_name"])), title="weights redrawn, cumulatively",
                axis=alt.Axis(labelAngle=-30)),
        color=alt.Color("similarity:N", title="similarity to the original map", legend=alt.Legend(orient="bottom")))
    line = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="similarity (1 = unchanged)", scale=alt.Scale(domain=[-0.5, 1])),
        tooltip=["step_name", "similarity", alt.Tooltip("value:Q", format=".2f")])
    band = base.mark_errorbar().encode(y=alt.Y("low:Q", title=None, scale=alt.Scale(domain=[-0.5, 1])), y2="high:Q")
    return alt.LayerChart(layer=[line, band], title=f"Sanity cascade · {target_label(target, names)}",
                          width=width, height=240)


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


def summary_lines(faith: pd.DataFrame, sanity: pd.DataFrame, targets: Sequence[int],
                  names: Sequence[str] = ()) -> list[str]:
    """The attention view's sentences above the tiles: the fake target's faithfulness and occlusion
    agreement, and the sanity check's outcome over ``targets``."""
    lines = trust_lines(FAKE_LOGIT, faith, None, names)
    flagged = flagged_targets(sanity)
    fake = _row(sanity, FAKE_LOGIT)
    if not_assessed(sanity) and fake is not None:
        lines.append(sanity_line(fake).replace("**Sanity check:", f"**{as_text(target_label(FAKE_LOGIT, names))} "
                                               "· sanity check:", 1))
    elif flagged:
        lines.append(f"**Sanity check: {len(flagged)} of the {len(sanity)} targets' maps fail**: "
                     + flagged_reason(sanity))
    return lines
