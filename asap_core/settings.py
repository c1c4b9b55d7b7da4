"""Every environment setting of ASAP Explorer, declared once and read once into one typed, frozen object.

Each setting is one field of ``Settings`` (pydantic-settings): its type, its default and its description.
The variable is ``ASAP_<FIELD>`` unless the field names others (``HF_HUB_OFFLINE``, ``HF_ENDPOINT``,
``CXX``); ``ENVIRONMENT`` and the README's settings table (``python -m asap_core.settings --markdown``)
are derived from these fields, and a test keeps the README's table equal to the generated one.

``settings()`` reads the environment on first use and returns the same ``Settings`` afterwards; nothing
else in ``asap_core`` (or the app) reads ``os.environ``. ``reload_settings()`` reads it again (tests, or a
long-lived process whose environment changed). ``Settings(...)`` alone reads no environment: the declared
defaults and the values given.

Values are stripped, and an empty one means the default. Booleans accept ``1/true/yes/on`` and
``0/false/no/off`` (any case); numbers below their minimum are refused; anything malformed is an
``InputError`` naming the variable and how to fix it.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import InputError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NO_PIXEL_LIMIT = frozenset({"0", "none", "off"})
MB = 1024 * 1024  # the MB of every *_MB setting (and of Streamlit's maxUploadSize)


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    """The one boolean parser: ``1/true/yes/on`` -> True, ``0/false/no/off`` -> False, unset/empty -> ``default``."""
    value = (raw or "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"{name}={raw!r} is not a yes/no value.", f"set {name} to 1 or 0.")


def _yes_no(value: object) -> object:
    """A boolean setting's text as a bool (``parse_bool``'s words only; pydantic alone would take ``t``, ``y``)."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise PydanticCustomError("yes_no", "not a yes/no value")


def _comma_list(value: object) -> object:
    """``" a , b,,"`` -> ``("a", "b")``."""
    return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value


def _pixel_limit(value: object) -> object:
    """``ASAP_MAX_IMAGE_PIXELS``: ``0/none/off`` -> None (no limit), else a whole number of pixels, at least 1."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in _NO_PIXEL_LIMIT:
        return None
    try:
        number = int(float(text))
    except (ValueError, OverflowError):
        raise PydanticCustomError("int_parsing", "not a whole number") from None
    if number < 1:
        raise PydanticCustomError("greater_than_equal", "below {ge}", {"ge": 1})
    return number


YesNo = Annotated[bool, BeforeValidator(_yes_no)]
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
UserPath = Annotated[Path, AfterValidator(lambda p: p.expanduser())]
RootPath = Annotated[Path, AfterValidator(lambda p: p.expanduser().resolve())]
#: ``False`` keeps Pillow's limit, ``None`` disables it, an int sets it
PixelLimit = Annotated[int | None | bool, BeforeValidator(_pixel_limit)]


def _shown(text: str) -> dict[str, Any]:
    """The default as the README's table writes it, for a field whose Python default (None) says nothing."""
    return {"shown_default": text}


