"""Deployment: the options ``python -m asap_core serve`` passes to Streamlit (``asap_core.serving``), the
committed ``.streamlit/config.toml``, the Docker recipe read from ``deploy/Dockerfile`` (so that the recipe,
the CLI and these tests cannot drift apart), and a browser test of the server started the way the recipe
starts it, without Docker: hosted overview, upload limits of the server and of the app, health check.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from asap_core.cli import build_parser, main
from asap_core.serving import (
    APP_FILE,
    FOR_EVERYONE,
    HEALTH_PATH,
    config_toml,
    server_options,
    streamlit_command,
    upload_limit_mb,
)
from asap_core.settings import ENVIRONMENT, Settings
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, ERROR_BLOCKS, command_server, free_port
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ANY_SLICE = ".vega-embed path[aria-label*='; cell: ']"  # a pie slice of any cell

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


# ---- reading the recipe

def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of ``deploy/Dockerfile``, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def instruction(name: str) -> str:
    """The arguments of the last ``name`` instruction (the one that counts for CMD, HEALTHCHECK, USER)."""
    found = [args for ins, args in dockerfile() if ins == name]
    assert found, f"deploy/Dockerfile has no {name}"
    return found[-1]


def dockerfile_env() -> dict[str, str]:
    return dict(kv.split("=", 1) for ins, args in dockerfile() if ins == "ENV" for kv in shlex.split(args))


def recipe_cmd() -> list[str]:
    """The ``CMD`` of the recipe (exec form, a JSON array)."""
    return json.loads(instruction("CMD"))


def healthcheck_cmd() -> list[str]:
    return json.loads(re.search(r"\bCMD\s+(\[.*\])", instruction("HEALTHCHECK")).group(1))


def exposed_port() -> int:
    return int(instruction("EXPOSE").split("/")[0])


def flags(argv: list[str]) -> dict[str, str]:
    """``--section.name=value`` flags of a ``streamlit run`` argv."""
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))


# ---- the serve command

def test_hosted_command_has_the_strict_options(set_env, tmp_path):
    s = set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_MAX_UPLOAD_MB="7")
    argv = streamlit_command(s, port=8765, address="0.0.0.0")
    assert argv[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_FILE)] and APP_FILE.is_file()
    f = flags(argv)
    assert f["server.maxUploadSize"] == "7"                      # ASAP_MAX_UPLOAD_MB, refused by the server
    assert f["client.showErrorDetails"] == "none"                # generic message only (NOTES: 1.67 values)
    assert f["server.fileWatcherType"] == "none"
    assert f["server.enableXsrfProtection"] == "true"
    assert f["client.toolbarMode"] == "minimal"
    assert f["server.headless"] == "true" and f["browser.gatherUsageStats"] == "false"
    assert f["server.port"] == "8765" and f["server.address"] == "0.0.0.0"


def test_local_serve_leaves_error_details_and_upload_size_to_streamlit(set_env):
    s = set_env(ASAP_HOSTED="0", ASAP_MAX_UPLOAD_MB="7")
    f = flags(streamlit_command(s))
    assert f["server.fileWatcherType"] == "none" and f["server.headless"] == "true"
    assert not {"client.showErrorDetails", "server.maxUploadSize", "server.address"} & set(f)


def test_every_option_is_a_streamlit_option(set_env, tmp_path):
    from streamlit import config

    known = config.get_config_options()
    s = set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path))
    assert set(flags(streamlit_command(s, address="127.0.0.1"))) <= set(known)


@pytest.mark.parametrize("mb, server_mb", [("10", 10), ("2.5", 3), ("0.2", 1)])
def test_server_upload_limit_never_refuses_what_the_app_accepts(mb, server_mb):
    s = Settings.from_env({"ASAP_HOSTED": "1", "ASAP_MAX_UPLOAD_MB": mb})
    assert upload_limit_mb(s) == server_mb                       # whole MB, rounded up
    assert upload_limit_mb(s) * 1024 * 1024 >= s.max_upload_bytes  # same MB (1024 x 1024 bytes) as the app's check


def test_config_toml_holds_the_options_for_everyone():
    committed = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert {f"{sec}.{k}": v for sec, opts in committed.items() for k, v in opts.items()} == FOR_EVERYONE


def test_print_config_is_the_hosted_options_as_toml(set_env, tmp_path, capsys):
    s = set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_MAX_UPLOAD_MB="4")
    assert main(["serve", "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["server"]["maxUploadSize"] == 4 and printed["client"]["showErrorDetails"] == "none"
    assert tomllib.loads(config_toml(server_options(s))) == printed


def test_serve_execs_the_streamlit_command(set_env, tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(os, "execv", lambda path, argv: ran.append(argv))
    s = set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_CACHE_DIR=str(tmp_path / "cache"),
                ASAP_STATE_URL=None, ASAP_TRUSTED_PROXIES=None)
    main(["serve", "--port", "8600", "--address", "127.0.0.1"])
    assert ran == [streamlit_command(s, port=8600, address="127.0.0.1")]
    err = capsys.readouterr().err
    assert "no bundles" in err and "--server.maxUploadSize=10" in err   # warns, and says what it runs
    assert "loopback" in err and "share one budget" in err and "ASAP_TRUSTED_PROXIES=1" in err  # who a visitor is
    assert (tmp_path / "cache" / "state.sqlite3").is_file()             # the budgets' store, opened at start


def test_serve_stops_before_starting_when_the_state_store_cannot_be_opened(set_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "execv", lambda path, argv: pytest.fail("started without its state store"))
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_STATE_URL="postgresql://asap:hush@127.0.0.1:1/x")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "ASAP_STATE_URL" in err and "hush" not in err


def test_hosted_serve_without_a_bundle_root_stops_before_starting(set_env, monkeypatch, capsys):
    monkeypatch.setattr(os, "execv", lambda path, argv: pytest.fail("started without ASAP_BUNDLE_ROOT"))
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=None)
    assert main(["serve"]) == 2
    assert "ASAP_BUNDLE_ROOT" in capsys.readouterr().err


# ---- the Docker recipe

def test_recipe_runs_the_serve_command_on_the_exposed_port():
    cmd = recipe_cmd()
    assert cmd[:3] == ["python", "-m", "asap_core"]
    args = build_parser().parse_args(cmd[3:])
    assert args.command == "serve" and args.address == "0.0.0.0" and args.port == exposed_port()


def test_recipe_health_check_asks_streamlits_health_endpoint_on_that_port():
    cmd = healthcheck_cmd()
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "HEALTHCHECK", "exec")
    assert f"http://127.0.0.1:{exposed_port()}{HEALTH_PATH}" in cmd[2]


def test_recipe_environment_is_hosted_offline_and_known():
    env = dockerfile_env()
    assert {k: env.get(k) for k in ("ASAP_HOSTED", "ASAP_BUNDLE_ROOT", "HF_HUB_OFFLINE")} == \
        {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": "/bundles", "HF_HUB_OFFLINE": "1"}
    assert {k for k in env if k.startswith("ASAP_")} <= set(ENVIRONMENT)   # no misspelt setting
    s = Settings.from_env(env)
    assert s.hosted and s.hf_offline and s.bundle_root == Path("/bundles")
    assert "/bundles" in instruction("VOLUME")
    assert env.get("ASAP_CACHE_DIR") in json.loads(instruction("VOLUME"))   # caches and budgets outlive the container
    assert instruction("USER") not in ("root", "0")
    assert instruction("FROM") == "python:3.11-slim"


def test_recipe_installs_the_torch_ci_tests():
    pin = re.compile(r"torch==([\w.+]+)")
    installs = " ".join(args for ins, args in dockerfile() if ins == "RUN")
    assert pin.findall(installs) == pin.findall((REPO / ".ci" / "run").read_text())[:1]


def test_dockerignore_sends_what_the_app_needs():
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()]
    kept = {ln[1:] for ln in lines if ln.startswith("!")}
    assert {"streamlit_app.py", "requirements.txt", "asap_core", "app_pages", ".streamlit"} <= kept
    assert all((REPO / k).exists() for k in kept)


# ---- the recipe's server, without Docker, in a browser

def noise_png(side: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hosted_server(tiny_bundle, tmp_path_factory):  # noqa: F811
    """The recipe's CMD (this interpreter for ``python``, 127.0.0.1 and a free port) with the recipe's ENV,
    its paths moved to a temporary folder; ``ASAP_MAX_UPLOAD_MB=0.5``, so Streamlit's limit is 1 MB."""
    work = tmp_path_factory.mktemp("deploy")
    root = work / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    port = free_port()
    cmd = [sys.executable if a == "python" else a for a in recipe_cmd()]
    cmd[cmd.index("--address") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASAP_", "STREAMLIT_"))}
    env.update(dockerfile_env(), ASAP_BUNDLE_ROOT=str(root), HF_HOME=str(work / "hf"),
               ASAP_CACHE_DIR=str(work / "cache"), ASAP_MAX_UPLOAD_MB="0.5")
    with command_server(cmd, port, env, work / "server.log") as url:
        yield url, port, work


@pytest.mark.browser
@pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                    reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")
def test_recipe_server_serves_the_hosted_explorer_with_both_upload_limits(hosted_server, tmp_path):
    url, port, work = hosted_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30000)
            page.goto(url)
            page.wait_for_selector(ANY_SLICE)                         # the overview of the served bundle
            assert page.locator(ERROR_BLOCKS).count() == 0
            assert page.locator("[data-testid='stMainMenu']").count() == 0   # minimal toolbar: no menu

            page.goto(f"{url}/single")
            # Streamlit's limit, shown by the uploader
            page.locator("[data-testid='stMain']").get_by_text("1MB per file").wait_for()
            big = tmp_path / "noise.png"
            big.write_bytes(noise_png(500))                           # ~0.7 MB: under Streamlit's 1 MB, over 0.5
            assert 0.5 * 2**20 < big.stat().st_size < 2**20
            with page.expect_request(lambda r: "/_stcore/upload_file/" in r.url and r.method == "PUT") as sent:
                page.locator("[data-testid='stMain'] input[type='file']").set_input_files(str(big))
            page.locator(ERROR_BLOCKS).filter(has_text="limit").wait_for()   # the app's own, exact check
            upload_url, token = sent.value.url, sent.value.all_headers().get("x-xsrftoken")

            def put(name: str, size: int) -> int:                     # as the browser does, same session + token
                target = upload_url.rsplit("/", 1)[0] + f"/{name}"
                return page.request.put(target, headers={"X-Xsrftoken": token}, multipart={
                    "file": {"name": f"{name}.png", "mimeType": "image/png", "buffer": b"\0" * size}}).status
            assert put("small", 10_000) == 204
            assert put("large", 2 * 2**20) == 413                     # refused by the server: maxUploadSize
        finally:
            browser.close()

    health = [sys.executable if a == "python" else a for a in healthcheck_cmd()]
    health[2] = health[2].replace(f":{exposed_port()}/", f":{port}/")
    assert subprocess.run(health, timeout=30).returncode == 0       # the recipe's HEALTHCHECK, as written


def test_the_hosting_notes_explain_budgets_and_who_a_visitor_is():
    """README's "Host it" and deploy/README.md name the settings a public explorer's budgets depend on."""
    readme = (REPO / "README.md").read_text()
    host_it = readme[readme.index("## Host it"):readme.index("\n## ", readme.index("## Host it") + 5)]
    notes = (DEPLOY / "README.md").read_text()
    for setting in ("ASAP_TRUSTED_PROXIES", "ASAP_STATE_URL", "ASAP_UPLOAD_MB_PER_DAY", "ASAP_RELEVANCE_BUDGET"):
        assert setting in host_it and setting in notes, setting
    for place in ("Docker", "reverse proxy", "Community Cloud"):
        assert place in host_it and place in notes, place
