"""Vision-only projection (docs/design.md §3.2): drop what CLIP knows of written text, keep the top visual directions.

Fit: render random words onto sample images, embed clean and texted versions, take the principal
directions of (texted - clean) as the "written" subspace, project it out of the clean embeddings and
keep an orthonormal basis of their top principal directions.
"""
from __future__ import annotations

import itertools
import json
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open
from safetensors.numpy import save_file

from ..errors import InputError, ModelLoadError

EmbedFn = Callable[[Sequence[Image.Image]], np.ndarray]
#: ``[N, D]`` rows: an array or memory map (read in chunks), or an iterable of ``[n, D]`` chunks (e.g. a store)
Rows = np.ndarray | Iterable[np.ndarray]
CHUNK_ROWS = 16_384  # rows converted to float64 at a time: 64 MB at D = 512


def _chunks(rows: Rows, chunk_rows: int | None = None) -> Iterator[np.ndarray]:
    """``rows`` as float64 chunks ``[n, D]`` (an array is sliced ``chunk_rows``, default ``CHUNK_ROWS``, at a
    time; an iterable is passed through)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    if hasattr(rows, "shape"):
        array = cast(np.ndarray, rows)
        for s in range(0, len(array), chunk_rows):
            yield np.asarray(array[s:s + chunk_rows], np.float64)
        return
    for part in rows:
        yield np.asarray(part, np.float64)


def covariance(rows: Rows, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean [D], scatter [D, D], N)`` of ``rows`` in one pass over chunks: scatter is the sum of
    ``(x - mean)(x - mean)^T`` (float64). Each chunk is shifted by the first chunk's mean before its
    products are summed, so the final centring subtracts a small term (no cancellation)."""
    parts = (x for x in _chunks(rows, chunk_rows) if len(x))
    first = next(parts, None)
    if first is None:
        raise InputError("The projection got no embeddings to fit its directions on.", "embed some images first.")
    shift = first.mean(0)
    total = np.zeros_like(shift)
    scatter = np.zeros((len(shift), len(shift)))
    n = 0
    for x in itertools.chain([first], parts):
        x = x - shift  # a new array: a float64 input is never changed
        total += x.sum(0)
        scatter += x.T @ x
        n += len(x)
    offset = total / n
    return shift + offset, scatter - n * np.outer(offset, offset), n


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


WEIGHTS_NAME = "projection.safetensors"
CONFIG_NAME = "projection_config.json"  # beside the weights; a distiller's config.json may share the folder
MODEL_TYPE = "asap-vision-only-projection"


