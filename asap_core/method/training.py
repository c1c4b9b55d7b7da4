"""Training the distiller (DESIGN §3): class-balanced BCE + orthogonality penalty, early stopping on val AUC."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn

from .distiller import Distiller, DistillerConfig
from ..errors import InputError


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy (threshold 0.5), average precision and ROC-AUC of ``p_fake [N]`` against ``y [N]`` (1 = fake)."""
    y = np.asarray(y).astype(int)
    out = {"n": int(len(y)), "accuracy": float(accuracy_score(y, p >= 0.5)) if len(y) else float("nan")}
    both = len(np.unique(y)) == 2
    out["ap"] = float(average_precision_score(y, p)) if both else float("nan")
    out["roc_auc"] = float(roc_auc_score(y, p)) if both else float("nan")
    return out


def split_indices(y: np.ndarray, split: np.ndarray | None, val_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices: the folder's own split if it names one (val/test), else stratified 80/20."""
    idx = np.arange(len(y))
    if split is not None:
        s = np.asarray(split, dtype=object)
        held = np.isin(s, ["val", "test"])
        if held.any() and (~held).any() and len(np.unique(y[held])) == 2:
            return idx[~held], idx[held]
    counts = np.bincount(y, minlength=2)
    strat = y if counts.min() >= 2 else None
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)


TRAINING_VERSION = 2  # part of cache keys: bump when training changes what a fit returns