class Settings(BaseSettings):
    """What the environment configures: one field per variable (see the module's docstring).

    ``max_image_pixels``: ``False`` keeps Pillow's limit, ``None`` disables it, an int sets it.
    """

    model_config = SettingsConfigDict(env_prefix="ASAP_", frozen=True, populate_by_name=True,
                                      validate_default=True, extra="ignore")

    model: str = Field("openai/clip-vit-base-patch32",
                       description="CLIP checkpoint: Hugging Face id or local folder")
    cache_dir: UserPath = Field(Path("~/.cache/asap_explorer"),
                                description="where embeddings, maps, models and the demo bundle are cached")
    bundle: str | None = Field(None, json_schema_extra=_shown("(the demo)"),
                               description="bundle the app opens first (a folder; in hosted mode a name under "
                                           "the root)")
    hosted: YesNo = Field(False, description="`1`: public explorer mode: bundles by name, no paths, budgets per "
                                             "visitor, allow-listed models (see \"Host it\")")
    bundle_root: RootPath | None = Field(None, description="hosted mode: the folder whose sub-folders are the "
                                                           "bundles visitors may open")
    model_allowlist: Names = Field((), description="hosted mode: comma-separated model ids visitors may switch to")
    max_upload_mb: float = Field(10.0, ge=0, allow_inf_nan=False, description="hosted mode: largest upload, in MB")
    relevance_budget: int = Field(200, ge=0, description="hosted mode: images with on-demand relevance maps per "
                                                         "visitor and day")
    heavy_slots: int = Field(2, ge=1, description="hosted mode: on-demand computations (maps, uploads, laundering) "
                                                  "run at once; others wait")
    client_header: str = Field("X-Forwarded-For", description="hosted mode behind proxies: the header they append "
                                                              "the client's address to")
    trusted_proxies: int = Field(0, ge=0, description="hosted mode: proxies in front of the server; the visitor is "
                                                      "the address this many hops from the right of "
                                                      "`ASAP_CLIENT_HEADER` (`0`: the peer address)")
    max_upload_pixels: int = Field(64_000_000, ge=1, description="hosted mode: largest uploaded or served image in "
                                                                 "pixels, read from its header before decoding")
    upload_mb_per_day: float = Field(40.0, ge=0, allow_inf_nan=False,
                                     description="hosted mode: MB of uploads one visitor may send per day")
    upload_storage_mb: float = Field(2048.0, ge=0, allow_inf_nan=False,
                                     description="hosted mode: disk for all visitors' uploads and the caches they "
                                                 "create; new uploads are refused beyond it")
    state_url: str | None = Field(None, json_schema_extra=_shown("(SQLite in `ASAP_CACHE_DIR`)"),
                                  description="where budgets and class results are kept: an SQLAlchemy URL, e.g. "
                                              "`postgresql://host/asap`, shared by several servers")
    log_runs: YesNo = Field(False, description="`1`: the server log gets one line per page run and per fragment "
                                               "rerun: its wall and CPU seconds (capacity planning; "
                                               "`benchmarks/load_test.py` reads them)")
    compile: YesNo = Field(False, description="`1`: `torch.compile` the CLIP forward (one-off compile; faster on "
                                              "long runs)")
    cpu_bf16: YesNo = Field(False, description="`1`: bfloat16 model on CPUs with native bf16 (faster, embeddings "
                                               "differ slightly)")
    malloc_keep: YesNo = Field(True, description="`0`: leave glibc's malloc alone (by default it keeps freed "
                                                 "activations for reuse)")
    max_image_pixels: PixelLimit = Field(False, json_schema_extra=_shown("(Pillow's, ~89 Mpx)"),
                                         description="largest image in pixels before it is refused; `0` = no limit")
    # the Hub's own rule: the first of the two that is set decides
    hf_offline: YesNo = Field(False, validation_alias=AliasChoices("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"),
                              description="`1`: never contact the Hugging Face Hub (`TRANSFORMERS_OFFLINE=1` says "
                                          "the same)")
    hf_endpoint: str = Field("https://huggingface.co", validation_alias="HF_ENDPOINT",
                             description="the Hub to download checkpoints from")
    cxx: str | None = Field(None, validation_alias="CXX", json_schema_extra=_shown("`c++` / `g++` / `clang++`"),
                            description="the C++ compiler `torch.compile` uses on CPU")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def upload_bytes_per_day(self) -> int:
        return int(self.upload_mb_per_day * MB)

    @property
    def upload_storage_bytes(self) -> int:
        return int(self.upload_storage_mb * MB)

    @property
    def state_db_url(self) -> str:
        """``ASAP_STATE_URL``, else an SQLite file ``state.sqlite3`` in ``cache_dir``."""
        return self.state_url or f"sqlite:///{(self.cache_dir / 'state.sqlite3').as_posix()}"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` takes only the values given: the environment is read by ``from_env`` alone."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of ``ENVIRONMENT`` from ``env`` (default ``os.environ``); ``InputError`` names
        a malformed one and how to fix it."""
        given = {k: v.strip() for k, v in (os.environ if env is None else env).items() if v and v.strip()}
        values = _MappingSource(cls, given)()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _input_error(exc.errors()[0], given) from None


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source (prefix, aliases, no JSON for ``NoDecode``) over a given mapping."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # the settings are case-insensitive, as pydantic-settings reads os.environ: it looks names up in lower case
        return {k.lower(): v for k, v in self._given.items()}


def env_names(field: str) -> tuple[str, ...]:
    """The variables that set ``field``, first the one the table lists: ``max_upload_mb`` -> ``ASAP_MAX_UPLOAD_MB``."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    if isinstance(alias, str):
        return (alias,)
    return (f"{Settings.model_config.get('env_prefix', '')}{field.upper()}",)


def _field_of(key: str) -> str:
    """The field a validation error's location names (a field name, or an alias the source used)."""
    return next((f for f in Settings.model_fields if key == f or key in env_names(f)), key)


def default_text(info: FieldInfo) -> str:
    """A field's default as the README's table writes it, in markdown: a value in backticks, or a note in
    parentheses such as ``(none)``."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return str(extra["shown_default"])
    value = info.default
    if value is None or value == ():
        return "(none)"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _input_error(error: ErrorDetails, given: Mapping[str, str]) -> InputError:
    """The ``InputError`` for pydantic's first ``error``: the variable as the user set it, what is wrong, a fix."""
    field = _field_of(str(error["loc"][0]) if error["loc"] else "")
    names = env_names(field) if field in Settings.model_fields else (field,)
    name = next((n for n in names if n in given), names[0])
    raw = given.get(name, error.get("input"))
    kind = error["type"]
    default = default_text(Settings.model_fields[field]).replace("`", "") if field in Settings.model_fields else ""
    unset = f"or unset it (default: {default.strip('()')})"
    if kind in ("yes_no", "bool_parsing", "bool_type"):
        return InputError(f"{name}={raw!r} is not a yes/no value.", f"set {name} to 1 or 0, {unset}.")
    if kind == "greater_than_equal":
        least = f"{error.get('ctx', {}).get('ge', 0):g}"
        return InputError(f"{name}={raw!r} is below {least}.", f"set {name} to {least} or more, {unset}.")
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return InputError(f"{name}={raw!r} is not a whole number.", f"set {name} to a whole number, {unset}.")
    if kind in ("float_parsing", "float_type", "finite_number"):
        return InputError(f"{name}={raw!r} is not a number.", f"set {name} to a number, {unset}.")
    return InputError(f"{name}={raw!r} cannot be used: {error['msg']}.",
                      f"set {name} as README.md's settings table says, {unset}.")


