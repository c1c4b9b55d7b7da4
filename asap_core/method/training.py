"""Training the distiller (docs/design.md §3.4): class-balanced BCE + orthogonality penalty, early stop on val loss."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, average_precision_score
from sklearn.model_selection import train_test_split
from torch import nn

from ..errors import InputError
from ..storage.schema import DECISION_THRESHOLD
from .distiller import Distiller, DistillerConfig


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy (threshold 0.5), average precision and ROC-AUC of ``p_fake [N]`` against ``y [N]`` (1 = fake)."""
    y = np.asarray(y).astype(int)
    out = {"n": int(len(y)), "accuracy": float(accuracy_score(y, p >= DECISION_THRESHOLD)) if len(y) else float("nan")}
    both = len(np.unique(y)) == 2
    out["ap"] = float(average_precision_score(y, p)) if both else float("nan")
    out["roc_auc"] = roc_auc(y, p) if both else float("nan")
    return out


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC of ``p_fake [N]`` against ``y [N]`` (1 = fake) as the Mann-Whitney statistic (ties count half):
    ``sklearn.metrics.roc_auc_score``'s value without its input checks, which cost more than a small
    validation set's whole epoch (training computes it every epoch). NaN unless both classes are present."""
    y = np.asarray(y).astype(bool)
    n_fake = int(y.sum())
    n_real = len(y) - n_fake
    if n_fake == 0 or n_real == 0:
        return float("nan")
    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[y].sum() - n_fake * (n_fake + 1) / 2) / (n_fake * n_real))


