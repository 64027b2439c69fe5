"""Fixtures of dropvault's acceptance suite.

Every test gets its own server(s): a fresh data folder under the test's
tmp_path, the control and implicit-FTPS listeners on 127.0.0.1 port 0 (the
real ports are parsed from the server's stdout lines; SFTP's too, when it
is configured), a passive port range of its own that no other server of
this run uses, JSON logs on stderr in a file. At teardown every server is
stopped (SIGTERM, then SIGKILL), and every data folder is scanned, file by
file, for the plaintext marker that every uploaded file carries; finding it
fails the test.

Acceptance modules marked `both_backends` run every test twice: on the
local storage folder and on S3 storage (`backend` is "local" or "s3"; a
test marked `local_only` looks into the local folder and runs there only).
On S3 each server stores in the shared `garage` cluster under the test's
`s3_prefix` plus its data folder's name.

S3 storage is a real Garage cluster (garage.py): `garage` is one node shared
by the whole run, each test storing under its own `s3_prefix`; `garage3` is
three nodes with replication 3 for one test alone. Their data folders are
scanned for the marker like a server's.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import queue
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from clamd import Clamd
from dvclients import BIN, PASSWORD, STORAGE_ENV, USER, base_env, find_marker, run_cli
from garage import GarageCluster
from openbao import OpenBao
from procs import die_with_parent
from slapd import Slapd

START_TIMEOUT = 60
STOP_TIMEOUT = 25

# Every data folder any server of this run used, for the final check in
# test_zz_at_rest.py.
ALL_DATA_DIRS: list[pathlib.Path] = []

# Passive ports: ranges of 40 taken in turn from 20000-31999 (below the
# kernel's ephemeral ports), starting at a random place, one range per
# server start. A range is only handed out when every port in it can be
# bound right now, so ports still held by another run (or in TIME_WAIT)
# are skipped.
_PORTS_PER_SERVER = 40
_POOL_LOW, _POOL_HIGH = 20000, 32000
_RANGES = (_POOL_HIGH - _POOL_LOW) // _PORTS_PER_SERVER
_next_range = itertools.count(random.randrange(_RANGES))

READY = re.compile(
    r"dropvault: FTP on (?:\[(?P<host6>[0-9a-f:]+)\]|(?P<host>[0-9.]+)):(?P<port>\d+)"
    r"(?: \(explicit FTPS available\))?"
    r"(?:, implicit FTPS on (?P<ihost>[0-9.]+):(?P<iport>\d+))?"
)
# Printed before the FTP line when [admin] listen is set.
ADMIN_READY = re.compile(r"dropvault: admin on (?P<host>[0-9.]+):(?P<port>\d+)")
HTTPS_READY = re.compile(r"dropvault: HTTPS on (?P<host>[0-9.]+):(?P<port>\d+)")
# Printed after the FTP line when [sftp] listen is set.
SFTP_READY = re.compile(
    r"dropvault: SFTP on (?:\[(?P<host6>[0-9a-f:]+)\]|(?P<host>[0-9.]+)):(?P<port>\d+)"
    r"(?: \(host key (?P<fp>SHA256:[A-Za-z0-9+/=]+)\))?"
)



def _bindable(lo: int, hi: int) -> bool:
    for port in range(lo, hi + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def passive_range(size: int = _PORTS_PER_SERVER) -> str:
    if size > _PORTS_PER_SERVER:
        raise ValueError("passive ranges are at most %d ports" % _PORTS_PER_SERVER)
    for _ in range(_RANGES):
        lo = _POOL_LOW + (next(_next_range) % _RANGES) * _PORTS_PER_SERVER
        if _bindable(lo, lo + size - 1):
            return f"{lo}-{lo + size - 1}"
    raise RuntimeError("no free passive port range in %d-%d" % (_POOL_LOW, _POOL_HIGH - 1))


class Server:
    """One `dropvault serve` process (and its restarts) on one data folder."""

    def __init__(self, data_dir: pathlib.Path, settings: dict[str, str], workdir: pathlib.Path,
                 extra_env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.settings = dict(settings)
        self.extra_env = dict(extra_env or {})
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        # What runs the server: the binary, or a wrapper that execs it (the
        # container's entrypoint, the packaged unit's command as its user).
        self.command = [BIN, "serve"]
        self.starts = 0
        self.stdout_lines: list[str] = []
        self.log_files: list[pathlib.Path] = []
        self.host = "127.0.0.1"
        self.port = 0
        self.implicit_port: int | None = None
        # The SFTP listener's port and host key fingerprint ("SHA256:..."),
        # None when the server has no SFTP listener.
        self.sftp_port: int | None = None
        self.sftp_host_key: str | None = None
        # The admin listener's port, None when it is off.
        self.admin_port: int | None = None
        # The HTTPS (web drop) listener's port, None when it is off.
        self.https_port: int | None = None
        self.passive_ports = ""
        # (soft, hard) open-file limit the server starts with; None = ours.
        self.nofile: tuple[int, int] | None = None
        # "local" or "s3", and the key prefix of an S3 server.
        self.backend = "local"
        self.s3_prefix: str | None = None

    # -- process -------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = base_env()
        env.update({
            "DROPVAULT_DATA_DIR": str(self.data_dir),
            "DROPVAULT_FTP_LISTEN": "127.0.0.1:0",
            "DROPVAULT_FTP_IMPLICIT_TLS_LISTEN": "127.0.0.1:0",
            # SFTP is on by default, on port 2222: each test server gets
            # its own port (sftp_listen="" turns it off).
            "DROPVAULT_SFTP_LISTEN": "127.0.0.1:0",
            # The admin listener too (admin_listen="" turns it off).
            "DROPVAULT_ADMIN_LISTEN": "127.0.0.1:0",
            # The HTTPS listener too (http_listen="" turns it off).
            "DROPVAULT_HTTP_LISTEN": "127.0.0.1:0",
            "DROPVAULT_FTP_PASSIVE_PORTS": self.passive_ports,
            "DROPVAULT_FTP_DRAIN_GRACE_SECS": "5",
            "DROPVAULT_LOG_FORMAT": "json",
        })
        env.update(self.extra_env)
        for key, value in self.settings.items():
            name = "DROPVAULT_" + key.upper()
            if value is None:
                env.pop(name, None)
            else:
                env[name] = str(value)
        return env

    def start(self) -> "Server":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        if "ftp_passive_ports" not in self.settings:
            self.passive_ports = passive_range()
        log = self.workdir / f"server-{self.data_dir.name}-{self.starts}.log"
        self.log_files.append(log)
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                self.command, env=self.env(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, preexec_fn=self._preexec,
            )
        lines: queue.Queue[str] = queue.Queue()
        out = self.proc.stdout

        def pump() -> None:
            for raw in out:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        # The SFTP line is waited for only when SFTP is configured; without
        # it, one already printed with the FTP line is still taken.
        want_sftp = bool(self.env().get("DROPVAULT_SFTP_LISTEN"))
        self.sftp_port = self.sftp_host_key = self.admin_port = self.https_port = None
        ftp_ready = False
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if ftp_ready and (self.sftp_port is not None or not want_sftp):
                # Whatever else is already there (an SFTP line printed with
                # the FTP one), without waiting.
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    return self
            else:
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"dropvault serve exited with {self.proc.returncode} before it was "
                            f"ready; stderr:\n{self.log_text()[-4000:]}")
                    if time.monotonic() > deadline:
                        self.kill()
                        what = "SFTP ready line" if ftp_ready else "ready line"
                        raise RuntimeError(f"dropvault serve did not print its {what} in time")
                    continue
            m = READY.search(line)
            if m:
                self.host = m["host"] or m["host6"]
                self.port = int(m["port"])
                self.implicit_port = int(m["iport"]) if m["iport"] else None
                ftp_ready = True
                continue
            m = ADMIN_READY.search(line)
            if m:
                self.admin_port = int(m["port"])
                continue
            m = HTTPS_READY.search(line)
            if m:
                self.https_port = int(m["port"])
                continue
            m = SFTP_READY.search(line)
            if m:
                self.sftp_port = int(m["port"])
                self.sftp_host_key = m["fp"]

    def _preexec(self) -> None:
        die_with_parent()
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> "Server":
        self.stop()
        return self.start()

    # -- logs ------------------------------------------------------------

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files if p.exists())

    def events(self, name: str | None = None, **fields) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if name is not None and record.get("event") != name:
                continue
            if any(str(record.get(k)) != str(v) for k, v in fields.items()):
                continue
            out.append(record)
        return out

    def wait_for_event(self, name: str, timeout: float = 20, count: int = 1, **fields) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **fields)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    # -- on disk ---------------------------------------------------------

    @property
    def https_url(self) -> str:
        """Base URL of the HTTPS listener (its certificate is self-signed)."""
        assert self.https_port is not None, "the HTTPS listener is off"
        return f"https://127.0.0.1:{self.https_port}"

    def user_dir(self, user: str = USER) -> pathlib.Path:
        return self.data_dir / "files" / user

    def __repr__(self) -> str:
        return f"<dropvault on {self.host}:{self.port} data={self.data_dir}>"


@pytest.fixture(scope="session")
def kek_template(tmp_path_factory) -> pathlib.Path:
    """A key-encryption key and TLS certificate made once by a real first
    start, copied into every test's fresh data folder so that each start
    does not spend a second on RSA-4096 key generation."""
    if not os.access(BIN, os.X_OK):
        pytest.exit(f"dropvault binary not found at {BIN}: build it (cargo build -p dropvault) "
                    "or set DROPVAULT_BIN", returncode=3)
    work = tmp_path_factory.mktemp("template")
    data = work / "data"
    srv = Server(data, {}, work)
    srv.start()
    srv.stop()
    for name in ("kek.pem", "tls-cert.pem", "tls-key.pem"):
        assert (data / name).is_file(), f"first start did not create {name}"
    return data


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "both_backends: run each test on local storage and on S3 storage (Garage)")
    config.addinivalue_line(
        "markers", "local_only: in a both_backends module, run on local storage only "
        "(the test looks into the storage folder)")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    node = metafunc.definition
    if node.get_closest_marker("both_backends") and not node.get_closest_marker("local_only"):
        metafunc.parametrize("backend", ["local", "s3"], indirect=True)


@pytest.fixture
def backend(request) -> str:
    """Where the test's servers store: "local" (the default) or "s3"."""
    return getattr(request, "param", "local")


