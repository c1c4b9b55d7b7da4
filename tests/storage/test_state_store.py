"""The durable state store (``asap_core.storage.state_store``): budgets charged atomically, on SQLite and on
PostgreSQL (``ASAP_TEST_STATE_URL``, set by ``.ci/run``; with ``CI`` set its absence is a failure)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from asap_core.errors import InputError
from asap_core.hosting import BUDGET_WINDOW_S, KIND_UPLOAD_BYTES, KIND_WORK, UPLOAD_IMAGE_UNITS, HostedPolicy
from asap_core.storage.state_store import StateStore, StateUnavailable, normalise_url, shown_url

REPO = Path(__file__).resolve().parents[2]


def postgres_url() -> str:
    """The PostgreSQL test database's URL; skips without one, fails without one in CI."""
    url = os.environ.get("ASAP_TEST_STATE_URL", "").strip()
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must test the state store on PostgreSQL: .ci/run sets ASAP_TEST_STATE_URL")
        pytest.skip("no PostgreSQL to test on (set ASAP_TEST_STATE_URL, as .ci/run does)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """One store URL per database kind; PostgreSQL's tables outlive the test, so clients are unique ids."""
    return f"sqlite:///{tmp_path / 'state.sqlite3'}" if request.param == "sqlite" else postgres_url()


@pytest.fixture
def client() -> str:
    return f"ip:test-{uuid.uuid4().hex[:12]}"


def test_charges_up_to_the_limit_then_refuses(url, client):
    store = StateStore.from_url(url)
    assert store.dialect == url.split(":")[0].split("+")[0]
    first = store.charge(client, KIND_WORK, 6, 10, 100, now=1000.0)
    assert first.allowed and (first.used_before, first.window_start, first.left) == (0, 1000.0, 4)
    refused = store.charge(client, KIND_WORK, 5, 10, 100, now=1010.0)
    assert not refused.allowed and refused.used_before == 6 and refused.left == 4
    assert store.used(client, KIND_WORK, now=1010.0) == 6               # a refused charge costs nothing
    assert store.charge(client, KIND_WORK, 4, 10, 100, now=1020.0).allowed  # what is left still fits
    assert not store.charge(client, KIND_WORK, 1, 10, 100, now=1030.0).allowed
    assert store.used(f"{client}-other", KIND_WORK, now=1030.0) == 0    # other clients, other kinds: untouched
    assert store.used(client, KIND_UPLOAD_BYTES, now=1030.0) == 0


def test_the_window_renews(url, client):
    store = StateStore.from_url(url)
    assert store.charge(client, KIND_WORK, 10, 10, 100, now=1000.0).allowed
    assert not store.charge(client, KIND_WORK, 1, 10, 100, now=1099.0).allowed   # still the same window
    assert store.used(client, KIND_WORK, now=1100.0) == 0                        # over at its end
    renewed = store.charge(client, KIND_WORK, 7, 10, 100, now=1100.0)
    assert renewed.allowed and renewed.used_before == 0 and renewed.window_start == 1100.0
    assert store.used(client, KIND_WORK, now=1150.0) == 7


def test_charge_all_is_all_or_nothing(url, client):
    store = StateStore.from_url(url)
    items = [(KIND_WORK, 3, 10), (KIND_UPLOAD_BYTES, 600, 1000)]
    assert [c.allowed for c in store.charge_all(client, items, 100, now=0.0)] == [True, True]
    work, nbytes = store.charge_all(client, items, 100, now=1.0)   # bytes would pass 1000: neither is charged
    assert (work.allowed, nbytes.allowed, work.kind, nbytes.kind) == (True, False, KIND_WORK, KIND_UPLOAD_BYTES)
    assert (store.used(client, KIND_WORK, now=2.0), store.used(client, KIND_UPLOAD_BYTES, now=2.0)) == (3, 600)


def test_budgets_survive_a_restart(url, client):
    store = StateStore.from_url(url)
    assert store.charge(client, KIND_WORK, 8, 10, 100, now=0.0).allowed
    store.close()                                  # the process's store is gone, as in a restarted server
    reopened = StateStore.from_url(url)
    assert reopened is not store
    assert reopened.used(client, KIND_WORK, now=1.0) == 8
    assert not reopened.charge(client, KIND_WORK, 3, 10, 100, now=1.0).allowed


WORKER = textwrap.dedent("""
    import sys, time
    from asap_core.storage.state_store import StateStore
    url, client, tries, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    store = StateStore.from_url(url)
    time.sleep(max(0.0, start - time.time()))  # every process begins at the same moment
    print(sum(store.charge(client, "work", 1, 50, 3600).allowed for _ in range(tries)))
""")


@pytest.mark.slow
def test_processes_charging_one_client_never_pass_the_limit(url, client):
    import time

    StateStore.from_url(url)  # tables made before the race
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, client, "30", str(start)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    granted = [int(out.strip()) for out, _ in outs]
    assert sum(granted) == 50 and max(granted) <= 30, granted   # 90 tries, 50 granted: no process alone
    assert StateStore.from_url(url).used(client, KIND_WORK) == 50


def test_threads_charging_one_client_never_pass_the_limit(url, client):
    store = StateStore.from_url(url)
    granted: list[bool] = []

    def work() -> None:
        granted.extend(store.charge(client, KIND_WORK, 1, 25, 3600).allowed for _ in range(10))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 25 and store.used(client, KIND_WORK) == 25


def test_default_store_is_sqlite_in_wal_mode_under_the_cache_dir(set_env, tmp_path):
    s = set_env(ASAP_CACHE_DIR=str(tmp_path / "cache"), ASAP_STATE_URL=None)
    store = StateStore.from_url()
    assert (tmp_path / "cache" / "state.sqlite3").is_file() and s.state_db_url.startswith("sqlite:///")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_urls_and_an_unreachable_database():
    assert normalise_url("postgresql://u:pw@db/asap") == "postgresql+psycopg://u:pw@db/asap"
    assert normalise_url("postgres://db/asap") == "postgresql+psycopg://db/asap"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    assert "pw" not in shown_url("postgresql://u:pw@db/asap")
    with pytest.raises(StateUnavailable) as err:  # nothing listens on port 1
        StateStore.from_url("postgresql://u:topsecret@127.0.0.1:1/asap")
    said = f"{err.value.message} {err.value.hint}"
    assert "topsecret" not in said and "127.0.0.1" not in said and "ASAP_" not in said and "psycopg" not in said
    with pytest.raises(StateUnavailable):
        StateStore.from_url("not a url at all")


def test_policy_charges_uploads_and_maps_to_one_work_budget(url, client, tmp_path):
    mb = 1024 * 1024
    policy = HostedPolicy(tmp_path, relevance_budget=10, upload_bytes_per_day=3 * mb, state_url=url)
    policy.charge_upload(client, 4, 2 * mb, now=0.0)
    assert policy.used(client, KIND_WORK, now=1.0) == 4 * UPLOAD_IMAGE_UNITS
    with pytest.raises(InputError, match="2.0 MB of the 3 MB") as err:   # bytes over: nothing charged
        policy.charge_upload(client, 1, 2 * mb, now=1.0)
    assert "ASAP_" not in err.value.message + err.value.hint
    assert (policy.used(client, KIND_WORK, now=1.0), policy.used(client, KIND_UPLOAD_BYTES, now=1.0)) == (4, 2 * mb)
    policy.charge_relevance(client, 10 - 4 * UPLOAD_IMAGE_UNITS - 1, now=2.0)   # maps share the budget
    with pytest.raises(InputError, match="9 of the 10"):
        policy.charge_upload(client, 2, 10, now=3.0)
    assert policy.used(client, KIND_UPLOAD_BYTES, now=3.0) == 2 * mb
    with pytest.raises(InputError, match="9 of the 10"):
        policy.charge_relevance(client, 2, now=3.0)
    policy.charge_upload(client, 1, 10, now=3.0)
    policy.charge_upload(client, 10, 3 * mb, now=BUDGET_WINDOW_S + 1.0)     # a day later: both renewed
