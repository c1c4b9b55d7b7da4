"""Honest numbers: what a bundle's figures are worth, said before anyone reads them.

``trust_notices(bundle)`` is what every page of the app shows at the top of its main area, and what
``asap info`` and ``analyze`` print: a bundle made with a randomly initialised CLIP (the
demo's fallback when no weights were found) has numbers that carry no meaning; a classifier close to chance
on held-out images (validation ROC-AUC below ``schema.MEANINGFUL_AUC``) is weak evidence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.hints import DEFAULT_MODEL, load_hint, offline_hint
from ..storage import schema as S

LEVELS: tuple[str, ...] = ("warning", "caution")  # warning: the numbers mean nothing; caution: weak evidence


@dataclass(frozen=True)
class Notice:
    """One notice: ``level`` (``LEVELS``), ``text`` (what to know), ``fix`` (what to do; may be empty)."""

    level: str
    text: str
    fix: str = ""

    def line(self) -> str:
        """The notice as one line of plain text (the command line's form)."""
        head = "WARNING" if self.level == "warning" else "Caution"
        return f"{head}: {self.text}" + (f"\n  fix: {self.fix}" if self.fix else "")


def encoder_source(info: S.EncoderInfo) -> str:
    """Where the bundle's CLIP came from (``schema.ENCODER_SOURCES``). Bundles written before the field was
    recorded say "unknown", except when their model folder is a random CLIP (marker file or folder name)."""
    if info.source in S.ENCODER_SOURCES and info.source != "unknown":
        return info.source
    return "random" if S.is_random_clip(info.model_id) else "unknown"


def held_out_auc(metrics: dict) -> tuple[float, str] | None:
    """(ROC-AUC, on what) of the classifier: validation images, else (an applied distiller) all labelled images;
    None when no such figure exists (one class only, no labels)."""
    for key, where in (("val", "held-out images"), ("all", "this bundle's labelled images")):
        auc = (metrics.get(key) or {}).get("roc_auc")
        if isinstance(auc, (int, float)) and not math.isnan(auc):
            return float(auc), where
    return None


def random_model_notice(where: str = "app") -> Notice:
    """The notice of a bundle made with a randomly initialised CLIP; ``where`` as in ``model.hints.WHERES``."""
    text = ("These numbers carry no meaning: this bundle was made with a randomly initialised CLIP (no weights "
            "were found). Its accuracy, ROC-AUC, dimensions, maps and generator confusion come from random "
            "features, not from anything CLIP learned about images: do not present them as findings.")
    if where == "hosted":
        return Notice("warning", text, "the explorer's operator can analyse the images again with real CLIP "
                                       "weights.")
    if where == "app":
        return Notice("warning", text, (
            "analyse the folder again with real CLIP weights: type a local CLIP folder into the Model field of the "
            "sidebar's \u201cAnalyse an image folder\u201d, or (for the demo) start the app with "
            f"ASAP_MODEL=/path/to/folder; {offline_hint(DEFAULT_MODEL)}"))
    return Notice("warning", text, f"run `analyze` again with real CLIP weights: {load_hint(DEFAULT_MODEL, where)}")


def notices(source: str, metrics: dict, where: str = "app") -> list[Notice]:
    """The notices of a bundle whose CLIP came from ``source`` and whose classifier scored ``metrics``."""
    if source == "random":  # one message: a chance-level caution would only repeat it
        return [random_model_notice(where)]
    auc = held_out_auc(metrics)
    if auc is not None and auc[0] < S.MEANINGFUL_AUC:
        return [Notice("caution", f"The classifier is close to chance on {auc[1]} (ROC-AUC {auc[0]:.2f}, below "
                                  f"{S.MEANINGFUL_AUC:.2f}): read its dimensions and maps as weak evidence.",
                       "more labelled images per class, or a larger CLIP, usually separate real from fake better.")]
    return []


def trust_notices(bundle, where: str = "app") -> list[Notice]:
    """The notices of an open ``Bundle``, most serious first (empty when its numbers can be read as they are)."""
    return notices(encoder_source(bundle.encoder_info), bundle.metrics, where)


def metric_label(bundle) -> str:
    """What to write after a bundle's accuracy / ROC-AUC: " (random model: meaningless)" or ""."""
    return " (random model: meaningless)" if encoder_source(bundle.encoder_info) == "random" else ""
