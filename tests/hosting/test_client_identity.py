"""Who a visitor is (``hosting.client_address``, ``glue.budget.client_id``): forwarded headers are read from the
right, as many hops as ``ASAP_TRUSTED_PROXIES`` says; loopback visitors share one budget; no mix of new
sessions, spoofed header prefixes and a server restart gives one client more than its budget."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.runtime.context import StreamlitHeaders
from streamlit.testing.v1 import AppTest

from asap_core.hosting import LOOPBACK_CLIENT, client_address
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from asap_core.storage.state_store import StateStore
from tests.conftest_app import no_exception, tiny_bundle  # noqa: F401  (fixture)
from tests.storage.test_state_store import postgres_url

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "streamlit_app.py")


@pytest.mark.parametrize("forwarded", ["203.0.113.7", "6.6.6.6, 203.0.113.7", "1.1.1.1,2.2.2.2, 203.0.113.7",
                                       "not-an-ip, 203.0.113.7", "203.0.113.7:51234", "::ffff:203.0.113.7"])
def test_one_trusted_proxy_takes_the_entry_it_appended(forwarded):
    """Whatever a client writes in front of the header, the last entry (our proxy's) decides."""
    assert client_address(forwarded, "10.0.0.2", 1) == "ip:203.0.113.7"


def test_more_proxies_count_hops_from_the_right():
    assert client_address("6.6.6.6, 203.0.113.7, 10.0.0.5", "10.0.0.9", 2) == "ip:203.0.113.7"
    assert client_address("203.0.113.7, 10.0.0.5", "10.0.0.9", 2) == "ip:203.0.113.7"


def test_zero_proxies_ignore_the_header():
    assert client_address("203.0.113.7", "198.51.100.4", 0) == "ip:198.51.100.4"
    assert client_address("203.0.113.7", None, 0) == LOOPBACK_CLIENT


def test_a_header_that_did_not_pass_our_proxies_is_not_believed():
    """Fewer entries than proxies, or garbage where our proxy's entry should be: the peer, never the header."""
    assert client_address("", "198.51.100.4", 1) == "ip:198.51.100.4"
    assert client_address(None, "198.51.100.4", 1) == "ip:198.51.100.4"
    assert client_address("203.0.113.7", "198.51.100.4", 2) == "ip:198.51.100.4"
    assert client_address("203.0.113.7, evil", "198.51.100.4", 1) == "ip:198.51.100.4"
    assert client_address("203.0.113.7", None, 2) == LOOPBACK_CLIENT


def test_loopback_and_unknown_peers_share_one_identity():
    assert {client_address(None, p, 0) for p in (None, "", "127.0.0.1", "::1", "127.0.0.2", "0.0.0.0")} \
        == {LOOPBACK_CLIENT}
    assert client_address("127.0.0.1", "10.0.0.2", 1) == LOOPBACK_CLIENT   # a proxy forwarding this host


def test_an_ipv6_visitor_is_its_64_block():
    """A host picks any address inside its /64: rotating them gives no new budget."""
    a = client_address("2001:db8:1:2::1", None, 1)
    assert a == client_address("2001:db8:1:2:ffff:0:abcd:9", None, 1) == "ip:2001:db8:1:2::/64"
    assert a != client_address("[2001:db8:1:3::1]:443", None, 1)


class FakeContext:
    """``st.context`` as a served request has it: headers (always with Host) and the peer's address."""

    def __init__(self, forwarded: str | None = None, peer: str | None = None, served: bool = True) -> None:
        pairs = [("Host", "explorer.example")] if served else []
        pairs += [("X-Forwarded-For", forwarded)] if forwarded else []
        self.headers = StreamlitHeaders(pairs)
        self.ip_address = peer
        self.url = "http://explorer.example/"


@pytest.fixture
def hosted(tmp_path, set_env):
    root = tmp_path / "bundles"
    root.mkdir()
    return lambda **env: set_env(**{"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(root),
                                    "ASAP_CACHE_DIR": str(tmp_path / "cache"), "ASAP_STATE_URL": None, **env})


def test_client_id_reads_the_request(hosted, monkeypatch, caplog):
    from app_pages.glue import budget

    hosted(ASAP_TRUSTED_PROXIES="1")
    monkeypatch.setattr(st, "context", FakeContext("6.6.6.6, 203.0.113.7", "10.0.0.2"))
    assert budget.client_id() == "ip:203.0.113.7"
    hosted(ASAP_TRUSTED_PROXIES="0")
    assert budget.client_id() == "ip:10.0.0.2"
    monkeypatch.setattr(budget, "_LOOPBACK_NOTED", [])
    monkeypatch.setattr(st, "context", FakeContext("203.0.113.7", None))   # a same-host proxy, not trusted
    with caplog.at_level(logging.WARNING, logger="asap_explorer"):
        assert budget.client_id() == budget.client_id() == LOOPBACK_CLIENT
    notes = [r.getMessage() for r in caplog.records if "loopback" in r.getMessage()]
    assert len(notes) == 1 and "ASAP_TRUSTED_PROXIES=1" in notes[0]          # said once, with what to set
    monkeypatch.setattr(st, "context", FakeContext(served=False))          # no request at all (AppTest)
    assert budget.client_id().startswith("s:")


def test_serve_says_who_a_visitor_is_at_start(hosted):
    hosted(ASAP_TRUSTED_PROXIES="0")
    from asap_core.serving import hosted_start_notes

    notes = " ".join(hosted_start_notes(reload_settings()))
    assert "loopback" in notes and "share one budget" in notes and "ASAP_TRUSTED_PROXIES=1" in notes
    assert "state.sqlite3" in notes


def _copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    (dest / "cache").mkdir()
    return dest


@pytest.fixture
def served(tiny_bundle, tmp_path, monkeypatch, set_env) -> Iterator[Path]:  # noqa: F811
    """Hosted mode behind one trusted proxy, a budget of 1 image with new maps; yields the bundle."""
    root = tmp_path / "bundles"
    _copy_bundle(tiny_bundle, root / "tiny")
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(root), ASAP_CACHE_DIR=str(tmp_path / "cache"),
            ASAP_RELEVANCE_BUDGET="1", ASAP_TRUSTED_PROXIES="1", ASAP_STATE_URL=None, ASAP_MODEL_ALLOWLIST=None)
    yield root / "tiny"
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")   # hosted mode sets these process-wide
    config.set_option("client.toolbarMode", "auto")


