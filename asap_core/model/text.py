"""CLIP text tower: words -> L2-normalised text embeddings ``[n, D]`` in the space of the image embeddings.

Used to name the dimensions (``analyses.naming``): a word's embedding goes through the same vision-only
projection and distiller as an image's. Only checkpoints with a text tower (a ``CLIPModel`` config with
``text_config``) and a tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``) have one; the
random CLIP of the demo has a text stub and no tokenizer. Callers get it from ``model.factory.load_text_encoder``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError
from .encoder import CheckpointInfo, resolve_device

TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class NoTextTower(ModelLoadError):
    """The checkpoint has no text tower or no tokenizer: no words can be ranked with it."""


def text_tower_problem(model_dir: str | Path) -> str | None:
    """Why the checkpoint in ``model_dir`` cannot embed words (no ``text_config``, no tokenizer files), or None."""
    folder = Path(model_dir)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "its config.json cannot be read"
    if not isinstance(cfg, dict) or not isinstance(cfg.get("text_config"), dict):
        return "it is an image-only checkpoint (no text tower)"
    if not any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES):
        return "it has a text tower but no tokenizer (tokenizer.json, or vocab.json + merges.txt)"
    return None


def _tokenizer_hash(folder: Path) -> str:
    h = hashlib.sha1()
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if (folder / f).is_file():
            h.update(f.encode())
            h.update((folder / f).read_bytes())
    return h.hexdigest()[:16]


class ClipTextEncoder:
    """CLIP text tower with its projection (``CLIPTextModelWithProjection``) and tokenizer.

    ``encode_texts(texts) -> [n, D]`` float32, L2-normalised (as ``ClipEncoder`` normalises images).
    ``cache_key`` covers the checkpoint (weights + preprocessing) and the tokenizer files.
    """

    def __init__(self, text_model, tokenizer, info: CheckpointInfo, device: torch.device) -> None:
        self.text_model = text_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.info = info
        self.model_id = info.model_id
        self.device = device
        self.max_length = int(getattr(text_model.config, "max_position_embeddings", 77))
        self.cache_key = hashlib.sha1(f"{info.cache_key}|{_tokenizer_hash(info.model_dir)}".encode()).hexdigest()[:16]

    @classmethod
    def from_pretrained(cls, info: CheckpointInfo, device: str = "auto") -> ClipTextEncoder:
        """The text tower of the checkpoint ``info`` describes (``encoder.inspect_checkpoint``), fp32.

        ``NoTextTower`` when it has none (or no tokenizer); ``ModelLoadError`` when its files do not load.
        Callers get it from ``model.factory.load_text_encoder`` (cached).
        """
        from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        problem = text_tower_problem(info.model_dir)
        if problem:
            raise NoTextTower(f"{info.model_id} cannot rank words: {problem}.",
                              "use a full CLIP checkpoint with its tokenizer (e.g. openai/clip-vit-base-patch32).")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(info.model_dir), local_files_only=True)
            config = CLIPConfig.from_pretrained(str(info.model_dir), local_files_only=True)
            text_config = config.text_config  # CLIPConfig builds it from the file's dict (typed as either)
            if not isinstance(text_config, CLIPTextConfig):
                raise TypeError("its config has no text_config")
            text_config.projection_dim = config.projection_dim  # the joint space's width, as the image side's
            model = CLIPTextModelWithProjection.from_pretrained(str(info.model_dir), config=text_config,
                                                                local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"The text tower of {info.model_id} cannot be loaded ({exc}).",
                                 "check the checkpoint's text weights and tokenizer files.") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        dev = resolve_device(device)
        # transformers wraps PreTrainedModel.to with functools.wraps, whose stub leaves `self` unbound
        return cls(model.to(dev), tokenizer, info, dev)  # type: ignore[arg-type]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``texts`` -> normalised text embeddings ``[n, D]`` float32 (each truncated to the tower's length)."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            emb = self.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        dim = int(self.text_model.config.projection_dim)
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


__all__ = ["ClipTextEncoder", "NoTextTower", "TOKENIZER_FILES", "text_tower_problem"]