class DistillerTrainer:
    """Fits a ``Distiller`` on CLIP embeddings, scikit-learn style.

    Parameters: ``n_dims`` (16), ``ortho_weight`` (λ of ‖W1 W1ᵀ − I‖²_F), ``lr``, ``weight_decay``,
    ``batch_size``, ``max_epochs``, ``patience`` (epochs without validation-loss gain), ``val_fraction``, ``seed``,
    ``generator_weight`` (loss weight of the optional generator head; 0 disables it).
    Fitted: ``model_`` (Distiller), ``metrics_`` (dict), ``train_index_``, ``val_index_``, ``history_``.
    """

    def __init__(self, n_dims: int = 16, ortho_weight: float = 1.0, lr: float = 3e-3, weight_decay: float = 0.0,
                 batch_size: int = 256, max_epochs: int = 300, patience: int = 25, val_fraction: float = 0.2,
                 seed: int = 0, generator_weight: float = 0.5) -> None:
        self.n_dims = n_dims
        self.ortho_weight = ortho_weight
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.seed = seed
        self.generator_weight = generator_weight

    def get_params(self) -> dict:
        """All ``__init__`` parameters (for cache keys and reports)."""
        return {"version": TRAINING_VERSION} | {k: getattr(self, k) for k in ("n_dims", "ortho_weight", "lr", "weight_decay", "batch_size",
                                              "max_epochs", "patience", "val_fraction", "seed", "generator_weight")}

    def fit(self, embeds: np.ndarray, y: np.ndarray, projection: np.ndarray, split: np.ndarray | None = None,
            generators: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None
            ) -> "DistillerTrainer":
        """``embeds [N, D]``, ``y [N]`` (1 = fake), ``projection [P, D]``; optional ``split [N]`` and
        ``generators [N]`` (names for fakes, None elsewhere: trains the generator head when >= 2 names)."""
        y = np.asarray(y).astype(np.int64)
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise InputError(
                f"The distiller needs real and fake images to learn from; found {counts[0]} real, {counts[1]} fake.",
                "add images of the missing class (real/ and fake/ folders), or pass --distiller BUNDLE "
                "to apply a distiller trained elsewhere.")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # [B, 256] x [256, 16] steps: threading costs more than it gives
        try:
            return self._fit(embeds, y, counts, projection, split, generators, progress)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, embeds, y, counts, projection, split, generators, progress) -> "DistillerTrainer":
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        tr, va = split_indices(y, split, self.val_fraction, self.seed)
        gen_names: tuple[str, ...] = ()
        g_idx = np.full(len(y), -1)
        if generators is not None and self.generator_weight > 0:
            names = sorted({str(g) for g, l in zip(generators, y) if l == 1 and g is not None and g == g})
            if len(names) >= 2:
                gen_names = tuple(names)
                lookup = {n: i for i, n in enumerate(names)}
                g_idx = np.array([lookup.get(str(g), -1) if l == 1 else -1 for g, l in zip(generators, y)])
        proj = torch.as_tensor(np.asarray(projection, np.float32))
        cfg = DistillerConfig(embed_dim=proj.shape[1], proj_dim=proj.shape[0], n_dims=self.n_dims,
                              n_generators=len(gen_names), generator_names=gen_names)
        model = Distiller(cfg, projection=proj)
        nn.init.orthogonal_(model.dims.weight)
        with torch.no_grad():
            raw = model.project(torch.as_tensor(np.asarray(embeds, np.float32)))  # [N, P]
            model.center.copy_(raw[tr].mean(0))
            model.scale.fill_(1.0 / float((raw[tr] - model.center).pow(2).sum(1).mean().sqrt().clamp_min(1e-8)) * np.sqrt(raw.shape[1]))
        v = model.project(torch.as_tensor(np.asarray(embeds, np.float32)))  # [N, P] standardised, fixed
        yt = torch.as_tensor(y, dtype=torch.float32)
        gt = torch.as_tensor(g_idx)
        pos_weight = torch.tensor(counts[0] / counts[1], dtype=torch.float32)
        bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        opt = torch.optim.Adam([p for n, p in model.named_parameters()], lr=self.lr, weight_decay=self.weight_decay)
        eye = torch.eye(self.n_dims)
        best: tuple[float, float] = (float("-inf"), float("-inf"))
        best_state, bad, history = None, 0, []
        for epoch in range(self.max_epochs):
            model.train()
            for b in np.array_split(rng.permutation(tr), max(1, int(np.ceil(len(tr) / self.batch_size)))):
                z = model.dims(v[b])
                loss = bce(model.head(z).squeeze(-1), yt[b])
                w = model.dims.weight
                loss = loss + self.ortho_weight * ((w @ w.T - eye) ** 2).sum()
                if gen_names:
                    gb = gt[b]
                    m = gb >= 0
                    if m.any():
                        loss = loss + self.generator_weight * nn.functional.cross_entropy(
                            model.generator_head(z[m]), gb[m])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                z_val = model.dims(v[va])
                logit_val = model.head(z_val).squeeze(-1)
                val_loss = float(bce(logit_val, yt[va]))
                if gen_names and (gt[va] >= 0).any():
                    m = gt[va] >= 0
                    val_loss += self.generator_weight * float(
                        nn.functional.cross_entropy(model.generator_head(z_val[m]), gt[va][m]))
            auc = classification_metrics(y[va], torch.sigmoid(logit_val).numpy())["roc_auc"]
            history.append({"epoch": epoch, "loss": float(loss.detach()), "val_loss": val_loss, "val_auc": auc})
            if progress:
                progress(epoch + 1, self.max_epochs)
            # early stopping on the validation loss (BCE + generator cross-entropy), not on AUC alone: AUC
            # saturates at 1.0 on separable data within a few epochs (p_fake still ~0.5) and ignores the
            # generator head; the loss keeps improving until both are trained. AUC breaks exact ties.
            score = (-round(val_loss, 4), round(auc, 4))
            if score > best:
                best, bad = score, 0
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
        self.model_ = model
        self.train_index_, self.val_index_ = tr, va
        self.history_ = history
        _, p = model.predict(np.asarray(embeds, np.float32))
        self.metrics_ = {"val": classification_metrics(y[va], p[va]), "train": classification_metrics(y[tr], p[tr]),
                         "epochs": len(history), "max_offdiag_cos": model.orthogonality()}
        if gen_names:
            with torch.no_grad():
                pred_g = model.generator_logits(model.dims(v[va])).argmax(1).numpy()
            m = g_idx[va] >= 0
            self.metrics_["generator_val_accuracy"] = float((pred_g[m] == g_idx[va][m]).mean()) if m.any() else float("nan")
        return self
