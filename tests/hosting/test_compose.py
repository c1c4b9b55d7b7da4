"""Two replicas behind nginx: the shape of ``deploy/compose.yaml`` and of ``deploy/nginx.conf``, read from the
files (services, what each waits for, health checks, the state store they share, the one nginx configuration),
checked against the Docker recipe and the app's settings; ``docker compose config`` where Docker exists.
``tests/browser/test_replicas.py`` runs the same nginx.conf in front of two ``serve`` processes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from asap_core.settings import ENVIRONMENT, Settings
from tests.hosting.test_serving import dockerfile_env, exposed_port, healthcheck_cmd

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
PASSWORD = "hush7"  # ASAP_DB_PASSWORD while reading the file
REPLICAS = ("app1", "app2")


# ---- reading the files (tests/browser/test_replicas.py renders nginx.conf with these too)

def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` with ``env``; a required name
    missing from ``env`` fails."""
    def value(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        assert op != ":?", f"compose.yaml needs {name}: {arg}"
        return arg if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", value, text)


def compose() -> dict:
    """``deploy/compose.yaml`` as Compose reads it, with ``ASAP_DB_PASSWORD=PASSWORD`` (anchors resolved)."""
    return yaml.safe_load(interpolate(COMPOSE.read_text(), {"ASAP_DB_PASSWORD": PASSWORD}))


def upstream_block(conf: str) -> str:
    """The inside of the (one) ``upstream`` block of an nginx configuration."""
    blocks = re.findall(r"(?s)(?m)^\s*upstream\s+\w+\s*\{(.*?)\}", conf)
    assert len(blocks) == 1, "nginx.conf has one upstream: the replicas"
    return blocks[0]


def upstream_servers(conf: str) -> list[str]:
    """The ``host:port`` of each ``server`` in the ``upstream`` block of an nginx configuration."""
    return re.findall(r"(?m)^\s*server\s+([^\s;]+)", upstream_block(conf))


def render_nginx(conf: str, listen: str, replicas: dict[str, str], cache_dir: Path | None = None) -> str:
    """The shipped configuration listening on ``listen`` instead of port 80, each replica ``host:port`` of
    ``replicas`` (keys as in ``upstream_servers``) replaced by its value, and with ``cache_dir`` the static
    files' cache there; nothing else changes."""
    conf, n = re.subn(r"(?m)^(\s*)listen 80;", rf"\g<1>listen {listen};", conf)
    assert n == 1, "nginx.conf listens on port 80 once"
    if cache_dir is not None:
        conf, n = re.subn(r"(?m)^(\s*proxy_cache_path\s+)\S+", rf"\g<1>{cache_dir}", conf)
        assert n == 1, "nginx.conf has one proxy_cache_path"
    for old, new in replicas.items():
        conf, n = re.subn(rf"(?m)^(\s*server\s+){re.escape(old)}(?=[\s;])", rf"\g<1>{new}", conf)
        assert n == 1, f"nginx.conf names the replica {old} once"
    return conf


def directive(conf: str, name: str) -> list[str]:
    """The arguments of every ``name`` directive in an nginx configuration (comments dropped)."""
    text = re.sub(r"#[^\n]*", "", conf)
    return [m.strip() for m in re.findall(rf"(?m)^\s*{re.escape(name)}\s+([^;]*);", text)]


# ---- compose.yaml

def test_two_replicas_of_the_recipe_a_database_and_nginx():
    services = compose()["services"]
    assert set(services) == {*REPLICAS, "db", "nginx"}
    for name in REPLICAS:
        app = services[name]
        assert (COMPOSE.parent / app["build"]["context"]).resolve() == REPO
        assert (REPO / app["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert "ports" not in app and [str(p) for p in app["expose"]] == [str(exposed_port())]  # nginx only
        assert app["depends_on"] == {"db": {"condition": "service_healthy"}}
        assert app["healthcheck"]["test"] == ["CMD", *healthcheck_cmd()]   # the recipe's own check, on 8501
    assert services["app1"] == services["app2"]
    assert services["nginx"]["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_replicas_share_the_postgresql_state_store_behind_one_proxy():
    services = compose()["services"]
    env = services["app1"]["environment"]
    assert {k for k in env if k.startswith("ASAP_")} <= set(ENVIRONMENT)     # no misspelt setting
    s = Settings.from_env({**dockerfile_env(), **env})
    assert s.hosted and s.trusted_proxies == 1                                 # nginx appends X-Forwarded-For
    url = make_url(s.state_db_url)
    db = services["db"]["environment"]
    assert url.drivername == "postgresql+psycopg" and url.host == "db"
    assert (url.username, url.password, url.database) == (db["POSTGRES_USER"], PASSWORD, db["POSTGRES_DB"])
    assert db["POSTGRES_PASSWORD"] == PASSWORD
    assert "ports" not in services["db"]                                       # reachable by the replicas only


def test_nginx_runs_the_shipped_configuration_in_front_of_the_replicas():
    nginx = compose()["services"]["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"] and NGINX_CONF.is_file()
    published = [str(p).rsplit(":", 1)[-1] for p in nginx["ports"]]
    conf = NGINX_CONF.read_text()
    assert published == directive(conf, "listen") == ["80"]
    assert upstream_servers(conf) == [f"{name}:{exposed_port()}" for name in REPLICAS]


def test_missing_database_password_is_refused():
    with pytest.raises(AssertionError, match="ASAP_DB_PASSWORD"):
        interpolate(COMPOSE.read_text(), {})


def docker_compose() -> bool:
    """True where ``docker compose`` (Docker with the Compose plugin) runs."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker compose -f deploy/compose.yaml config --format json`` with ``env`` added to the environment."""
    return subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not docker_compose(), reason="needs Docker with the Compose plugin (.ci/compose-setup)")
def test_docker_compose_config_reads_the_shape_these_tests_read():
    """Compose itself validates the file and resolves it to the services, health conditions and settings that
    the tests above read with their own interpolation; without the password it refuses."""
    done = compose_config({"ASAP_DB_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    resolved, ours = json.loads(done.stdout)["services"], compose()["services"]
    assert set(resolved) == set(ours)
    for name in REPLICAS:
        assert resolved[name]["environment"] == {k: str(v) for k, v in ours[name]["environment"].items()}
        assert resolved[name]["healthcheck"]["test"] == ours[name]["healthcheck"]["test"]
        assert {k: v["condition"] for k, v in resolved[name]["depends_on"].items()} == {"db": "service_healthy"}
        assert Path(resolved[name]["build"]["context"]).resolve() == REPO
    assert {k: v["condition"] for k, v in resolved["nginx"]["depends_on"].items()} == \
        {name: "service_healthy" for name in REPLICAS}
    assert [p["target"] for p in resolved["nginx"]["ports"]] == [80]
    assert resolved["db"]["environment"]["POSTGRES_PASSWORD"] == PASSWORD and "ports" not in resolved["db"]
    refused = compose_config({"ASAP_DB_PASSWORD": ""})
    assert refused.returncode != 0 and "ASAP_DB_PASSWORD" in refused.stderr


# ---- nginx.conf

def test_nginx_keeps_sessions_sticky_and_forwards_websockets():
    conf = NGINX_CONF.read_text()
    assert directive(conf, "hash") == ["$asap_sticky consistent"]            # one replica per browser
    assert "$cookie_asap_replica" in conf
    assert directive(conf, "add_header") == ["Set-Cookie $asap_sticky_cookie", "X-Cache-Status $upstream_cache_status"]
    assert "Upgrade $http_upgrade" in directive(conf, "proxy_set_header")
    assert "Connection $connection_upgrade" in directive(conf, "proxy_set_header")
    assert re.findall(r"(?m)^\s*location\s+(\S+)\s*\{", conf) == ["/", "/static/", "/_stcore/stream"]
    assert directive(conf, "proxy_cache") == ["asap_static"]                 # front-end files: kept by nginx
    assert "1h" in directive(conf, "proxy_read_timeout")                     # the stream's, not the default 60 s
    assert directive(conf, "proxy_http_version") == ["1.1"]


def test_nginx_passes_the_visitors_address_and_uploads_the_app_accepts():
    conf = NGINX_CONF.read_text()
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in directive(conf, "proxy_set_header")
    env = compose()["services"]["app1"]["environment"]
    limit = directive(conf, "client_max_body_size")
    assert limit == [f"{int(float(env['ASAP_MAX_UPLOAD_MB'])) + 1}m"]        # ASAP_MAX_UPLOAD_MB + 1 MB
    servers = re.findall(r"(?m)^\s*server\s+\S+\s+(.*);", upstream_block(conf))
    assert servers and all("max_fails=" in s and "fail_timeout=" in s for s in servers)  # passive health checks
    assert "error" in directive(conf, "proxy_next_upstream")[0]               # a refused connection: the other one


def test_render_nginx_changes_only_the_addresses():
    conf = NGINX_CONF.read_text()
    rendered = render_nginx(conf, "127.0.0.1:18080", {"app1:8501": "127.0.0.1:1", "app2:8501": "127.0.0.1:2"})
    assert upstream_servers(rendered) == ["127.0.0.1:1", "127.0.0.1:2"]
    assert directive(rendered, "listen") == ["127.0.0.1:18080"]
    assert len(rendered.splitlines()) == len(conf.splitlines())
    with pytest.raises(AssertionError, match="app3"):
        render_nginx(conf, "127.0.0.1:18080", {"app3:8501": "127.0.0.1:1"})