def _maps_visit(monkeypatch, forwarded: str, image_id: str) -> AppTest:
    """A new browser session from ``forwarded`` asking for the maps of one image; returns the run app."""
    monkeypatch.setattr(st, "context", FakeContext(forwarded, "10.0.0.2"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"bundle": "tiny"})
    at.session_state["sel_images"] = [image_id]
    at.run()
    at.switch_page("app_pages/attention.py").run()
    no_exception(at)
    return at


def _refused(at: AppTest) -> bool:
    return any("used 1 of the 1" in e.value for e in at.error)


@pytest.mark.slow
def test_sessions_spoofed_prefixes_and_a_restart_give_no_second_budget(served, monkeypatch):
    from app_pages.glue import budget

    ids = Bundle.open(served).images["image_id"].tolist()
    assert not _maps_visit(monkeypatch, "203.0.113.7", ids[0]).error              # the budget: one image
    assert _refused(_maps_visit(monkeypatch, "203.0.113.7", ids[1]))              # a new session
    assert _refused(_maps_visit(monkeypatch, "1.1.1.1, 203.0.113.7", ids[2]))     # a made-up prefix
    budget._policy_for.clear()                                                    # a restarted server:
    StateStore.from_url().close()                                                 # new policy, store reopened
    assert _refused(_maps_visit(monkeypatch, "2.2.2.2,3.3.3.3, 203.0.113.7", ids[3]))
    assert not _maps_visit(monkeypatch, "1.1.1.1, 198.51.100.4", ids[4]).error    # another visitor: own budget


SECOND_SERVER = """
import sys
from asap_core.hosting import HostedPolicy
from asap_core.settings import settings
from asap_core.errors import InputError
try:
    HostedPolicy.from_settings(settings()).charge_relevance(sys.argv[1], 1)
    print("charged")
except InputError as exc:
    print("refused:", exc.message)
"""


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
@pytest.mark.slow
def test_a_second_server_process_shares_the_budget(hosted, tmp_path, db):
    """Two servers on one ``ASAP_STATE_URL``: what one charged, the other sees (and the other way round)."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}" if db == "sqlite" else postgres_url()
    s = hosted(ASAP_RELEVANCE_BUDGET="2", ASAP_STATE_URL=url)
    from asap_core.hosting import HostedPolicy

    client = f"ip:test-{uuid.uuid4().hex[:12]}"
    HostedPolicy.from_settings(s).charge_relevance(client, 1)
    env = {k: v for k, v in os.environ.items()}  # set_env set the ASAP_* of this server
    run = [sys.executable, "-c", SECOND_SERVER, client]
    outs = [subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [o.stdout.split(":")[0].strip() for o in outs] == ["charged", "refused"], [o.stderr for o in outs]
    assert "used 2 of the 2" in outs[1].stdout
    assert HostedPolicy.from_settings(s).used(client) == 2
