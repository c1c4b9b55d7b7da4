"""Hosted mode (``ASAP_HOSTED=1``, ``asap_core.hosting``): the server's policy, the one place where on-demand
work is charged to a visitor's budget (``charge``) and the one gate that lets at most ``ASAP_HEAVY_SLOTS``
computations run at once (``heavy_work``); ``data`` calls both around heavy work."""
from __future__ import annotations

import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import streamlit as st

from asap_core.errors import AsapError
from asap_core.hosting import HostedPolicy, WorkSlots
from asap_core.settings import Settings, settings

from .errors import show_error

K_SESSION_ID = "_session_id"
SLOT_TIMEOUT_S = 300.0  # a visitor waits at most this long for a free slot, then is told the explorer is busy


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


def client_id() -> str:
    """Who the visitor is for the budget: the proxy's header named by ``ASAP_CLIENT_HEADER`` (its first
    address), else the client's address, else (no address known, e.g. in tests) the browser session."""
    header = settings().client_header
    try:
        if header:
            value = st.context.headers.get(header)
            value = value.split(",")[0].strip() if isinstance(value, str) else ""
            if value:
                return f"h:{value}"
        ip = st.context.ip_address
    except Exception:  # noqa: BLE001 - no request context (AppTest, a thread): fall back to the session
        ip = None
    return f"ip:{ip}" if isinstance(ip, str) and ip else f"s:{session_id()}"  # AppTest hands out mocks


def charge(n_images: int) -> bool:
    """Charge ``n_images`` of on-demand relevance to this visitor (hosted mode only; per client, so fresh
    sessions do not renew it); False, with the message shown, when that would pass the budget. The only
    caller of ``HostedPolicy.charge_relevance``."""
    policy = hosted_policy()
    if policy is None or n_images <= 0:
        return True
    try:
        policy.charge_relevance(client_id(), int(n_images))
    except AsapError as exc:
        show_error(exc)
        return False
    return True


@st.cache_resource(show_spinner=False)
def _slots_for(n: int) -> WorkSlots:
    """The server's slots for heavy work (shared by every session)."""
    return WorkSlots(n)


@contextmanager
def heavy_work() -> Iterator[None]:
    """Hold one of the server's ``ASAP_HEAVY_SLOTS`` while the block runs (hosted mode; locally no gate). A
    visitor who has to wait sees "Waiting for a free slot" until the block starts; ``InputError`` (shown by
    the caller) after ``SLOT_TIMEOUT_S`` seconds."""
    s = settings()
    if not s.hosted:
        with nullcontext():
            yield
        return
    note = st.empty()

    def waiting(ahead: int) -> None:
        note.info(f"Waiting for a free slot: {ahead} computation{'s' if ahead != 1 else ''} of other visitors "
                  f"ahead of yours (this explorer runs {s.heavy_slots} at a time) ...", icon=":material/hourglass_top:")

    try:
        with _slots_for(s.heavy_slots).hold(SLOT_TIMEOUT_S, waiting):
            note.empty()
            yield
    finally:
        note.empty()


def hosted_name(path: str | Path | None, policy: HostedPolicy) -> str | None:
    """The name (relative to the policy's root) of an open bundle path; None when outside the root."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(policy.bundle_root).as_posix()
    except ValueError:
        return None