@pytest.fixture
def dropvault(request, tmp_path, kek_template, backend):
    """Factory: `dropvault(users={...}, data_dir=..., **settings)` starts a
    server. Settings are config keys as `section_key` (ftp_tls="required"
    becomes DROPVAULT_FTP_TLS=required). Users are created with
    `dropvault user add NAME --password-stdin` before the start (default:
    alice); `users={}` creates none. With prepare=False the data folder is
    left for the server to create (and its key to generate). `env` adds
    environment variables that are not settings (RUST_LOG, proxies, ...).
    The start also waits for the SFTP ready line (SFTP listens on a port of
    its own): server.sftp_port and server.sftp_host_key ("SHA256:...") are
    then set; with sftp_listen="" SFTP is off and they are None. With the
    s3 `backend`, the server stores in the shared Garage cluster under the
    test's prefix and its data folder's name (server.s3_prefix)."""
    servers: list[Server] = []
    cluster = request.getfixturevalue("garage") if backend == "s3" else None
    test_prefix = request.getfixturevalue("s3_prefix") if backend == "s3" else ""
    counter = itertools.count()

    def start(users: dict[str, str] | None = None, data_dir: pathlib.Path | None = None,
              prepare: bool = True, env: dict[str, str] | None = None,
              nofile: tuple[int, int] | None = None, **settings) -> Server:
        if data_dir is None:
            data_dir = tmp_path / f"data{next(counter)}"
        if prepare and not data_dir.exists():
            data_dir.mkdir(mode=0o700, parents=True)
            for name in ("kek.pem", "tls-cert.pem", "tls-key.pem"):
                shutil.copy2(kek_template / name, data_dir / name)
        if users is None:
            users = {USER: PASSWORD}
        for name, password in users.items():
            r = run_cli(["user", "add", name, "--password-stdin"], data_dir, stdin=password + "\n")
            assert r.returncode == 0, f"user add {name} failed: {r.stderr}"
        if cluster is not None:
            env = {**cluster.env(f"{test_prefix}{data_dir.name}/"), **(env or {})}
        storage = {k: v for k, v in (env or {}).items() if k.startswith("DROPVAULT_STORAGE_")}
        if storage:
            STORAGE_ENV[str(data_dir)] = storage
        srv = Server(data_dir, settings, tmp_path, env)
        srv.backend = storage.get("DROPVAULT_STORAGE_BACKEND", "local")
        srv.s3_prefix = storage.get("DROPVAULT_STORAGE_S3_PREFIX")
        srv.nofile = nofile
        ALL_DATA_DIRS.append(data_dir)
        servers.append(srv)
        return srv.start()

    yield start

    for srv in servers:
        try:
            srv.stop()
        except Exception:  # noqa: BLE001 - teardown must reach every server
            srv.kill()
    leaks = []
    for data_dir in dict.fromkeys(s.data_dir for s in servers):
        leaks += find_marker(data_dir)
    if leaks:
        pytest.fail("plaintext marker found on storage: " + ", ".join(map(str, leaks)),
                    pytrace=False)