#: variable -> (default as a user would write it, what it sets), derived from ``Settings``' fields
ENVIRONMENT: dict[str, tuple[str, str]] = {
    env_names(field)[0]: (default_text(info).replace("`", ""), (info.description or "").replace("`", ""))
    for field, info in Settings.model_fields.items()
}


def markdown_table() -> str:
    """The README's settings table (variable, default, what it sets), one row per field of ``Settings``."""
    rows = [f"| `{env_names(field)[0]}` | {default_text(info)} | {info.description} |"
            for field, info in Settings.model_fields.items()]
    return "\n".join(["| variable | default | what it sets |", "|---|---|---|", *rows]) + "\n"


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read from the environment once."""
    s = Settings.from_env()
    _apply_pixel_limit(s.max_image_pixels)
    return s


def reload_settings() -> Settings:
    """Read the environment again (after it changed) and return the new settings."""
    settings.cache_clear()
    return settings()


_PILLOW_DEFAULT: list[int | None] = []


def _apply_pixel_limit(limit: int | None | bool) -> None:
    """Pillow's bomb limit is process-global: set it from ``ASAP_MAX_IMAGE_PIXELS`` (unset: Pillow's own)."""
    from PIL import Image

    if not _PILLOW_DEFAULT:
        _PILLOW_DEFAULT.append(Image.MAX_IMAGE_PIXELS)
    Image.MAX_IMAGE_PIXELS = _PILLOW_DEFAULT[0] if limit is False else limit


def main(argv: list[str] | None = None) -> int:
    """``python -m asap_core.settings --markdown``: print the README's settings table."""
    parser = argparse.ArgumentParser(prog="python -m asap_core.settings", description=main.__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the settings table of README.md")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.print_help()
        return 2
    sys.stdout.write(markdown_table())
    return 0


__all__ = ["ENVIRONMENT", "MB", "Settings", "env_names", "markdown_table", "parse_bool", "reload_settings",
           "settings"]

if __name__ == "__main__":
    raise SystemExit(main())
