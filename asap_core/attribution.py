"""Generator attribution (seed 003: a second head names *which* generator made a fake).

Two heads read the 16 distilled dimensions ``z`` of a bundle:

- ``"distiller"``: the distiller's own ``generator_head`` (trained jointly by ``DistillerTrainer`` when the
  folder names >= 2 generators). It saw most labelled fakes in training, so its confusion matrix on them is
  in-sample.
- ``"refit"``: ``GeneratorAttributor``, a multinomial logistic regression on standardised ``z`` fitted to
  the bundle's labelled fakes, with out-of-fold predictions (stratified k-fold) for those fakes, so its
  confusion matrix is an honest estimate. Cached in the bundle (``cache/generator-head``, JSON).

``head="auto"`` uses ``refit`` when the bundle's labels name >= 2 generators, else the distiller's head.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .bundle import Z_COLUMNS
from .cache import cached_call, hash_key
from .errors import InputError

HEADS = ("auto", "distiller", "refit")
CACHE_NAMESPACE = "generator-head"
CACHE_VERSION = "generator-head-1"
REAL = "real"


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class GeneratorAttributor:
    """Multinomial logistic regression ``z [N, 16] -> generator``, scikit-learn style.

    Parameters: ``C`` (inverse L2 strength), ``n_splits`` (folds for out-of-fold predictions),
    ``random_state``. Fitted: ``classes_`` (names, sorted), ``mean_``/``scale_`` (standardisation),
    ``coef_`` ``[G, 16]``, ``intercept_`` ``[G]``, ``oof_proba_`` ``[N, G]`` (each training row predicted by a
    model fitted without its fold; the full model's prediction where a class has < 2 rows), ``oof_`` (bool).
    """

    def __init__(self, C: float = 1.0, n_splits: int = 5, random_state: int = 0) -> None:
        self.C = C
        self.n_splits = n_splits
        self.random_state = random_state

    @staticmethod
    def _fit_lr(x: np.ndarray, y: np.ndarray, C: float, n_classes: int):
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=C, max_iter=5000).fit(x, y)
        coef = np.zeros((n_classes, x.shape[1]))
        icpt = np.zeros(n_classes)
        if len(lr.classes_) == 2:  # sklearn's binary form: one row for the second class
            coef[lr.classes_[1]], icpt[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
            coef[lr.classes_[0]] = 0.0
        else:
            coef[lr.classes_], icpt[lr.classes_] = lr.coef_, lr.intercept_
        missing = np.setdiff1d(np.arange(n_classes), lr.classes_)
        icpt[missing] = -1e9  # a class absent from this fold's training rows is never predicted
        return coef, icpt

    def fit(self, z: np.ndarray, generators) -> "GeneratorAttributor":
        """``z [N, 16]`` of fakes and their generator names ``[N]`` (>= 2 distinct names)."""
        from sklearn.model_selection import StratifiedKFold

        z = np.asarray(z, np.float64)
        names = np.asarray([str(g) for g in generators], dtype=object)
        classes = sorted(set(names))
        if len(classes) < 2:
            raise InputError(f"Generator attribution needs fakes from at least 2 generators; found {classes}.",
                             "put fakes in one subfolder per generator (fake/<generator>/...).")
        y = np.searchsorted(np.asarray(classes, dtype=object), names)
        self.classes_ = classes
        self.mean_ = z.mean(axis=0)
        std = z.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        x = (z - self.mean_) / self.scale_
        self.coef_, self.intercept_ = self._fit_lr(x, y, self.C, len(classes))
        k = min(int(self.n_splits), int(np.bincount(y).min()))
        self.oof_ = k >= 2
        if self.oof_:
            oof = np.zeros((len(y), len(classes)))
            for tr, te in StratifiedKFold(k, shuffle=True, random_state=self.random_state).split(x, y):
                # standardisation is refitted per fold too, so the held-out fold leaks nothing
                mu, sd = z[tr].mean(axis=0), z[tr].std(axis=0)
                sd = np.where(sd > 1e-12, sd, 1.0)
                c, b = self._fit_lr((z[tr] - mu) / sd, y[tr], self.C, len(classes))
                oof[te] = _softmax(((z[te] - mu) / sd) @ c.T + b)
            self.oof_proba_ = oof
        else:
            self.oof_proba_ = self.predict_proba(z)
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        """``z [N, 16]`` -> ``[N, G]`` probabilities in the order of ``classes_``."""
        x = (np.asarray(z, np.float64) - self.mean_) / self.scale_
        return _softmax(x @ self.coef_.T + self.intercept_)

    def to_dict(self) -> dict:
        return {"params": {"C": self.C, "n_splits": self.n_splits, "random_state": self.random_state},
                "classes": list(self.classes_), "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist(), "oof": bool(self.oof_),
                "oof_proba": self.oof_proba_.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorAttributor":
        m = cls(**d["params"])
        m.classes_ = list(d["classes"])
        m.mean_, m.scale_ = np.asarray(d["mean"]), np.asarray(d["scale"])
        m.coef_, m.intercept_ = np.asarray(d["coef"]), np.asarray(d["intercept"])
        m.oof_ = bool(d["oof"])
        m.oof_proba_ = np.asarray(d["oof_proba"]).reshape(-1, len(m.classes_))
        return m


# ----------------------------------------------------------------------------- bundle helpers


def _labelled_fakes(images: pd.DataFrame) -> np.ndarray:
    """Boolean ``[N]``: fake-labelled rows with a generator name."""
    gen = images["generator"]
    return ((images["label"] == "fake") & gen.notna() & (gen.astype(str) != "")).to_numpy()


def _n_generators(bundle) -> int:
    im = bundle.images
    return int(im.loc[_labelled_fakes(im), "generator"].astype(str).nunique())


def _distiller_has_head(bundle) -> bool:
    d = bundle.distiller
    return d.generator_head is not None and len(d.config.generator_names) >= 2


def resolve_head(bundle, head: str = "auto") -> str:
    """``"distiller"`` or ``"refit"`` for ``head``; ``InputError`` when that head cannot be had."""
    if head not in HEADS:
        raise InputError(f"Unknown generator head '{head}'.", f"use one of: {', '.join(HEADS)}.")
    refit_ok = _n_generators(bundle) >= 2
    if head == "auto":
        if refit_ok:
            return "refit"
        head = "distiller"
    if head == "refit" and not refit_ok:
        raise InputError(f"The bundle {bundle.path} names fewer than 2 generators among its fakes.",
                         "analyse a folder with one subfolder per generator under fake/ (or a generator column).")
    if head == "distiller" and not _distiller_has_head(bundle):
        raise InputError(f"The distiller of {bundle.path} has no generator head.",
                         "analyse a folder whose fakes name >= 2 generators (fake/<generator>/...).")
    return head


def has_generator_head(bundle, head: str = "auto") -> bool:
    """True when ``generator_predictions(bundle, head)`` can run (>= 2 generators known to a head)."""
    try:
        resolve_head(bundle, head)
    except InputError:
        return False
    return True


def fit_attributor(bundle, C: float = 1.0, n_splits: int = 5, random_state: int = 0) -> GeneratorAttributor:
    """The ``GeneratorAttributor`` of the bundle's labelled fakes (cached in ``bundle.cache_dir``)."""
    im = bundle.images
    mask = _labelled_fakes(im)
    z = im.loc[mask, Z_COLUMNS].to_numpy(np.float32)
    gens = im.loc[mask, "generator"].astype(str).to_numpy()
    key = hash_key(CACHE_VERSION, z, list(gens), float(C), int(n_splits), int(random_state))
    return cached_call(bundle.cache_dir, CACHE_NAMESPACE, key,
                       lambda: GeneratorAttributor(C, n_splits, random_state).fit(z, gens),
                       lambda m, d: (d / "head.json").write_text(json.dumps(m.to_dict())),
                       lambda d: GeneratorAttributor.from_dict(json.loads((d / "head.json").read_text())))


def generator_probabilities(bundle, head: str = "auto") -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """``(proba [N, G], generator names, out_of_fold [N] bool, head used)`` in the order of ``bundle.images``.

    ``out_of_fold``: the prediction comes from a head that did not train on that image (for ``refit``:
    out-of-fold rows and every image that is not a labelled fake; for ``distiller``: images that are not
    labelled fakes, since its train/validation split is not stored in the bundle).
    """
    import torch

    used = resolve_head(bundle, head)
    im = bundle.images
    z = im[Z_COLUMNS].to_numpy(np.float32)
    fakes = _labelled_fakes(im)
    if used == "distiller":
        d = bundle.distiller
        with torch.no_grad():
            proba = torch.softmax(d.generator_logits(torch.tensor(z)), dim=1).double().numpy()
        return proba, list(d.config.generator_names), ~fakes, used
    model = fit_attributor(bundle)
    proba = model.predict_proba(z)
    proba[fakes] = model.oof_proba_
    oof = ~fakes if not model.oof_ else np.ones(len(im), dtype=bool)
    return proba, list(model.classes_), oof, used


def generator_predictions(bundle, head: str = "auto", with_probabilities: bool = False) -> pd.DataFrame:
    """One row per image of the bundle: image_id, label, generator (true, may be None), pred, p_fake,
    predicted_generator, probability (of that generator), attribution (``"real"`` where the detector says
    real, else the predicted generator: the colour key of the overview), out_of_fold, head; with
    ``with_probabilities`` one more column ``p_<name>`` per generator."""
    return _predictions(bundle, head, with_probabilities)[0]


def _predictions(bundle, head: str, with_probabilities: bool) -> tuple[pd.DataFrame, list[str]]:
    proba, names, oof, used = generator_probabilities(bundle, head)
    im = bundle.images
    best = proba.argmax(axis=1)
    pred_gen = np.asarray(names, dtype=object)[best]
    out = pd.DataFrame({
        "image_id": im["image_id"].to_numpy(),
        "label": im["label"].to_numpy(dtype=object),
        "generator": im["generator"].to_numpy(dtype=object),
        "pred": im["pred"].to_numpy(dtype=object),
        "p_fake": im["p_fake"].to_numpy(np.float32),
        "predicted_generator": pred_gen,
        "probability": proba[np.arange(len(best)), best].astype(np.float32),
        "attribution": np.where(im["pred"].to_numpy(dtype=object) == "fake", pred_gen, REAL),
        "out_of_fold": oof,
        "head": used,
    })
    if with_probabilities:
        for j, n in enumerate(names):
            out[f"p_{n}"] = proba[:, j].astype(np.float32)
    return out, names


def confusion_matrix(bundle, only_fakes: bool = True, head: str = "auto", normalize: bool = False,
                     image_ids: list[str] | None = None) -> pd.DataFrame:
    """Rows: true generator; columns: predicted generator (every name of the head, in its order).

    ``only_fakes``: rows are the labelled fakes whose generator the head knows, columns the head's
    prediction. Otherwise real-labelled images join as a ``"real"`` row and the prediction is the
    ``attribution`` (``"real"`` where the detector says real). ``normalize`` divides each row by its
    total (fractions; a row with no images stays 0). ``image_ids`` restricts the images counted.
    """
    pred, names = _predictions(bundle, head, False)
    if image_ids is not None:
        pred = pred[pred["image_id"].isin(set(image_ids))]
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


__all__ = ["GeneratorAttributor", "attribution_accuracy", "confusion_matrix", "fit_attributor",
           "generator_predictions", "generator_probabilities", "has_generator_head", "resolve_head"]
