"""Generator attribution (seed 003: a second head names *which* generator made a fake).

One head: the distiller's own ``generator_head`` (``z [N, 16] -> [N, G]`` logits), trained jointly with the
real/fake head by ``DistillerTrainer`` when the folder names >= 2 generators (early stopping on the
validation loss, which includes the generator cross-entropy). It saw the training split's fakes, so a
confusion matrix over all fakes is partly in-sample; ``validation_mask`` recovers the trainer's validation
rows (checked against the stored ``generator_val_accuracy``) so the app can show the held-out matrix too.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..method.bundle_models import bundle_distiller

REAL = "real"
VAL_TOLERANCE = 1e-6


def _labelled_fakes(images: pd.DataFrame) -> np.ndarray:
    """Boolean ``[N]``: fake-labelled rows with a generator name."""
    gen = images["generator"]
    return ((images["label"] == "fake") & gen.notna() & (gen.astype(str) != "")).to_numpy()


def has_generator_head(bundle) -> bool:
    """True when the bundle's distiller has a generator head over >= 2 generators."""
    d = bundle_distiller(bundle)
    return d.generator_head is not None and len(d.config.generator_names) >= 2


def _require_head(bundle) -> None:
    if not has_generator_head(bundle):
        raise InputError(f"The distiller of {bundle.path} has no generator head.",
                         "analyse a folder whose fakes name >= 2 generators (fake/<generator>/...).")


def generator_names(bundle) -> list[str]:
    """The generator names of the head, in the order of its outputs (``[]`` without a head)."""
    return list(bundle_distiller(bundle).config.generator_names) if has_generator_head(bundle) else []


def validation_mask(bundle) -> np.ndarray | None:
    """Boolean ``[N]`` (order of ``bundle.images``): the rows the distiller held out for validation.

    Recomputed with ``training.split_indices`` and the analysis seed, then checked: the head's accuracy on
    those rows must equal the stored ``generator_val_accuracy``. None when the split cannot be recovered
    (a distiller trained elsewhere, no stored metric, or a mismatch).
    """
    # torch (through method.training) only when called: bundles and their stored results open without it
    from ..method.training import DistillerTrainer, split_indices

    opts = bundle.options
    stored = (bundle.metrics or {}).get("generator_val_accuracy")
    if opts.distiller or stored is None or not has_generator_head(bundle):
        return None
    im = bundle.images
    idx = np.flatnonzero(im["label"].notna().to_numpy())
    y = (im["label"].iloc[idx] == "fake").to_numpy().astype(np.int64)
    split = im["split"].iloc[idx].to_numpy(dtype=object) if "split" in im else None
    _, va = split_indices(y, split, DistillerTrainer().val_fraction, opts.random_state)
    mask = np.zeros(len(im), dtype=bool)
    mask[idx[va]] = True
    proba, names = _probabilities(bundle)
    fakes = mask & _labelled_fakes(im) & im["generator"].astype(str).isin(names).to_numpy()
    if not fakes.any():
        return None
    acc = float((np.asarray(names, dtype=object)[proba[fakes].argmax(1)] == im["generator"].to_numpy()[fakes]).mean())
    return mask if abs(acc - float(stored)) <= VAL_TOLERANCE else None


def _probabilities(bundle) -> tuple[np.ndarray, list[str]]:
    """``(proba [N, G] float64, generator names)`` of the distiller's head on the bundle's z."""
    import torch

    _require_head(bundle)
    d = bundle_distiller(bundle)
    with torch.no_grad():
        proba = torch.softmax(d.generator_logits(torch.tensor(bundle.z)), dim=1).double().numpy()
    return proba, list(d.config.generator_names)


def generator_predictions(bundle, with_probabilities: bool = False) -> pd.DataFrame:
    """One row per image of the bundle: image_id, label, generator (true, may be None), pred, p_fake,
    predicted_generator, probability (of that generator), attribution (``"real"`` where the detector says
    real, else the predicted generator: the colour key of the overview), held_out (the distiller did not
    train on the image: its validation rows and every image that is not a labelled fake; where the split
    cannot be recovered, only the latter); with ``with_probabilities`` one more column ``p_<name>`` per
    generator."""
    return _predictions(bundle, with_probabilities)[0]


def _predictions(bundle, with_probabilities: bool) -> tuple[pd.DataFrame, list[str]]:
    proba, names = _probabilities(bundle)
    im = bundle.images
    best = proba.argmax(axis=1)
    pred_gen = np.asarray(names, dtype=object)[best]
    val = validation_mask(bundle)
    held = ~_labelled_fakes(im) | (val if val is not None else False)
    out = pd.DataFrame({
        "image_id": im["image_id"].to_numpy(),
        "label": im["label"].to_numpy(dtype=object),
        "generator": im["generator"].to_numpy(dtype=object),
        "pred": im["pred"].to_numpy(dtype=object),
        "p_fake": im["p_fake"].to_numpy(np.float32),
        "predicted_generator": pred_gen,
        "probability": proba[np.arange(len(best)), best].astype(np.float32),
        "attribution": np.where(im["pred"].to_numpy(dtype=object) == "fake", pred_gen, REAL),
        "held_out": np.asarray(held, dtype=bool),
    })
    if with_probabilities:
        for j, n in enumerate(names):
            out[f"p_{n}"] = proba[:, j].astype(np.float32)
    return out, names


def confusion_matrix(bundle, only_fakes: bool = True, normalize: bool = False,
                     image_ids: list[str] | None = None, held_out_only: bool = False) -> pd.DataFrame:
    """Rows: true generator; columns: predicted generator (every name of the head, in its order).

    ``only_fakes``: rows are the labelled fakes whose generator the head knows, columns the head's
    prediction. Otherwise real-labelled images join as a ``"real"`` row and the prediction is the
    ``attribution`` (``"real"`` where the detector says real). ``normalize`` divides each row by its
    total (fractions; a row with no images stays 0). ``image_ids`` restricts the images counted;
    ``held_out_only`` counts only images the distiller did not train on (``held_out``).
    """
    pred, names = _predictions(bundle, False)
    if image_ids is not None:
        pred = pred[pred["image_id"].isin(set(image_ids))]
    if held_out_only:
        pred = pred[pred["held_out"]]
    known = pred["generator"].astype(str).isin(names) & (pred["label"] == "fake")
    if only_fakes:
        rows, truth, guess, labels = pred[known], "generator", "predicted_generator", names
    else:
        rows = pred[known | (pred["label"] == REAL)].copy()
        rows["truth"] = np.where(rows["label"] == REAL, REAL, rows["generator"].astype(str))
        truth, guess, labels = "truth", "attribution", [REAL, *names]
    cm = pd.crosstab(rows[truth].astype(str), rows[guess].astype(str)).reindex(index=labels, columns=labels,
                                                                              fill_value=0)
    cm = cm.fillna(0).astype(np.int64)
    cm.index.name, cm.columns.name = "true generator", "predicted generator"
    if normalize:
        tot = cm.sum(axis=1).replace(0, 1)
        cm = cm.div(tot, axis=0)
    return cm


def attribution_accuracy(cm: pd.DataFrame) -> float:
    """Share of the counted images on the diagonal of a (count) confusion matrix; NaN when empty."""
    common = [c for c in cm.index if c in cm.columns]
    total = float(cm.to_numpy().sum())
    return float(sum(cm.loc[c, c] for c in common) / total) if total else float("nan")


__all__ = ["attribution_accuracy", "confusion_matrix", "generator_names", "generator_predictions",
           "has_generator_head", "validation_mask"]
