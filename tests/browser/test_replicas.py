"""Two replicas behind nginx, in a browser: two ``asap serve`` processes (hosted mode) on one state store, Debian's
nginx in front of them with the shipped ``deploy/nginx.conf`` (only its ports and cache folder changed,
``render_nginx``), and Chromium through nginx. The page works, a browser session stays on the replica its
``asap_replica`` cookie hashes to, the budget spent through one replica is refused through the other, a
replica that stops leaves the other serving new sessions, those whose cookie names the stopped one included,
and nginx answers Streamlit's front-end files from its cache after their first request.

The state store is PostgreSQL when ``ASAP_TEST_STATE_URL`` is set (``.ci/run``; in a schema of its own, dropped
at the end), else an SQLite file both processes share. Every browser reaches nginx from loopback, so all the
sessions here are one visitor (``LOOPBACK_CLIENT``) with a budget of one image. nginx runs in the foreground
with its pid and logs in the test's folder, and stops with the test. Skips without nginx (``.ci/nginx-setup``)
or without /usr/bin/chromium and playwright (``.ci/browser-setup``).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from asap_core.hosting import KIND_WORK, LOOPBACK_CLIENT
from asap_core.serving import HEALTH_PATH
from asap_core.storage.bundle import Bundle
from asap_core.storage.state_store import StateStore, normalise_url
from tests.browser_helpers import (
    CHROMIUM,
    ERROR_BLOCKS,
    MAIN_IMAGES,
    SLICES_JS,
    chromium,
    command_server,
    dismiss_guide,
    free_port,
    slice_click_point,
    stop_process,
)
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)
from tests.hosting.test_compose import NGINX_CONF, render_nginx, upstream_servers
from tests.hosting.test_serving import ANY_SLICE

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
COOKIE = "asap_replica"  # nginx.conf hashes each request on it
BUNDLE = "good"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    # CI installs nginx (.ci/nginx-setup): there a missing nginx fails the test instead of skipping it
    pytest.mark.skipif(NGINX is None and not os.environ.get("CI"), reason="needs Debian's nginx (run .ci/nginx-setup)"),
    pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                       reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)"),
]


@dataclass
class Cluster:
    """nginx at ``url`` in front of ``replicas`` (``"127.0.0.1:port"`` -> its server process); ``access_log``:
    nginx's, which names the replica of each request; ``keys``: a cookie value that nginx sends to each replica."""

    url: str
    replicas: dict[str, subprocess.Popen]
    access_log: Path
    state_url: str
    root: Path
    keys: dict[str, str] = field(default_factory=dict)


# ---- nginx and its access log

