"""Hosted mode (``ASAP_HOSTED=1``, ``asap_core.hosting``): the server's policy, and the one place where
on-demand work is charged to a visitor's budget (``charge``; ``data`` calls it before heavy work)."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path

import streamlit as st

from asap_core.errors import AsapError
from asap_core.hosting import HostedPolicy
from asap_core.settings import Settings, settings

from .errors import show_error

K_SESSION_ID = "_session_id"
_CHARGE_LOCK = threading.Lock()  # HostedPolicy.charge_relevance is a read-modify-write of a shared dict


@st.cache_resource(show_spinner=False)
def _policy_for(s: Settings) -> HostedPolicy:
    """One policy (and its per-session relevance counts) per server and configuration."""
    return HostedPolicy.from_settings(s)


def hosted_policy() -> HostedPolicy | None:
    """The server's ``HostedPolicy`` in hosted mode, None otherwise; ``InputError`` when misconfigured."""
    s = settings()
    return _policy_for(s) if s.hosted else None


def session_id() -> str:
    """This browser session's id (Streamlit's own, else a uuid kept in session state)."""
    ss = st.session_state
    if K_SESSION_ID not in ss:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        ss[K_SESSION_ID] = str(getattr(ctx, "session_id", "") or uuid.uuid4().hex)
    return ss[K_SESSION_ID]


def charge(n_images: int) -> bool:
    """Charge ``n_images`` of on-demand relevance to this visitor (hosted mode only); False, with the message
    shown, when that would pass the budget. The only caller of ``HostedPolicy.charge_relevance``."""
    policy = hosted_policy()
    if policy is None or n_images <= 0:
        return True
    try:
        with _CHARGE_LOCK:
            policy.charge_relevance(session_id(), int(n_images))
    except AsapError as exc:
        show_error(exc)
        return False
    return True


def hosted_name(path: str | Path | None, policy: HostedPolicy) -> str | None:
    """The name (relative to the policy's root) of an open bundle path; None when outside the root."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(policy.bundle_root).as_posix()
    except ValueError:
        return None
