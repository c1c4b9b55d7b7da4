"""How the app is served: the ``streamlit run`` command line, its options derived from ``asap_core.settings``.

``asap serve [--port P] [--address A]`` runs ``streamlit_command(settings(), ...)`` in place
of itself (the Docker recipe's ``CMD``). ``.streamlit/config.toml`` cannot read our settings, so the options
are split three ways:

- ``FOR_EVERYONE`` is what ``.streamlit/config.toml`` holds (a test keeps the two equal): right for a
  developer's ``streamlit run``, for ``serve`` and for hosts that only run ``streamlit run``. No usage
  statistics; XSRF protection stays on (proxy guides that switch it off to "fix" 403s on upload are wrong).
- ``FOR_SERVING`` is added by ``serve`` in every mode: headless, no file watcher and no rerun on save (a
  developer's ``streamlit run`` keeps watching the sources, which is why these are not in config.toml).
- ``hosted_options(settings)`` is added by ``serve`` when ``ASAP_HOSTED=1``: visitors see a generic
  message instead of tracebacks (``client.showErrorDetails = "none"``; details go to the server log), a
  toolbar without developer items (``client.toolbarMode = "minimal"``), and ``server.maxUploadSize`` from
  ``ASAP_MAX_UPLOAD_MB``, so the server refuses a larger request body (HTTP 413) before it is read in.

Flags passed to ``streamlit run`` outrank every config file and ``STREAMLIT_*`` variable, so ``serve``
passes all of its options, those of config.toml included. Streamlit takes whole MB (of 1024 x 1024 bytes,
the unit of ``Settings.max_upload_bytes``), so its limit is ``ASAP_MAX_UPLOAD_MB`` rounded up;
``HostedPolicy.check_upload`` stays the exact check, on every upload, however the app was started.

A host that runs ``streamlit run`` itself (Streamlit Community Cloud) reads only config files:
``asap serve --print-config`` prints the same options as TOML for its ``.streamlit/config.toml``.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from .settings import Settings

#: the app's entry file (the repository root holds the package and the app)
APP_FILE = Path(__file__).resolve().parents[1] / "streamlit_app.py"
#: Streamlit's default port, and the one the Docker recipe exposes
DEFAULT_PORT = 8501
#: Streamlit's liveness endpoint: answers ``ok`` once the server is up
HEALTH_PATH = "/_stcore/health"

#: right for every run of the app; ``.streamlit/config.toml`` holds exactly these
FOR_EVERYONE: dict[str, bool | int | str] = {
    "browser.gatherUsageStats": False,
    "server.enableXsrfProtection": True,
    # no full garbage collection after every rerun: with torch, transformers and pandas loaded it scans
    # half a million objects each time, a large share of a rerun's server CPU (benchmarks/RESULTS.md §17);
    # Python's generational collector still runs on its own thresholds
    "runner.postScriptGC": False,
}
#: a server, not a developer's session
FOR_SERVING: dict[str, bool | int | str] = {
    "server.headless": True,
    "server.fileWatcherType": "none",
    "server.runOnSave": False,
}


def upload_limit_mb(s: Settings) -> int:
    """``server.maxUploadSize`` for ``ASAP_MAX_UPLOAD_MB``: whole MB, rounded up, at least 1."""
    return max(1, math.ceil(s.max_upload_mb))


def hosted_options(s: Settings) -> dict[str, bool | int | str]:
    """The strict options of a public explorer (``ASAP_HOSTED=1``)."""
    return {
        "client.showErrorDetails": "none",
        "client.toolbarMode": "minimal",
        "server.maxUploadSize": upload_limit_mb(s),
        "server.enableXsrfProtection": True,
    }


def server_options(s: Settings) -> dict[str, bool | int | str]:
    """Every Streamlit option ``serve`` sets for these settings (``hosted_options`` when hosted)."""
    return {**FOR_EVERYONE, **FOR_SERVING, **(hosted_options(s) if s.hosted else {})}


def hosted_start_notes(s: Settings) -> list[str]:
    """What ``serve`` tells the operator when a public explorer starts: where budgets are kept (the state
    store is opened now, so a bad ``ASAP_STATE_URL`` fails here, not at a visitor's first request) and who
    a visitor is (``hosting.loopback_notice``). ``InputError`` when the store cannot be opened."""
    from .errors import InputError
    from .hosting import loopback_notice
    from .storage.state_store import StateStore, StateUnavailable, shown_url

    try:
        StateStore.from_url(s.state_db_url)
    except StateUnavailable:
        raise InputError(f"The state store {shown_url(s.state_db_url)} (ASAP_STATE_URL) cannot be opened; the "
                         "reason is in the log line above.",
                         "fix ASAP_STATE_URL, start the database, or unset it to keep budgets in an SQLite file "
                         "under ASAP_CACHE_DIR.") from None
    return [f"budgets are kept in {shown_url(s.state_db_url)} (shared by every server on this ASAP_STATE_URL).",
            loopback_notice(s.trusted_proxies)]


def _flag_value(value: bool | int | str) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def streamlit_command(s: Settings, port: int = DEFAULT_PORT, address: str | None = None) -> list[str]:
    """The argv that serves the app: ``python -m streamlit run streamlit_app.py --server.port=P ...``.

    ``address``: the interface to listen on (None: Streamlit's default, all of them). The interpreter is
    this one, so the server sees the same packages."""
    options = {**server_options(s), "server.port": int(port)}
    if address:
        options["server.address"] = address
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE),
            *(f"--{name}={_flag_value(value)}" for name, value in options.items())]


def config_toml(options: dict[str, bool | int | str]) -> str:
    """``options`` (``section.name``: value) as the text of a ``config.toml``."""
    sections: dict[str, list[str]] = {}
    for name, value in options.items():
        section, key = name.split(".", 1)
        text = _flag_value(value) if isinstance(value, (bool, int)) else f'"{value}"'
        sections.setdefault(section, []).append(f"{key} = {text}")
    return "\n".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


__all__ = ["APP_FILE", "DEFAULT_PORT", "FOR_EVERYONE", "FOR_SERVING", "HEALTH_PATH", "config_toml",
           "hosted_options", "hosted_start_notes", "server_options", "streamlit_command", "upload_limit_mb"]
