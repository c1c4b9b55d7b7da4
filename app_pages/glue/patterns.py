"""Saved patterns as the Patterns and Quiz pages get them: the bundle's list, which impacts are cached, the
missing impacts computed (maps first, then a work slot and a progress bar: ``work.charged_work``), one deleted.

Impacts use the Patterns view's settings (``views.patterns.N_RANDOM`` random masks, ``SEED``); a computed
impact is cached in the bundle, so reading it needs no model."""
from __future__ import annotations

from asap_core.analyses.patterns import Pattern, PatternStore, impact_cached, pattern_impact
from asap_core.storage.bundle import Bundle
from asap_core.views import patterns as vp

from .work import Progress, charged_work, maps_for


def saved(b: Bundle) -> list[Pattern]:
    """The bundle's saved patterns (read afresh: another session may have saved one)."""
    return PatternStore(b).list()


def saved_ids(b: Bundle) -> dict[str, list[str]]:
    """Pattern name -> its image ids (what a quiz drawn from a pattern needs)."""
    return {p.name: list(p.image_ids) for p in saved(b)}


def impacts_cached(b: Bundle, patterns: list[Pattern], method: str) -> list[bool]:
    """Per pattern: whether its impact is cached (reading it computes nothing)."""
    return [impact_cached(b, p, method, vp.N_RANDOM, vp.SEED) for p in patterns]


def compute_impacts(b: Bundle, todo: list[Pattern], method: str) -> bool:
    """The impacts of ``todo``: the maps that selection patterns need (charged as maps), then every image
    masked and re-encoded ``2 + N_RANDOM`` times under one progress bar. False, with the reason shown, when
    that cannot be done."""
    need_maps = vp.ids_needing_maps(todo)  # selection patterns: regions from the fake-logit maps
    if need_maps and maps_for(b, need_maps, method) is None:
        return False
    total = sum(len(p.image_ids) for p in todo)

    def work(encoder, progress: Progress) -> bool:
        done = 0  # images of the patterns before this one: one bar over all of them
        for p in todo:
            pattern_impact(b, p, encoder, vp.N_RANDOM, vp.SEED, method, progress=_offset(progress, done, total))
            done += len(p.image_ids)
        return True

    return charged_work(b, "Pattern impacts", 0, work, f"Masking and re-encoding {total:,} images") is not None


def _offset(progress: Progress, before: int, total: int) -> Progress:
    """``progress`` of one pattern's images as part of ``total``, after ``before`` images."""
    return lambda done, _: progress(before + done, total)


def impact(b: Bundle, pattern: Pattern, method: str) -> dict:
    """The cached impact of ``pattern`` (``analyses.patterns.pattern_impact``; no model needed once computed)."""
    return pattern_impact(b, pattern, None, vp.N_RANDOM, vp.SEED, method)


def delete(b: Bundle, name: str) -> None:
    """Delete the saved pattern ``name``."""
    PatternStore(b).delete(name)
