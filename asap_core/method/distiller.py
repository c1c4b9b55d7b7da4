"""The distiller: CLIP embedding -> vision-only projection -> 16 near-orthogonal dimensions -> fake logit."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, ModelLoadError
from ..storage.schema import N_DIMS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "distiller.safetensors"


@dataclass
class DistillerConfig:
    """Shapes of a distiller: ``embed_dim`` (D) -> ``proj_dim`` (<= 256) -> ``n_dims`` (``schema.N_DIMS``) -> 1."""

    embed_dim: int
    proj_dim: int
    n_dims: int = N_DIMS
    n_generators: int = 0
    generator_names: tuple[str, ...] = ()


class Distiller(nn.Module):
    """``forward(image_embeds [B, D]) -> (z [B, 16], fake_logit [B])``.

    ``projection`` (buffer ``[P, D]``, orthonormal rows) is the fixed vision-only projection, followed by a
    fixed standardisation (buffers ``center [P]``, scalar ``scale``);
    ``dims`` is W1, b1 (``[16, P]``); ``head`` is w2, b2. An optional ``generator_head`` maps z to
    generator logits ``[B, n_generators]`` (see ``generator_logits``).
    """

    # buffers and the optional head, declared for the type checker (``nn.Module.__getattr__`` is untyped)
    projection: torch.Tensor
    center: torch.Tensor
    scale: torch.Tensor
    generator_head: nn.Linear | None

    def __init__(self, config: DistillerConfig, projection: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        proj = torch.eye(config.proj_dim, config.embed_dim) if projection is None else projection.float()
        if tuple(proj.shape) != (config.proj_dim, config.embed_dim):
            raise ValueError(f"projection has shape {tuple(proj.shape)}, "
                             f"expected {(config.proj_dim, config.embed_dim)}")
        self.register_buffer("projection", proj.contiguous())
        # standardisation of the projected embedding (set by the trainer): CLIP embeddings are unit-norm, so
        # each of P coordinates is ~1/sqrt(P) small; centring and one isotropic scale keep W1's geometry
        self.register_buffer("center", torch.zeros(config.proj_dim))
        self.register_buffer("scale", torch.ones(()))
        self.dims = nn.Linear(config.proj_dim, config.n_dims)
        self.head = nn.Linear(config.n_dims, 1)
        self.generator_head = nn.Linear(config.n_dims, config.n_generators) if config.n_generators else None

    def project(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> vision-only, standardised ``[B, P]``: ``(E Pᵀ - center) * scale``."""
        return (image_embeds.float() @ self.projection.T - self.center) * self.scale

    def forward(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.dims(self.project(image_embeds))
        return z, self.head(z).squeeze(-1)

    def generator_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, 16]`` -> ``[B, n_generators]``; raises if the distiller has no generator head."""
        if self.generator_head is None:
            raise ValueError("this distiller was trained without a generator head")
        return self.generator_head(z)

    def orthogonality(self) -> float:
        """Largest off-diagonal |cos| between the 16 rows of W1 (0 = orthogonal)."""
        w = nn.functional.normalize(self.dims.weight.detach().float(), dim=1)
        g = (w @ w.T).abs()
        g.fill_diagonal_(0)
        return float(g.max())

    @property
    def fingerprint(self) -> str:
        """Content hash of all weights (for cache keys)."""
        import hashlib

        h = hashlib.sha1()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().float().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def predict(self, image_embeds: np.ndarray, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """``[N, D]`` -> ``(z [N, 16], p_fake [N])`` as float32 numpy; ``InputError`` for another shape."""
        image_embeds = np.asarray(image_embeds)
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.config.embed_dim:
            raise InputError(f"the distiller takes embeddings [N, {self.config.embed_dim}], got {image_embeds.shape}.",
                             "embed with the CLIP the distiller was trained on.")
        # written into arrays sized once: small per-chunk results kept between the freed [batch, P] products
        # fragment the heap, which then keeps about 1.5 GB it cannot give back at a million rows
        zs = np.empty((len(image_embeds), self.config.n_dims), np.float32)
        ps = np.empty(len(image_embeds), np.float32)
        for i in range(0, len(image_embeds), batch_size):
            z, logit = self(torch.as_tensor(image_embeds[i:i + batch_size], dtype=torch.float32))
            zs[i:i + batch_size] = z.numpy()
            ps[i:i + batch_size] = torch.sigmoid(logit).numpy()
        return zs, ps

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``distiller.safetensors`` into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        cfg["generator_names"] = list(self.config.generator_names)
        (path / CONFIG_NAME).write_text(json.dumps({"model_type": "asap-distiller", **cfg}, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Distiller:
        """Load what ``save_pretrained`` wrote (safetensors only, no pickle)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ModelLoadError(f"{path} holds no distiller ({CONFIG_NAME} + {WEIGHTS_NAME}).",
                                 "point at a bundle's model/ folder, or re-run `asap analyze`.")
        try:
            cfg = json.loads((path / CONFIG_NAME).read_text())
            cfg.pop("model_type", None)
            cfg["generator_names"] = tuple(cfg.get("generator_names", ()))
            if cfg.get("n_dims", N_DIMS) != N_DIMS:
                raise ValueError(f"{cfg['n_dims']} dimensions, this version reads {N_DIMS}")
            state = load_file(str(path / WEIGHTS_NAME))
            model = cls(DistillerConfig(**cfg), projection=state["projection"])
            model.load_state_dict(state)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"{path} holds a distiller this version cannot read ({exc}).",
                                 "re-run `asap analyze` to train it again.") from None
        return model.eval()