class VisionOnlyProjection:
    """Linear map ``[D] -> [K]`` (orthonormal rows) that drops the written-text subspace of CLIP.

    Parameters
    ----------
    n_components : K, directions kept (fewer when D or the data is smaller).
    n_text_components : T, size of the written-text subspace removed.
    random_state : seed of the words drawn onto the sample images.

    Attributes
    ----------
    components_ : ``[K, D]`` float32, orthonormal rows, largest variance first.
    text_components_ : ``[T, D]`` float32, the written-text directions (``[0, D]`` when unknown).

    Examples
    --------
    ``VisionOnlyProjection(random_state=0).fit(images, embed).transform(E)`` -> ``[N, K]``;
    ``save_pretrained(folder)`` then ``VisionOnlyProjection.from_pretrained(folder)`` gives back equal
    parameters and arrays.
    """

    def __init__(self, n_components: int = 256, n_text_components: int = 8, random_state: int = 0) -> None:
        self.n_components = n_components
        self.n_text_components = n_text_components
        self.random_state = random_state

    def get_params(self) -> dict[str, int]:
        """The ``__init__`` parameters by name (``VisionOnlyProjection(**p.get_params())``: an unfitted copy)."""
        return {k: getattr(self, k) for k in _PARAMS}

    def fit(self, images: Sequence[Image.Image], embed: EmbedFn, clean_embeds: Rows | None = None,
            image_embeds: np.ndarray | None = None) -> VisionOnlyProjection:
        """Learn the written-text subspace and the visual directions.

        Parameters
        ----------
        images : sample images (PIL); each gets a texted copy.
        embed : list of PIL images -> ``[n, D]`` embeddings.
        clean_embeds : optional ``[M, D]``, all the data's embeddings (an array, a memory map or an iterable of
            chunks, read once in chunks, never copied whole); sets the directions kept. Default: the sample's.
        image_embeds : optional ``[n, D]``, the embeddings of ``images`` when already at hand (``analyze`` has
            them cached), so that only the texted copies are embedded; they must come from the same decode and
            model as ``embed`` or their difference is not the written text alone.

        Returns
        -------
        self, with ``components_ [K, D]`` and ``text_components_ [T, D]``.
        """
        rng = np.random.default_rng(self.random_state)
        if not len(images):
            raise InputError("VisionOnlyProjection.fit got no images.", "pass at least two sample images.")
        if image_embeds is not None and len(image_embeds) != len(images):
            raise ValueError(f"image_embeds has {len(image_embeds)} rows for {len(images)} images")
        clean = np.asarray(embed(list(images)) if image_embeds is None else image_embeds, dtype=np.float64)
        texted = np.asarray(embed([render_text(im, rng) for im in images]), dtype=np.float64)
        diff = texted - clean
        n_text = min(self.n_text_components, len(diff), diff.shape[1] - 1)
        _, _, vt = np.linalg.svd(diff - diff.mean(0), full_matrices=False)
        self.text_components_ = vt[:n_text].astype(np.float32)
        return self._fit_visual(clean if clean_embeds is None else clean_embeds)

    def _fit_visual(self, clean: Rows) -> VisionOnlyProjection:
        """Top principal directions of ``clean`` (``[N, D]`` array or memory map, or an iterable of
        ``[n, D]`` chunks) inside the complement of the written subspace: the eigenvectors of the ``[D, D]``
        covariance restricted to that complement. Memory O(D^2) whatever N: rows are read ``CHUNK_ROWS`` at
        a time, only the ``[D, D]`` sum and the mean are float64.

        Equal (up to sign, then fixed: each row's largest entry positive) to the right singular vectors of
        the centred ``[N, D]`` matrix with the written subspace projected out, when N >= D; with fewer rows
        the directions past the data's rank are some orthonormal completion inside the complement."""
        t = self.text_components_.astype(np.float64)
        d = t.shape[1]
        # [D, D - T] orthonormal basis of the written subspace's complement (the full QR's last columns)
        rest = np.linalg.qr(t.T, mode="complete")[0][:, len(t):] if len(t) else np.eye(d)
        _, scatter, _ = covariance(clean)
        evals, evecs = np.linalg.eigh(rest.T @ scatter @ rest)  # ascending
        k = min(self.n_components, rest.shape[1])
        basis = (rest @ evecs[:, ::-1][:, :k]).T  # [K, D], largest variance first
        rows = np.arange(k)
        basis *= np.sign(basis[rows, np.abs(basis).argmax(1)])[:, None]
        self.components_ = basis.astype(np.float32)
        return self

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise InputError("This VisionOnlyProjection is not fitted yet.",
                             "call fit(...) first, or load one with VisionOnlyProjection.from_pretrained(path).")

    def transform(self, embeds: np.ndarray) -> np.ndarray:
        """``[N, D]`` -> ``[N, K]`` float32."""
        self._check_is_fitted()
        embeds = np.asarray(embeds, np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.components_.shape[1]:
            raise InputError(f"transform expects embeddings [N, {self.components_.shape[1]}], got {embeds.shape}.",
                             "embed with the CLIP this projection was fitted for.")
        return embeds @ self.components_.T

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the fitted projection into ``folder``.

        Parameters
        ----------
        folder : created if missing.

        Returns
        -------
        The weights file ``folder/projection.safetensors`` (``components [K, D]``, ``text_components [T, D]``);
        the parameters (``get_params``) go beside it into ``projection_config.json``.
        """
        self._check_is_fitted()
        path = Path(folder) / WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"components": np.ascontiguousarray(self.components_),
                   "text_components": np.ascontiguousarray(self.text_components_)}, str(path))
        config = {"model_type": MODEL_TYPE, **self.get_params()}
        (path.parent / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, embed_dim: int | None = None) -> VisionOnlyProjection:
        """A fitted projection from a folder written by ``save_pretrained``, or from a published matrix file.

        Parameters
        ----------
        path : a folder (``projection.safetensors`` and ``projection_config.json``), or a ``[K, D]`` matrix file
            (``.safetensors``, ``.npy`` without pickle, ``.pt`` with ``weights_only``; ``[D, K]`` is transposed
            when ``embed_dim`` tells which side is D).
        embed_dim : the encoder's D, checked when given.

        Returns
        -------
        The projection with the saved parameters (without a config, as files written before it: the
        parameters in the safetensors metadata, else K and T read off the arrays) and ``components_``,
        ``text_components_``. Raises ``ModelLoadError`` when it is missing, unreadable, or its D does not
        match ``embed_dim``.
        """
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_NAME
        if not path.is_file():
            raise ModelLoadError(f"Projection file {path} does not exist.", "pass a .safetensors, .npy or .pt file.")
        comps, text, metadata = _read_matrix(path)
        comps = np.asarray(comps, np.float32)
        if comps.ndim != 2:
            raise ModelLoadError(f"{path}: projection must be 2-D [K, D], got shape {comps.shape}.",
                                 "save it as a [K, D] float array.")
        if embed_dim is not None and comps.shape[1] != embed_dim:
            if comps.shape[0] != embed_dim:
                raise ModelLoadError(f"{path}: projection has shape {comps.shape}, but the encoder's D is {embed_dim}.",
                                     "use a projection made for this CLIP model, or omit it to learn one.")
            comps = comps.T  # stored as [D, K]
        proj = cls.from_components(comps, text)
        params = _read_params(path, metadata)
        for k, v in params.items():
            setattr(proj, k, v)
        return proj

    @classmethod
    def from_components(cls, components: np.ndarray, text_components: np.ndarray | None = None
                        ) -> VisionOnlyProjection:
        """A fitted projection from given matrices (e.g. a distiller's stored projection).

        Parameters
        ----------
        components : ``[K, D]``, becomes ``components_`` (float32); ``n_components`` = K.
        text_components : ``[T, D]`` or None (``[0, D]``), becomes ``text_components_``; ``n_text_components`` = T.
        """
        comps = np.asarray(components, np.float32)
        text = (np.zeros((0, comps.shape[1]), np.float32) if text_components is None
                else np.asarray(text_components, np.float32))
        proj = cls(n_components=comps.shape[0], n_text_components=len(text))
        proj.components_ = comps
        proj.text_components_ = text
        return proj


_PARAMS = ("n_components", "n_text_components", "random_state")


def _read_params(weights: Path, metadata: dict[str, str] | None) -> dict[str, int]:
    """The parameters saved with ``weights``: its folder's ``CONFIG_NAME`` when the file is ``WEIGHTS_NAME``,
    else the safetensors ``metadata`` (projections saved before the config), else none (read off the arrays).
    ``ModelLoadError`` for a config that is not JSON or holds a parameter that is not a whole number."""
    config = weights.parent / CONFIG_NAME
    raw: dict = {}
    try:
        if weights.name == WEIGHTS_NAME and config.is_file():
            raw = json.loads(config.read_text())
        elif metadata:
            raw = {k: int(v) for k, v in metadata.items() if k in _PARAMS}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config if config.is_file() else weights}: cannot read the projection's parameters "
                             f"({exc}).", "save the projection again with save_pretrained.") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config}: not a JSON object.", "save the projection again with save_pretrained.")
    params = {k: raw[k] for k in _PARAMS if k in raw}
    bad = [k for k, v in params.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ModelLoadError(f"{config}: '{bad[0]}' is not a whole number.", "save the projection again with "
                             "save_pretrained.")
    return params


def _read_matrix(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, str] | None]:
    """(components, text components or None, safetensors metadata or None) from a ``.safetensors``, ``.npy`` or
    ``.pt`` file."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="numpy") as f:
                d = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors file, not a dict)
                metadata = f.metadata()
            return d.get("components", next(iter(d.values()))), d.get("text_components"), metadata
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None, None
        if path.suffix in (".pt", ".pth"):
            import torch  # only for a published .pt file: reading a bundle's projection needs no torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = next(v for v in obj.values() if hasattr(v, "shape"))
            return obj.float().numpy(), None, None
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read a projection matrix ({exc}).",
                             "save it as a [K, D] float array in .safetensors, .npy or .pt.") from None
    raise ModelLoadError(f"{path}: unknown projection format '{path.suffix}'.", "use .safetensors, .npy or .pt.")