def split_indices(y: np.ndarray, split: np.ndarray | None, val_fraction: float, random_state: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices: the folder's own split if it names one (val/test), else stratified 80/20.

    A stratified split holds at least one image of each class on both sides: a set too small for
    ``val_fraction`` of it to reach one per class (2 real + 2 fake, the smallest set ``analyze`` trains on)
    validates on one real and one fake image."""
    idx = np.arange(len(y))
    if split is not None:
        s = np.asarray(split, dtype=object)
        held = np.isin(s, ["val", "test"])
        if held.any() and (~held).any() and len(np.unique(y[held])) == 2:
            return idx[~held], idx[held]
    counts = np.bincount(y, minlength=2)
    strat = y if counts.min() >= 2 else None
    test_size: float | int = val_fraction
    if strat is not None and int(np.ceil(val_fraction * len(y))) < len(counts):
        test_size = len(counts)  # one of each class (the fraction would round below that)
    tr, va = train_test_split(idx, test_size=test_size, random_state=random_state, stratify=strat)
    return np.sort(tr), np.sort(va)


TRAINING_VERSION = 4  # part of cache keys: bump when training changes what a fit returns
#                      (3: standardisation summed over chunks; streamed minibatches from STREAM_MIN_ROWS rows;
#                       4: an epoch is at most ``epoch_rows`` training rows)

#: Labelled rows from which ``stream=None`` trains on minibatches of the embeddings themselves instead of a
#: precomputed projected table ``[N, P]`` float32 (200 MB at 200,000 rows, 1 GB at a million).
STREAM_MIN_ROWS = 200_000
CHUNK_ROWS = 16_384  # rows projected at a time outside the minibatches (standardisation, validation, metrics)

#: Training rows one epoch draws at most (``DistillerTrainer(epoch_rows=...)``): beyond it an epoch is this many
#: rows of a permutation that runs on across epochs, so the steps between two early-stopping checks, and the
#: cost of an epoch, stop growing with N.
EPOCH_ROWS = 65_536


#: ``cache_params`` keys under the names cache keys were first written with (a rename must not orphan
#: cached fits: ``hash_key`` hashes the names as well as the values)
_KEY_NAMES = {"random_state": "seed"}


class DistillerTrainer:
    """Fits a ``Distiller`` on CLIP embeddings, scikit-learn style.

    Parameters
    ----------
    projection : ``[P, D]`` float array, the vision-only projection (e.g. ``VisionOnlyProjection.components_``).
    ortho_weight : weight λ of the orthogonality penalty ‖W1 W1ᵀ − I‖²_F.
    lr, weight_decay : Adam's learning rate and weight decay.
    batch_size : rows per minibatch.
    max_epochs : most epochs; ``patience``: epochs without a gain in validation loss before stopping.
    epoch_rows : training rows per epoch at most; a larger training split is walked ``epoch_rows`` rows per
        epoch through one running permutation (each row once per pass), so an epoch's cost is bounded.
    val_fraction : share of the rows held out for validation when the folder names no split.
    random_state : seed of the split, the initial weights and the minibatch order.
    generator_weight : loss weight of the optional generator head (0 disables it).
    stream : True: each minibatch is projected from its rows of the embeddings, nothing ``[N, P]`` is held;
        False: the projected table ``[N, P]`` float32 is computed once; None: stream from ``STREAM_MIN_ROWS``.

    Attributes
    ----------
    model_ : the fitted ``Distiller`` (z has ``schema.N_DIMS`` dimensions).
    metrics_ : dict, validation / train classification metrics, epochs, orthogonality.
    train_index_, val_index_ : ``[N_train]``, ``[N_val]`` row indices of the split.
    history_ : list of dicts, one per epoch (loss, val_loss, val_auc).

    The embeddings are read as given (an array or a memory map, float32), never copied to float64.

    Examples
    --------
    ``DistillerTrainer(projection=P, random_state=0).fit(E, y).model_.predict(E)`` -> ``(z [N, 16], p_fake [N])``.
    """

    def __init__(self, projection: np.ndarray | None = None, ortho_weight: float = 1.0, lr: float = 3e-3,
                 weight_decay: float = 0.0, batch_size: int = 256, max_epochs: int = 300, patience: int = 25,
                 val_fraction: float = 0.2, random_state: int = 0, generator_weight: float = 0.5,
                 stream: bool | None = None, epoch_rows: int = EPOCH_ROWS) -> None:
        self.projection = projection
        self.ortho_weight = ortho_weight
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.generator_weight = generator_weight
        self.stream = stream
        self.epoch_rows = epoch_rows

    def get_params(self) -> dict[str, Any]:
        """All ``__init__`` parameters by name (``DistillerTrainer(**t.get_params())`` is an unfitted copy)."""
        return {k: getattr(self, k) for k in inspect.signature(DistillerTrainer.__init__).parameters if k != "self"}

    def cache_params(self) -> dict[str, Any]:
        """What the distiller's cache key hashes: ``get_params`` under the names keys were first written with
        (``_KEY_NAMES``) and ``TRAINING_VERSION``."""
        return {"version": TRAINING_VERSION} | {_KEY_NAMES.get(k, k): v for k, v in self.get_params().items()}

    def fit(self, embeds: np.ndarray, y: np.ndarray, split: np.ndarray | None = None,
            generators: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None
            ) -> DistillerTrainer:
        """``embeds [N, D]``, ``y [N]`` (1 = fake); optional ``split [N]`` (train/val/test names) and
        ``generators [N]`` (names for fakes, None elsewhere: trains the generator head when >= 2 names)."""
        embeds = embeds if getattr(embeds, "dtype", None) == np.float32 else np.asarray(embeds, np.float32)
        y = np.asarray(y).astype(np.int64)
        proj = self._check_inputs(embeds, y)
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise InputError(
                f"The distiller needs real and fake images to learn from; found {counts[0]} real, {counts[1]} fake.",
                "add images of the missing class (real/ and fake/ folders), or pass --distiller BUNDLE "
                "to apply a distiller trained elsewhere.")
        return self._fit(embeds, y, counts, proj, split, generators, progress)

    def _check_inputs(self, embeds: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The projection ``[P, D]`` as float32, after checking the shapes of ``embeds [N, D]`` and ``y [N]``."""
        if self.projection is None:
            raise InputError("DistillerTrainer has no projection.", "pass projection=[P, D] to DistillerTrainer(...).")
        proj = np.asarray(self.projection, np.float32)
        if proj.ndim != 2 or embeds.ndim != 2 or embeds.shape[1] != proj.shape[1]:
            raise InputError(f"embeds {embeds.shape} and projection {proj.shape} do not fit: need [N, D] and [P, D].",
                             "embed with the CLIP the projection was made for.")
        if len(y) != len(embeds):
            raise InputError(f"{len(y)} labels for {len(embeds)} embeddings.", "pass one label per embedding.")
        return proj

    def _fit(self, embeds, y, counts, projection, split, generators, progress) -> DistillerTrainer:
        torch.manual_seed(self.random_state)
        tr, va = split_indices(y, split, self.val_fraction, self.random_state)
        gen_names, g_idx = _generator_targets(generators, y, self.generator_weight)
        model = _initial_model(embeds, projection, tr, gen_names)
        stream = self.stream if self.stream is not None else len(embeds) >= STREAM_MIN_ROWS
        state = _TrainState(embeds, None if stream else _projected(model, embeds),
                            torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(g_idx),
                            nn.BCEWithLogitsLoss(pos_weight=torch.tensor(counts[0] / counts[1], dtype=torch.float32)),
                            bool(gen_names))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # [B, 256] x [256, 16] steps: threading costs more than it gives
        try:
            history = self._train(model, state, tr, va, y, progress)
        finally:
            torch.set_num_threads(threads)
        self.model_ = model
        self.train_index_, self.val_index_ = tr, va
        self.history_ = history
        self.metrics_ = self._metrics(model, state, y, tr, va, g_idx, gen_names)
        return self

    def _train(self, model: Distiller, s: _TrainState, tr: np.ndarray, va: np.ndarray, y: np.ndarray,
               progress: Callable[[int, int], None] | None) -> list[dict]:
        """Adam epochs with early stopping; leaves the best state in ``model``; returns the history."""
        rng = np.random.default_rng(self.random_state)
        opt = torch.optim.Adam(list(model.parameters()), lr=self.lr, weight_decay=self.weight_decay)
        best: tuple[float, float] = (float("-inf"), float("-inf"))
        best_state: dict[str, torch.Tensor] | None = None
        bad, history = 0, []
        orders = epoch_orders(rng, tr, self.epoch_rows)
        for epoch in range(self.max_epochs):
            loss = self._epoch(model, s, opt, next(orders))
            val_loss, p_val = _validate(model, s, va, self.generator_weight)
            auc = roc_auc(y[va], p_val)
            history.append({"epoch": epoch, "loss": loss, "val_loss": val_loss, "val_auc": auc})
            if progress:
                progress(epoch + 1, self.max_epochs)
            # early stopping on the validation loss (BCE + generator cross-entropy), not on AUC alone: AUC
            # saturates on separable data long before p_fake is trained, and ignores the generator head.
            # AUC breaks exact ties.
            score = (-round(val_loss, 4), round(auc, 4))
            if score > best:
                best, bad = score, 0
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:  # None when no epoch ran or none gave a finite validation loss
            model.load_state_dict(best_state)
        model.eval()
        return history

    def _epoch(self, model: Distiller, s: _TrainState, opt, order: np.ndarray) -> float:
        """One pass over the training rows in ``order``, mini-batches of ``batch_size``; returns the last loss."""
        model.train()
        eye = torch.eye(model.config.n_dims)
        loss = torch.zeros(())
        for b in np.array_split(order, max(1, int(np.ceil(len(order) / self.batch_size)))):
            z = s.dims(model, b)
            loss = s.bce(model.head(z).squeeze(-1), s.y[b])
            w = model.dims.weight
            loss = loss + self.ortho_weight * ((w @ w.T - eye) ** 2).sum()
            if s.with_generators:
                m = s.g[b] >= 0
                if m.any():
                    loss = loss + self.generator_weight * nn.functional.cross_entropy(
                        model.generator_logits(z[m]), s.g[b][m])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    def _metrics(self, model: Distiller, s: _TrainState, y, tr, va, g_idx, gen_names) -> dict:
        """Validation / train classification metrics, epochs, orthogonality, generator accuracy."""
        z = s.dims_no_grad(model, np.arange(len(y)))  # [N, 16]
        with torch.no_grad():
            p = torch.sigmoid(model.head(z).squeeze(-1)).numpy()
        metrics = {"val": classification_metrics(y[va], p[va]), "train": classification_metrics(y[tr], p[tr]),
                   "epochs": len(self.history_), "max_offdiag_cos": model.orthogonality()}
        if gen_names:
            with torch.no_grad():
                pred_g = model.generator_logits(z[va]).argmax(1).numpy()
            m = g_idx[va] >= 0
            metrics["generator_val_accuracy"] = float((pred_g[m] == g_idx[va][m]).mean()) if m.any() else float("nan")
        return metrics


def epoch_orders(rng: np.random.Generator, rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Endless epochs over ``rows [M]``: each a fresh permutation of all of them when ``M <= size``; else
    ``size`` rows at a time of a permutation that runs on (a new one once it is used up, its first rows
    completing the epoch), so every row is drawn once per pass over the split."""
    if len(rows) <= size:
        while True:
            yield rng.permutation(rows)
    perm, at = rng.permutation(rows), 0
    while True:
        part = perm[at:at + size]
        at += size
        if len(part) < size:
            perm, at = rng.permutation(rows), size - len(part)
            part = np.concatenate([part, perm[:at]])
        yield part


class _TrainState:
    """What every epoch reads: the embeddings ``[N, D]`` float32 and, unless streaming, their standardised
    projections ``v [N, P]`` (else None), labels ``y [N]``, generator targets ``g [N]`` (-1: none), the
    class-balanced BCE and whether the generator head trains."""

    def __init__(self, embeds, v, y, g, bce, with_generators: bool) -> None:
        self.embeds, self.v, self.y, self.g, self.bce, self.with_generators = embeds, v, y, g, bce, with_generators

    def dims(self, model: Distiller, rows: np.ndarray) -> torch.Tensor:
        """z ``[len(rows), 16]`` of ``rows`` (with gradients): from ``v``, or streamed from their embeddings
        through W1 folded into the projection (``[16, D]``: the same map, no ``[B, P]`` product)."""
        if self.v is not None:
            return model.dims(self.v[rows])
        e = torch.as_tensor(np.asarray(self.embeds[rows], np.float32))
        w = model.dims.weight
        return e @ ((w @ model.projection) * model.scale).T + (model.dims.bias - model.scale * (w @ model.center))

    def dims_no_grad(self, model: Distiller, rows: np.ndarray) -> torch.Tensor:
        """z ``[len(rows), 16]`` without gradients, ``CHUNK_ROWS`` rows at a time (into one tensor sized once,
        as ``Distiller.predict`` does)."""
        z = torch.empty((len(rows), model.config.n_dims))
        with torch.no_grad():
            for i in range(0, len(rows), CHUNK_ROWS):
                z[i:i + CHUNK_ROWS] = self.dims(model, rows[i:i + CHUNK_ROWS])
        return z


def _generator_targets(generators: np.ndarray | None, y: np.ndarray, weight: float
                       ) -> tuple[tuple[str, ...], np.ndarray]:
    """(generator names, index per row into them or -1): only fakes with a name, only with >= 2 names."""
    g_idx = np.full(len(y), -1)
    if generators is None or weight <= 0:
        return (), g_idx
    names = sorted({str(g) for g, label in zip(generators, y) if label == 1 and g is not None and g == g})
    if len(names) < 2:
        return (), g_idx
    lookup = {n: i for i, n in enumerate(names)}
    return tuple(names), np.array([lookup.get(str(g), -1) if label == 1 else -1 for g, label in zip(generators, y)])


def _initial_model(embeds: np.ndarray, projection: np.ndarray, tr: np.ndarray, gen_names: tuple[str, ...]
                   ) -> Distiller:
    """A distiller with orthogonal W1 and the standardisation (centre, scale) fitted on the training rows."""
    proj = torch.as_tensor(projection)
    cfg = DistillerConfig(embed_dim=proj.shape[1], proj_dim=proj.shape[0], n_generators=len(gen_names),
                          generator_names=gen_names)
    model = Distiller(cfg, projection=proj)
    nn.init.orthogonal_(model.dims.weight)
    total, square = torch.zeros(proj.shape[0], dtype=torch.float64), 0.0
    with torch.no_grad():  # one pass over the training rows: sum and sum of squares of the projections
        for i in range(0, len(tr), CHUNK_ROWS):
            raw = model.project(torch.as_tensor(np.asarray(embeds[tr[i:i + CHUNK_ROWS]], np.float32)))  # [n, P]
            total += raw.sum(0, dtype=torch.float64)
            square += float(raw.pow(2).sum(dtype=torch.float64))
        center = total / max(1, len(tr))
        spread = max(float(np.sqrt(max(square / max(1, len(tr)) - float(center.pow(2).sum()), 0.0))), 1e-8)
        model.center.copy_(center.float())
        model.scale.fill_(np.sqrt(proj.shape[0]) / spread)
    return model


def _projected(model: Distiller, embeds: np.ndarray) -> torch.Tensor:
    """The standardised projections ``v [N, P]`` float32 of all rows, ``CHUNK_ROWS`` at a time."""
    v = torch.empty((len(embeds), model.config.proj_dim))
    with torch.no_grad():
        for i in range(0, len(embeds), CHUNK_ROWS):
            v[i:i + CHUNK_ROWS] = model.project(torch.as_tensor(np.asarray(embeds[i:i + CHUNK_ROWS], np.float32)))
    return v


def _validate(model: Distiller, s: _TrainState, va: np.ndarray, generator_weight: float) -> tuple[float, np.ndarray]:
    """(validation loss: BCE + weighted generator cross-entropy, p_fake of the validation rows)."""
    model.eval()
    z_val = s.dims_no_grad(model, va)
    with torch.no_grad():
        logit_val = model.head(z_val).squeeze(-1)
        val_loss = float(s.bce(logit_val, s.y[va]))
        m = s.g[va] >= 0
        if s.with_generators and m.any():
            val_loss += generator_weight * float(nn.functional.cross_entropy(model.generator_logits(z_val[m]),
                                                                             s.g[va][m]))
    return val_loss, torch.sigmoid(logit_val).numpy()