@pytest.fixture(scope="session")
def all_data_dirs() -> list[pathlib.Path]:
    """Every data folder a server of this run has used so far."""
    return ALL_DATA_DIRS


@pytest.fixture
def passive_ports():
    """Factory: a passive port range of `size` ports no other server of
    this run uses."""
    return passive_range


@pytest.fixture
def server(dropvault) -> Server:
    """A server with default settings and user alice."""
    return dropvault()


@pytest.fixture
def payload_file(tmp_path):
    """Factory: write a marker-carrying random file of `size` bytes."""
    from dvclients import payload

    counter = itertools.count()

    def make(size: int, name: str | None = None) -> pathlib.Path:
        path = tmp_path / (name or f"payload-{next(counter)}.bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(size))
        return path

    return make



@pytest.fixture
def hook_dir():
    """A folder for hook scripts and what they write, usable by the
    unprivileged account hooks run as (scan.run_as / hooks.run_as default
    to `nobody` when the server is root): pytest's own tmp folders are
    root's alone."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="dv-hooks-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Files of the shared Garage cluster already reported as holding the
# marker: a leak fails the test that made it, not every later one.
_GARAGE_LEAKS: set[pathlib.Path] = set()


@pytest.fixture(scope="session")
def garage(tmp_path_factory) -> GarageCluster:
    """One single-node Garage cluster for the whole run (bucket, key and
    endpoint in its properties; `garage.env(s3_prefix)` is what a server
    needs). Tests share it: each stores under its own `s3_prefix`."""
    cluster = GarageCluster(tmp_path_factory.mktemp("garage"), nodes=1, replication=1)
    cluster.start()
    ALL_DATA_DIRS.extend(cluster.data_dirs)
    yield cluster
    cluster.close()


@pytest.fixture
def s3_prefix(request, garage) -> str:
    """A key prefix in the shared cluster's bucket that no other test uses
    ("<test name>-<random>/"). At teardown the cluster's data folders are
    scanned for the plaintext marker; a file not reported before fails the
    test."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60].strip("-")
    yield f"{name}-{os.urandom(4).hex()}/"
    leaks = [p for d in garage.data_dirs for p in find_marker(d) if p not in _GARAGE_LEAKS]
    _GARAGE_LEAKS.update(leaks)
    if leaks:
        pytest.fail("plaintext marker found in Garage: " + ", ".join(map(str, leaks)),
                    pytrace=False)


@pytest.fixture
def garage3(tmp_path) -> GarageCluster:
    """A Garage cluster of three nodes (zones dc1-dc3) with replication 3,
    for one test: it may kill, stop and restart nodes (kill_node(i),
    start_node(i), stop_all(), start_all()). Its data folders are scanned
    for the plaintext marker at teardown."""
    cluster = GarageCluster(tmp_path / "garage3", nodes=3, replication=3)
    cluster.start()
    ALL_DATA_DIRS.extend(cluster.data_dirs)
    yield cluster
    cluster.close()
    leaks = [p for d in cluster.data_dirs for p in find_marker(d)]
    if leaks:
        pytest.fail("plaintext marker found in Garage: " + ", ".join(map(str, leaks)),
                    pytrace=False)


@pytest.fixture
def slapd(tmp_path) -> Slapd:
    """A throwaway OpenLDAP slapd for this test (slapd.py): users alice,
    bob (both in the group) and carol (not), a service account, ldap:// and
    ldaps:// on loopback ports, a test CA. `slapd.stop()` and
    `slapd.start()` take it away and bring it back on the same ports."""
    server = Slapd(tmp_path / "slapd")
    server.start()
    yield server
    server.close()


# A clamd and an OpenBao per test module that asks for them (each takes a
# few seconds to start; clamd loads its signature database).
@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    daemon = Clamd(tmp_path_factory.mktemp("clamd")).start()
    yield daemon
    daemon.close()


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    server = OpenBao(tmp_path_factory.mktemp("openbao"))
    server.start()
    yield server
    server.close()
