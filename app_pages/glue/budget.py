"""Hosted mode (``ASAP_HOSTED=1``, ``asap_core.hosting``): the server's policy, the one place where on-demand
work (``charge``) and uploads (``charge_upload``) are charged to a visitor's budgets (kept in the durable
state store, per ``client_id``, not per session) and the one gate that lets at most ``ASAP_HEAVY_SLOTS``
computations run at once (``heavy_work``). ``charge`` has one caller, ``work.charged_work`` (priced by
``views.cost``); ``charge_upload`` one, ``byo.prepare_job`` (an upload is charged in images and bytes)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from asap_core.errors import AsapError
from asap_core.hosting import LOOPBACK_CLIENT, HostedPolicy, WorkSlots, client_address, loopback_notice
from asap_core.serving import upload_limit_mb
from asap_core.settings import Settings, settings

from .errors import LOG, show_error
from .keys import K_SESSION_ID

SLOT_TIMEOUT_S = 300.0  # a visitor waits at most this long for a free slot, then is told the explorer is busy


@st.cache_resource(show_spinner=False)
def _policy_for(s: Settings) -> HostedPolicy:
    """One policy per server and configuration (its budgets live in the durable state store)."""
    return HostedPolicy.from_settings(s)


def hosted_policy() -> HostedPolicy | None:
    """The server's ``HostedPolicy`` in hosted mode, None otherwise; ``InputError`` when misconfigured."""
    s = settings()
    return _policy_for(s) if s.hosted else None


def hosted() -> bool:
    """Whether this server is a public explorer (``ASAP_HOSTED=1``): visitors read, the operator writes."""
    return settings().hosted


def upload_limit() -> int | None:
    """A file uploader's ``max_upload_size`` (MB): hosted mode's ``ASAP_MAX_UPLOAD_MB`` (the browser then says
    the limit before sending), None locally (Streamlit's own)."""
    s = settings()
    return upload_limit_mb(s) if s.hosted else None


def session_id() -> str:
    """This browser session's id (Streamlit's own, else a uuid kept in session state)."""
    ss = st.session_state
    if K_SESSION_ID not in ss:
        ctx = get_script_run_ctx()
        ss[K_SESSION_ID] = str(getattr(ctx, "session_id", "") or uuid.uuid4().hex)
    return str(ss[K_SESSION_ID])


def client_id() -> str:
    """Who the visitor is for the budgets (``hosting.client_address``): the address ``ASAP_TRUSTED_PROXIES``
    hops from the right of the ``ASAP_CLIENT_HEADER`` header, else the peer; everyone from loopback shares
    one id. Only without a request (AppTest, no headers at all) is it the browser session."""
    s = settings()
    try:
        headers = st.context.headers
        if not len(headers):  # a served request always carries Host: this is no request (AppTest)
            return f"s:{session_id()}"
        forwarded = ",".join(headers.get_all(s.client_header)) if s.trusted_proxies else None
        peer = st.context.ip_address  # None for 127.0.0.1 and ::1
    except Exception:
        return f"s:{session_id()}"
    client = client_address(forwarded, peer if isinstance(peer, str) else None, s.trusted_proxies)
    if client == LOOPBACK_CLIENT:
        _note_loopback(s.trusted_proxies)
    return client


_LOOPBACK_NOTED: list[bool] = []


def _note_loopback(trusted_proxies: int) -> None:
    """Say once in the server log that visitors arrive from loopback and so share one budget."""
    if _LOOPBACK_NOTED:
        return
    _LOOPBACK_NOTED.append(True)
    LOG.warning("%s", loopback_notice(trusted_proxies))


def _charged(charge_with) -> bool:
    """Run ``charge_with(client_id())`` in hosted mode; False, with the message shown, when it refuses."""
    policy = hosted_policy()
    if policy is None:
        return True
    try:
        charge_with(policy, client_id())
    except AsapError as exc:
        show_error(exc)
        return False
    return True


def charge(n_images: int) -> bool:
    """Charge ``n_images`` of on-demand relevance to this visitor (hosted mode only; per client, so fresh
    sessions do not renew it); False, with the message shown, when that would pass the budget. The only
    caller of ``HostedPolicy.charge_relevance``."""
    if n_images <= 0:
        return True
    return _charged(lambda policy, client: policy.charge_relevance(client, int(n_images)))


def charge_upload(n_images: int, n_bytes: int) -> bool:
    """Charge an upload of ``n_images`` images and ``n_bytes`` bytes to this visitor (hosted mode only):
    images to the work budget, bytes to the daily upload bytes, both checked before either is charged; False,
    with the message shown, when either would pass its limit. Call it before decoding the upload. The only
    caller of ``HostedPolicy.charge_upload``."""
    if n_images <= 0 and n_bytes <= 0:
        return True
    return _charged(lambda policy, client: policy.charge_upload(client, int(n_images), int(n_bytes)))


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
