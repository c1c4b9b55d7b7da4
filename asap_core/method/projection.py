"""Vision-only projection (DESIGN §3): remove what CLIP knows about written text, keep the top visual directions.

Fit: render random words onto sample images, embed clean and texted versions, take the principal
directions of (texted - clean) as the "written" subspace, project it out of the clean embeddings and
keep an orthonormal basis of their top principal directions.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ModelLoadError

EmbedFn = Callable[[Sequence[Image.Image]], np.ndarray]


def render_text(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy of ``image`` with one or two random words drawn at a random size, colour and position."""
    img = image.convert("RGB").copy()
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 3))):
        word = "".join(rng.choice(list(string.ascii_letters), size=int(rng.integers(3, 9))))
        size = max(6, int(min(w, h) * rng.uniform(0.12, 0.3)))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow without scalable default font
            font = ImageFont.load_default()
        x = int(rng.integers(0, max(1, w - size * len(word) // 2)))
        y = int(rng.integers(0, max(1, h - size)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.text((x, y), word, fill=colour, font=font)
    return img


class VisionOnlyProjection:
    """Linear map ``[D] -> [K]`` (orthonormal rows) that drops the written-text subspace of CLIP.

    Parameters: ``n_components`` (K, at most 256; fewer when D or the data is smaller),
    ``n_text_components`` (size of the written subspace), ``random_state``.
    Fitted: ``components_ [K, D]``, ``text_components_ [T, D]``.
    """

    def __init__(self, n_components: int = 256, n_text_components: int = 8, random_state: int = 0) -> None:
        self.n_components = n_components
        self.n_text_components = n_text_components
        self.random_state = random_state

    def fit(self, images: Sequence[Image.Image], embed: EmbedFn, clean_embeds: np.ndarray | None = None,
            image_embeds: np.ndarray | None = None) -> "VisionOnlyProjection":
        """Learn from sample ``images`` and an ``embed`` function (list of PIL -> ``[n, D]``).

        ``clean_embeds [M, D]`` (optional, all the data's embeddings) sets the principal directions kept.
        ``image_embeds [n, D]`` (optional): the embeddings of ``images`` themselves when already at hand
        (``analyze`` has them cached), so that only the texted copies are embedded; they must come from
        the same decode and model as ``embed`` or their difference is not the written text alone.
        """
        rng = np.random.default_rng(self.random_state)
        if image_embeds is not None and len(image_embeds) != len(images):
            raise ValueError(f"image_embeds has {len(image_embeds)} rows for {len(images)} images")
        clean = np.asarray(embed(list(images)) if image_embeds is None else image_embeds, dtype=np.float64)
        texted = np.asarray(embed([render_text(im, rng) for im in images]), dtype=np.float64)
        diff = texted - clean
        n_text = min(self.n_text_components, len(diff), diff.shape[1] - 1)
        _, _, vt = np.linalg.svd(diff - diff.mean(0), full_matrices=False)
        self.text_components_ = vt[:n_text].astype(np.float32)
        return self._fit_visual(clean if clean_embeds is None else np.asarray(clean_embeds, np.float64))

    def fit_from_text_components(self, text_components: np.ndarray, clean_embeds: np.ndarray) -> "VisionOnlyProjection":
        """Fit with a given written subspace ``[T, D]`` (e.g. from a paper) on embeddings ``[M, D]``."""
        self.text_components_ = np.asarray(text_components, np.float32)
        return self._fit_visual(np.asarray(clean_embeds, np.float64))

    def _fit_visual(self, clean: np.ndarray) -> "VisionOnlyProjection":
        t = self.text_components_.astype(np.float64)
        q, _ = np.linalg.qr(t.T)  # [D, T] orthonormal basis of the written subspace
        centred = clean - clean.mean(0)
        visual = centred - (centred @ q) @ q.T
        d = clean.shape[1]
        k = min(self.n_components, d - q.shape[1])
        _, s, vt = np.linalg.svd(visual, full_matrices=True)
        # rows past the data's rank are still orthonormal and orthogonal to the written subspace
        basis = vt[:k] - (vt[:k] @ q) @ q.T
        basis, _ = np.linalg.qr(basis.T)
        self.components_ = basis.T[:k].astype(np.float32)
        return self

    def transform(self, embeds: np.ndarray) -> np.ndarray:
        """``[N, D]`` -> ``[N, K]``."""
        return np.asarray(embeds, np.float32) @ self.components_.T

    def save(self, path: str | Path) -> None:
        """Write ``components_`` (and the written subspace) to a ``.safetensors`` file."""
        from safetensors.numpy import save_file

        save_file({"components": np.ascontiguousarray(self.components_),
                   "text_components": np.ascontiguousarray(self.text_components_)}, str(path))

    @classmethod
    def load(cls, path: str | Path, embed_dim: int | None = None) -> "VisionOnlyProjection":
        """Load a projection matrix ``[K, D]`` from ``.safetensors``, ``.npy`` or ``.pt`` (``weights_only``).

        Raises ``ModelLoadError`` when the file is missing, unreadable, or its D does not match ``embed_dim``.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"Projection file {path} does not exist.", "pass a .safetensors, .npy or .pt file.")
        try:
            if path.suffix == ".safetensors":
                from safetensors.numpy import load_file

                d = load_file(str(path))
                comps = d.get("components", next(iter(d.values())))
                text = d.get("text_components")
            elif path.suffix == ".npy":
                comps, text = np.load(path, allow_pickle=False), None
            elif path.suffix in (".pt", ".pth"):
                import torch

                obj = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(obj, dict):
                    obj = next(v for v in obj.values() if hasattr(v, "shape"))
                comps, text = obj.float().numpy(), None
            else:
                raise ModelLoadError(f"{path}: unknown projection format '{path.suffix}'.",
                                     "use .safetensors, .npy or .pt.")
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
            raise ModelLoadError(f"{path}: cannot read a projection matrix ({exc}).",
                                 "save it as a [K, D] float array in .safetensors, .npy or .pt.") from None
        comps = np.asarray(comps, np.float32)
        if comps.ndim != 2:
            raise ModelLoadError(f"{path}: projection must be 2-D [K, D], got shape {comps.shape}.", "")
        if embed_dim is not None and comps.shape[1] != embed_dim:
            if comps.shape[0] == embed_dim:
                comps = comps.T  # stored as [D, K]
            else:
                raise ModelLoadError(f"{path}: projection has shape {comps.shape}, but the encoder's D is {embed_dim}.",
                                     "use a projection made for this CLIP model, or omit it to learn one.")
        return cls.from_components(comps, text)

    @classmethod
    def from_components(cls, components: np.ndarray, text_components: np.ndarray | None = None
                        ) -> "VisionOnlyProjection":
        """A fitted projection from a given matrix ``[K, D]`` (e.g. a distiller's stored projection)."""
        comps = np.asarray(components, np.float32)
        proj = cls(n_components=comps.shape[0])
        proj.components_ = comps
        proj.text_components_ = (np.zeros((0, comps.shape[1]), np.float32) if text_components is None
                                 else np.asarray(text_components, np.float32))
        return proj
