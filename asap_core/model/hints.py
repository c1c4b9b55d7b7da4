"""How to get CLIP weights: the fix a user reads when a model cannot be loaded, worded for where they are.

Torch-free, so that bundles opened view-only (and ``views.trust``) can word the same fix. ``where`` is
``"cli"`` (``asap``: ``--model``), ``"app"`` (the explorer's sidebar: its Model fields) or
``"hosted"`` (a public explorer: visitors cannot name a model, its operator can).
"""
from __future__ import annotations

import re

from ..errors import AsapError, ModelLoadError
from ..settings import Settings

DEFAULT_MODEL: str = Settings.model_fields["model"].default  # ASAP_MODEL's default, declared in settings
WHERES: tuple[str, ...] = ("cli", "app", "hosted")


def download_hint(model_id: str = DEFAULT_MODEL) -> str:
    """How to fetch ``model_id`` on a machine with internet and bring it to one without."""
    folder = model_id.rstrip("/").split("/")[-1] or "clip"
    return (f"to get the weights, on a machine with internet run `hf download {model_id} --local-dir {folder}` "
            "(the `hf` command of huggingface_hub) and copy that folder here, or run "
            f"`hf download {model_id}` and copy ~/.cache/huggingface")


def load_hint(model_id: str = DEFAULT_MODEL, where: str = "cli") -> str:
    """The fix for CLIP weights that cannot be had: use a local model folder (offline), or fetch ``model_id``."""
    if where == "hosted":
        return ("pick another copy of the model in the sidebar if one is offered, or ask the explorer's operator "
                "to install its weights on the server.")
    if where == "app":
        local = ("name a local CLIP folder (written by `save_pretrained` or `hf download --local-dir`) in the sidebar: "
                 "the Model field of \u201cAnalyse an image folder\u201d, or \u201cLocal copy of this model\u201d "
                 "under an open bundle whose model is missing; or start the app with ASAP_MODEL=/path/to/folder")
    else:
        local = "pass --model /path/to/folder (a local CLIP folder) or set ASAP_MODEL=/path/to/folder"
    return f"{local}; {offline_hint(model_id)}"


def offline_hint(model_id: str = DEFAULT_MODEL) -> str:
    """HF_HUB_OFFLINE, then how to bring ``model_id``'s weights to this machine."""
    return (f"with HF_HUB_OFFLINE=1 nothing is fetched from the Hub. Otherwise, {download_hint(model_id)} to this "
            "machine.")


class MissingWeights(ModelLoadError):
    """CLIP weights that cannot be had (offline, no such folder, unreadable): ``hint`` is worded for the command
    line; ``hint_for(where)`` for another place (``WHERES``)."""

    def __init__(self, message: str, model_id: str = DEFAULT_MODEL) -> None:
        super().__init__(message, load_hint(model_id, "cli"))
        self.model_id = model_id

    def hint_for(self, where: str) -> str:
        return load_hint(self.model_id, where)


def hint_for(exc: AsapError, where: str) -> str:
    """``exc.hint`` worded for ``where`` when it is about missing weights (``MissingWeights``), else as it is."""
    return exc.hint_for(where) if isinstance(exc, MissingWeights) else exc.hint


#: an operator's setting (``ASAP_CACHE_DIR``, ``ASAP_MAX_IMAGE_PIXELS=...``) or Hugging Face's switch
_SETTING = re.compile(r"\$?\b(?:ASAP|HF_HUB)_[A-Z0-9_]+\b")
#: an exception's class name, as Python libraries print them (``TProtocolException``, ``ValueError: ...``)
_EXC_NAME = re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Warning)\b")
OPERATOR_FIX = "the explorer's operator can change this on the server."


def _clauses(text: str) -> list[str]:
    """``text`` cut after each ``;`` or sentence end that is not inside parentheses (each piece keeps its mark)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth <= 0 and (ch == ";" or (ch in ".!?" and text[i + 1:i + 2] in ("", " "))):
            out.append(text[start:i + 1])
            start = i + 1
    return [c for c in out + [text[start:]] if c.strip()]


def _without_details(clause: str) -> str:
    """``clause`` without parenthesised parts that name an exception class (a library's own words)."""
    return re.sub(r"\s*\([^()]*\)", lambda m: "" if _EXC_NAME.search(m.group(0)) else m.group(0), clause)


def hosted_words(text: str, empty: str = OPERATOR_FIX) -> str:
    """``text`` as a visitor of a public explorer may read it (``where == "hosted"``): clauses that advise an
    operator's setting (``ASAP_*``) are left out, and so are the exception details a library added in
    parentheses; ``empty`` when nothing is left."""
    kept = [_without_details(c) for c in _clauses(text) if not _SETTING.search(c)]
    kept = [_EXC_NAME.sub("an internal error", c) for c in kept]
    out = "".join(kept).strip()
    if not out:
        return empty
    return out[:-1] + "." if out.endswith(";") else out
