"""Access control on the real servers: a redis-server with an ACL user, a password and TLS, reached through
``RedisSettings`` by a ``rediss://`` URL with the password from a file, and a local Dask cluster that
listens on loopback only. The TLS certificates are throwaway ones made here with the ``openssl`` CLI."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from reels.deploy.redis_server import RedisServer, free_port
from reels.feature_store.settings import (
    CA_FILE_ENV,
    CERT_FILE_ENV,
    KEY_FILE_ENV,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    URL_ENV,
    USERNAME_ENV,
    RedisSettings,
)

USER = "reels-app"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _signed(name: str, ca: Path, directory: Path, extensions: str) -> tuple[Path, Path]:
    """A P-256 key and a certificate for ``name`` signed by the CA ``ca`` (.crt/.key), valid one day."""
    key, csr, crt, ext = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
             "-out", csr, "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca.with_suffix(".crt"), "-CAkey", ca.with_suffix(".key"),
             "-CAcreateserial", "-out", crt, "-days", "1", "-extfile", ext, cwd=directory)  # fmt: skip
    return crt, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test certificates (apt-get install openssl)")
    directory = tmp_path_factory.mktemp("tls")
    ca = directory / "ca.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", ca, "-subj", "/CN=reels-test-ca", "-days", "1", cwd=directory)  # fmt: skip
    server_crt, server_key = _signed(
        "server", ca, directory, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    )
    client_crt, client_key = _signed("client", ca, directory, "extendedKeyUsage=clientAuth")
    return {"ca": ca, "server_crt": server_crt, "server_key": server_key, "client_crt": client_crt,
            "client_key": client_key}  # fmt: skip


@pytest.fixture
def redis_env(monkeypatch):
    """None of the REELS_REDIS_* variables of the machine running the tests."""
    for name in (
        PASSWORD_ENV,
        PASSWORD_FILE_ENV,
        URL_ENV,
        USERNAME_ENV,
        CA_FILE_ENV,
        CERT_FILE_ENV,
        KEY_FILE_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _reels_config(env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "reels.client.cli", "config"], env={**os.environ, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout + run.stderr


def test_rediss_with_an_acl_user_and_a_password_file(tmp_path, certificates, redis_env):
    password = secrets.token_urlsafe(24)
    password_file = tmp_path / "redis_password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    redis_env.setenv(PASSWORD_FILE_ENV, str(password_file))
    # The CA and the client certificate from the environment, as a deployment would hand them over.
    tls_env = {CA_FILE_ENV: str(certificates["ca"]), CERT_FILE_ENV: str(certificates["client_crt"]),
               KEY_FILE_ENV: str(certificates["client_key"])}  # fmt: skip
    for name, value in tls_env.items():
        redis_env.setenv(name, value)
    port = free_port()
    url = f"rediss://{USER}@127.0.0.1:{port}/0"
    server = RedisServer(
        tmp_path / "redis", port=port, password=password, username=USER, durable=False,
        cert_file=certificates["server_crt"], key_file=certificates["server_key"], ca_file=certificates["ca"],
        require_client_cert=True, client_cert_file=certificates["client_crt"],
        client_key_file=certificates["client_key"],
    )  # fmt: skip
    with server:
        settings = RedisSettings(url=url)
        client = settings.client(timeout_s=5.0)
        assert client.ping() and client.acl_whoami() == USER
        client.set("reels:auth-test", "ok")
        assert settings.store(timeout_s=5.0).client.get("reels:auth-test") == b"ok"

        with pytest.raises(redis.AuthenticationError):  # a wrong password
            RedisSettings(url=url, password="not-" + password).client(5.0, retries=False).ping()
        with pytest.raises(redis.AuthenticationError):  # the right password without the user: default is off
            RedisSettings(url=f"rediss://127.0.0.1:{port}/0").client(5.0, retries=False).ping()
        with pytest.raises(redis.ConnectionError):  # plain text to the TLS port
            RedisSettings(url=f"redis://{USER}@127.0.0.1:{port}/0").client(5.0, retries=False).ping()
        redis_env.delenv(CERT_FILE_ENV)
        redis_env.delenv(KEY_FILE_ENV)
        with pytest.raises(redis.ConnectionError):  # TLS without the client certificate the server requires
            RedisSettings(url=url).client(5.0, retries=False).ping()
        argv = " ".join(psutil.Process(server.process.pid).cmdline())

    conf = (tmp_path / "redis" / "redis.conf").read_text()
    with_password = f"rediss://{USER}:{password}@127.0.0.1:{port}/0"  # as $REELS_REDIS_URL may hold it
    spec = RedisSettings(url=with_password).as_spec()
    assert spec["url"] == url
    shown = _reels_config({URL_ENV: url, PASSWORD_FILE_ENV: str(password_file), **tls_env})
    assert f"# redis in use: {url}, TLS on" in shown and f"user {USER}" in shown, shown[-500:]
    embedded = _reels_config({URL_ENV: with_password})
    assert f"rediss://{USER}:***@127.0.0.1:{port}/0" in embedded, embedded[-500:]
    log = (tmp_path / "redis" / "redis.log").read_text()
    for where, text in {"argv": argv, "spec": str(spec), "reels config": shown + embedded, "redis.conf": conf,
                        "redis.log": log, "repr": repr(RedisSettings(url=url, password=password))}.items():  # fmt: skip
        assert password not in text, where
    assert oct((tmp_path / "redis" / "redis.conf").stat().st_mode & 0o777) == "0o600"


def test_the_environment_url_with_its_password_reaches_an_acl_user(tmp_path, redis_env):
    from reels.client.config import load_config

    password = secrets.token_urlsafe(24)
    port = free_port()
    with RedisServer(tmp_path / "redis", port=port, password=password, username=USER, durable=False):
        redis_env.setenv(URL_ENV, f"redis://{USER}:{password}@127.0.0.1:{port}/0")
        settings = load_config().server.redis
        assert settings.client(timeout_s=5.0).acl_whoami() == USER
        # A release spec holds the URL without the password; a process with the same environment (the
        # step models inside tritonserver) still authenticates.
        from_spec = RedisSettings.from_spec(settings.as_spec())
        assert password not in str(settings.as_spec())
        assert from_spec.client(timeout_s=5.0).acl_whoami() == USER


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_a_local_dask_cluster_listens_on_loopback_only():
    from reels.deploy.dask_cluster import dask_cluster

    me = psutil.Process()
    with dask_cluster(n_workers=1, dashboard_address=":0") as info:  # no host given: loopback, not all
        listening = {
            conn.laddr.ip
            for proc in [me, *me.children(recursive=True)]
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
    assert urlsplit(info.scheduler).hostname == "127.0.0.1", info.scheduler
    assert info.dashboard and urlsplit(info.dashboard).hostname == "127.0.0.1", info.dashboard
    assert listening and all(_loopback(a) for a in listening), listening


@pytest.mark.parametrize(
    ("given", "bound"),
    [(":8787", "127.0.0.1:8787"), ("8787", "127.0.0.1:8787"), (":0", "127.0.0.1:0"),
     ("0.0.0.0:8787", "0.0.0.0:8787"), ("localhost:9000", "localhost:9000")],
)  # fmt: skip
def test_dashboard_addresses_without_a_host_mean_loopback(given, bound):
    from reels.deploy.dask_cluster import loopback_dashboard

    assert loopback_dashboard(given) == bound