@contextmanager
def nginx_in_front(replicas: list[str], work: Path) -> Iterator[tuple[str, Path]]:
    """Debian's nginx on the shipped configuration, listening on 127.0.0.1 and a free port, with ``replicas``
    (``host:port``, in order) in place of the compose services; yields its URL and its access log."""
    assert NGINX is not None, "nginx is missing: run .ci/nginx-setup"
    prefix = work / "nginx"
    prefix.mkdir()
    port = free_port()
    names = upstream_servers(NGINX_CONF.read_text())
    conf = prefix / "nginx.conf"
    # nginx's workers (nobody, when started as root) write the cache: a folder they can reach, not under the
    # test's own folders (0700)
    cache = Path(tempfile.mkdtemp(prefix="asap-nginx-cache-"))
    cache.chmod(0o777)
    conf.write_text(render_nginx(NGINX_CONF.read_text(), f"127.0.0.1:{port}", dict(zip(names, replicas)),
                                 cache_dir=cache))
    access, errors = prefix / "access.log", prefix / "error.log"
    argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", f"daemon off; pid {prefix / 'nginx.pid'};"]
    with open(access, "wb") as out, open(errors, "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)   # access_log /dev/stdout, error_log stderr
        try:
            deadline = time.monotonic() + 20
            while not _listening(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {errors.read_text()[-2000:]}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", access
        finally:
            stop_process(proc)
            shutil.rmtree(cache, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def logged(cluster: Cluster, since: int = 0) -> list[tuple[str, str]]:
    """``(request line, replica that answered)`` of each access-log line after byte ``since``; after a retry
    ``$upstream_addr`` names every replica tried, the last one answered."""
    lines = cluster.access_log.read_bytes()[since:].decode(errors="replace").splitlines()
    found = (re.search(r'"([^"]*)" \d+ \d+ upstream=(.*) rt=', line) for line in lines)
    return [(m.group(1), m.group(2).split(", ")[-1]) for m in found if m]


def log_size(cluster: Cluster) -> int:
    return cluster.access_log.stat().st_size


def sessions_served(cluster: Cluster, since: int, n: int) -> set[str]:
    """The replicas that held the Streamlit sessions (``/_stcore/stream`` websockets) logged after byte
    ``since``; waits until ``n`` are logged (nginx logs a websocket once it closes)."""
    deadline = time.monotonic() + 20
    while True:
        streams = [replica for request, replica in logged(cluster, since) if " /_stcore/stream " in request]
        if len(streams) >= n or time.monotonic() > deadline:
            assert len(streams) >= n, f"{len(streams)} of {n} sessions logged: {logged(cluster, since)}"
            return set(streams)
        time.sleep(0.2)


def replica_for(cluster: Cluster, key: str) -> str:
    """The replica nginx sends a browser whose cookie is ``key`` to (a health request, found in the log)."""
    probe = uuid.uuid4().hex
    request = urllib.request.Request(f"{cluster.url}{HEALTH_PATH}?probe={probe}", headers={"Cookie": f"{COOKIE}={key}"})
    assert urllib.request.urlopen(request, timeout=10).read() == b"ok"
    deadline = time.monotonic() + 10
    while not (hits := [replica for request, replica in logged(cluster) if probe in request]):
        assert time.monotonic() < deadline, "nginx did not log the probe"
        time.sleep(0.05)
    return hits[0]


def cookie_keys(cluster: Cluster) -> dict[str, str]:
    """For each replica, a cookie value that nginx's hash sends to it (the first of k0, k1, ...)."""
    keys: dict[str, str] = {}
    for i in range(64):
        keys.setdefault(replica_for(cluster, f"k{i}"), f"k{i}")
        if len(keys) == len(cluster.replicas):
            return keys
    pytest.fail(f"64 cookie values all went to {set(keys)}: nginx does not spread sessions")


# ---- the cluster

@pytest.fixture(scope="module")
def state_url(tmp_path_factory) -> Iterator[str]:
    """PostgreSQL (``ASAP_TEST_STATE_URL``) in a fresh schema, dropped afterwards (the test database's tables
    outlive tests, and every session here is the loopback visitor); else a new SQLite file."""
    url = os.environ.get("ASAP_TEST_STATE_URL", "").strip()
    if not url:
        yield f"sqlite:///{tmp_path_factory.mktemp('replicas_state') / 'state.sqlite3'}"
        return
    schema = f"replicas_{uuid.uuid4().hex[:12]}"
    engine = create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield make_url(normalise_url(url)).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(scope="module")
def cluster(tiny_bundle, tmp_path_factory, state_url) -> Iterator[Cluster]:  # noqa: F811
    """Two hosted ``asap serve`` processes (the Docker recipe's command) on ``state_url``, each with its own
    cache, behind nginx; a budget of one image per visitor."""
    work = tmp_path_factory.mktemp("replicas")
    root = work / "bundles"
    shutil.copytree(tiny_bundle, root / BUNDLE, ignore=shutil.ignore_patterns("cache"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASAP_", "STREAMLIT_"))}
    env.update(HF_HUB_OFFLINE="1", ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(root), ASAP_STATE_URL=state_url,
               ASAP_TRUSTED_PROXIES="1", ASAP_RELEVANCE_BUDGET="1")
    with ExitStack() as stack:
        replicas: dict[str, subprocess.Popen] = {}
        for name in ("a", "b"):
            port, procs = free_port(), []
            argv = [sys.executable, "-m", "asap_core", "serve", "--address", "127.0.0.1", "--port", str(port)]
            stack.enter_context(command_server(argv, port, {**env, "ASAP_CACHE_DIR": str(work / f"cache-{name}")},
                                               work / f"serve-{name}.log", procs=procs))
            replicas[f"127.0.0.1:{port}"] = procs[0]
        url, access_log = stack.enter_context(nginx_in_front(list(replicas), work))
        cluster = Cluster(url, replicas, access_log, state_url, root)
        cluster.keys = cookie_keys(cluster)
        yield cluster


@pytest.fixture(scope="module")
def browser(cluster):
    with chromium() as b:
        yield b


@contextmanager
def session(browser, cluster: Cluster, replica: str):
    """A fresh browser session (context) whose ``asap_replica`` cookie nginx sends to ``replica``."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_cookies([{"name": COOKIE, "value": cluster.keys[replica], "url": cluster.url}])
    page = ctx.new_page()
    page.set_default_timeout(60000)
    try:
        yield page
    finally:
        ctx.close()


def used_budget(cluster: Cluster) -> int:
    """Images with new maps charged to the (loopback) visitor in the shared state store."""
    store = StateStore.from_url(cluster.state_url)
    try:
        return store.used(LOOPBACK_CLIENT, KIND_WORK)
    finally:
        store.close()


# ---- the tests

def test_sessions_stay_on_their_replica_and_share_the_budget(cluster, browser):
    a, b = cluster.replicas
    ids = Bundle.open(cluster.root / BUNDLE).images["image_id"].tolist()
    mark = log_size(cluster)
    with session(browser, cluster, a) as page:
        page.goto(f"{cluster.url}/?bundle={BUNDLE}")
        page.wait_for_selector(ANY_SLICE)                                  # the overview, through nginx
        assert page.locator(ERROR_BLOCKS).count() == 0
        page.goto(f"{cluster.url}/attention?bundle={BUNDLE}&images={ids[0][:12]}")
        page.locator(MAIN_IMAGES).nth(17).wait_for()                       # 18 maps: the budget's one image
        assert page.locator(ERROR_BLOCKS).count() == 0
    assert sessions_served(cluster, mark, 2) == {a}                        # both sessions stayed on a
    assert used_budget(cluster) == 1

    mark = log_size(cluster)
    with session(browser, cluster, b) as page:
        page.goto(f"{cluster.url}/attention?bundle={BUNDLE}&images={ids[1][:12]}")
        page.get_by_text("used 1 of the 1").first.wait_for()               # spent through the other replica
        assert page.locator(MAIN_IMAGES).count() == 0
    assert sessions_served(cluster, mark, 1) == {b}
    assert used_budget(cluster) == 1


def click_cell(page) -> int:
    """Click a pie on the overview until the app says it is selected (a click made while the page reconnects
    is lost); the cell's id."""
    label = page.locator(ANY_SLICE).first.get_attribute("aria-label")
    cell = int(re.search(r"; cell: (\d+);", label).group(1))
    for _ in range(3):
        page.mouse.click(*slice_click_point(page.evaluate(SLICES_JS, cell)))
        try:
            page.get_by_text(f"Selected cell: {cell}").wait_for(timeout=20000)
            return cell
        except PlaywrightTimeout:
            pass
    pytest.fail(f"clicking cell {cell} selected nothing")


def test_a_stopped_replica_leaves_the_other_serving(cluster, browser):
    a, b = cluster.replicas
    with session(browser, cluster, a) as page:
        page.goto(f"{cluster.url}/?bundle={BUNDLE}")
        dismiss_guide(page)
        page.wait_for_selector(ANY_SLICE)
        stopped = cluster.replicas[a]
        stopped.terminate()
        stopped.wait(timeout=20)
        mark = log_size(cluster)
        # the open page reconnects through nginx to b and asks for a full rerun (its last run held fragments);
        # b's new session opens the guide once, as any new session does
        dismiss_guide(page, timeout_ms=60000)
        cell = click_cell(page)
        # the text shows mid-run; the browser's address takes the selection when the run's query string lands
        page.wait_for_url(re.compile(rf"[?&]cell={cell}(&|$)"), timeout=20000)
        assert page.locator(ERROR_BLOCKS).count() == 0
    for _ in range(2):                     # new sessions whose cookie names the stopped replica
        with session(browser, cluster, a) as page:
            page.goto(f"{cluster.url}/?bundle={BUNDLE}")
            page.wait_for_selector(ANY_SLICE)
            assert page.locator(ERROR_BLOCKS).count() == 0
    assert sessions_served(cluster, mark, 3) == {b}
    assert replica_for(cluster, cluster.keys[b]) == b                      # b's own visitors: still on b


def test_front_end_files_are_served_by_nginx_after_their_first_request(cluster):
    """Streamlit's scripts (4 MB for a new visitor) reach a replica once: later requests for the same file,
    from any browser, are answered from nginx's cache, gzipped for browsers that accept it."""
    page = urllib.request.urlopen(f"{cluster.url}/", timeout=10).read().decode()
    script = re.search(r'src="\.?/?(static/js/[^"]+\.js)"', page).group(1)
    statuses = []
    for _ in range(2):
        request = urllib.request.Request(f"{cluster.url}/{script}", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            statuses.append((response.headers["X-Cache-Status"], response.headers.get("Content-Encoding")))
    assert statuses[0][0] in ("MISS", "HIT") and statuses[1] == ("HIT", "gzip")

