"""Fixtures: real `swarmd` servers (temporary directory, free port, SQLite),
started once per test session.

- `server`: no keys (`X-Tenant` names the tenant). Departments: the built-in
  `echo` and `sim`; `py` runs `examples/python-agent/agent.py` (the worker
  helper) and `fn` runs `tests/workers/fn_worker.py` (`@agent`).
- `keyed_server`: `[[tenants]]` with API keys (`acme`, `tiny` with
  `max_outstanding = 1`, admin `boss`).

The package tested is `src/` unless `SWARMDIRECTOR_TEST_INSTALLED=1`. The
binary is `$SWARMD_BIN`, default `target/debug/swarmd` of the
repository, built with `cargo build -p swarmd` when missing. With
`SWARMDIRECTOR_TEST_PG_URL` (a PostgreSQL URL whose user may create
databases) each server gets a fresh database there instead of a SQLite
file (`.ci/run` runs the suite both ways).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

# The checkout's package (src/), or with SWARMDIRECTOR_TEST_INSTALLED=1 (as in
# .ci/run, after `pip install ./clients/python`) the installed one.
if os.environ.get("SWARMDIRECTOR_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(REPO / "clients" / "python" / "src"))
import swarmdirector  # noqa: E402

# Where the workers swarmd starts import the package from: the same copy.
PKG_ROOT = Path(swarmdirector.__file__).resolve().parent.parent

KEYS = {"acme": "acme-key-0123456789", "tiny": "tiny-key-0123456789", "boss": "boss-key-0123456789"}


def swarmd_bin() -> Path:
    path = Path(os.environ.get("SWARMD_BIN") or REPO / "target" / "debug" / "swarmd")
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        subprocess.run(["cargo", "build", "-p", "swarmd"], cwd=REPO, check=True)
    if not path.exists():
        pytest.exit(f"no swarmd binary at {path} (set SWARMD_BIN)", returncode=1)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    dir: Path

    def log(self) -> str:
        return (self.dir / "swarmd.log").read_text(errors="replace")


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a TOML basic string


def database_url(tmp: Path) -> str:
    """A SQLite file in `tmp`, or a fresh PostgreSQL database."""
    pg = os.environ.get("SWARMDIRECTOR_TEST_PG_URL")
    if not pg:
        return f"sqlite://{tmp / 'swarmd.db'}"
    name = f"swarmd_pytest_{os.getpid()}_{tmp.name[-8:].lower()}".replace("-", "_")
    subprocess.run(["psql", pg, "-qc", f"CREATE DATABASE {name}"], check=True)
    (tmp / "pg_database").write_text(name)
    return pg.rsplit("/", 1)[0] + "/" + name


def drop_database(tmp: Path) -> None:
    """Drops the database `database_url` created in `tmp`, if any."""
    marker = tmp / "pg_database"
    if marker.exists():
        pg = os.environ["SWARMDIRECTOR_TEST_PG_URL"]
        subprocess.run(["psql", pg, "-qc", f"DROP DATABASE IF EXISTS {marker.read_text()}"], check=False)


def start(config: str) -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="swarmd-pytest-"))
    (tmp / "swarmd.toml").write_text(config)
    port = free_port()
    log = open(tmp / "swarmd.log", "wb")
    proc = subprocess.Popen(
        [
            str(swarmd_bin()),
            "serve",
            "--config",
            str(tmp / "swarmd.toml"),
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            database_url(tmp),
            "--log",
            "warn",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", proc, tmp)
    try:
        until = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"swarmd exited ({proc.returncode}):\n{server.log()}")
            try:
                with urllib.request.urlopen(server.url + "/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > until:
                raise RuntimeError(f"swarmd not ready after 30 s:\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        drop_database(tmp)


def process_pool(name: str, script: Path, workers: int, env: Dict[str, str]) -> str:
    env_toml = ", ".join(f"{k} = {toml_str(v)}" for k, v in env.items())
    return (
        f"[pools.{name}]\nagent = \"process\"\n[pools.{name}.process]\n"
        f"command = [{toml_str(sys.executable)}, {toml_str(str(script))}]\n"
        f"workers = {workers}\nenv = {{ {env_toml} }}\n"
    )


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    config = (
        "[pools.sim]\nconcurrency = 64\n"
        + process_pool("py", REPO / "examples" / "python-agent" / "agent.py", 2, {})
        + process_pool("fn", HERE / "workers" / "fn_worker.py", 1, {"PYTHONPATH": str(PKG_ROOT)})
    )
    yield from start(config)


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[Server]:
    tenants = ""
    for name, key in KEYS.items():
        role = "admin" if name == "boss" else "client"
        tenants += (
            f"[[tenants]]\nname = {toml_str(name)}\nrole = {toml_str(role)}\n"
            f"key_sha256 = {toml_str(hashlib.sha256(key.encode()).hexdigest())}\n"
        )
        if name == "tiny":
            tenants += "max_outstanding = 1\n"
    yield from start(tenants)


@pytest.fixture
def client(server: Server):
    from swarmdirector import Client

    with Client(server.url) as c:
        yield c


def route_missing(e: Exception) -> bool:
    """Whether an error says the server has no such route (an older swarmd):
    `404` "no route for …", or `405` where the path matches another route."""
    from swarmdirector import ApiError

    return isinstance(e, ApiError) and (
        (e.status == 404 and e.message.startswith("no route")) or e.status == 405
    )
