"""Packaging (docs/DEPLOY.md): the Debian package and the container.

The Debian package is built with `cargo deb --no-build` around the binary
under test (DROPVAULT_BIN's profile), installed with `dpkg -i` on this
machine, checked (files, owners, modes, conffiles, `systemd-analyze
verify` of its unit), its unit's ExecStart run as the unit's User with the
listeners moved to loopback port 0, logged in over FTPS and SFTP, and
purged: the configuration goes, /var/lib/dropvault and its files stay.
This installs a system package, so it needs root; the module purges it
again at the end, whatever happened, and puts back /etc/pam.d/dropvault
as it found it (the PAM tests log in through that file).

The container is checked without a container engine: `docker-compose
config` accepts compose.yaml, and packaging/docker-entrypoint.sh runs here
with the environment compose.yaml gives dropvault, its service addresses
pointed at a real OpenBao and a real clamd (the harnesses), so the wait
for both, the first user, and the scanned upload are what the container
would do.
"""

from __future__ import annotations

import ftplib
import os
import pathlib
import pwd
import shutil
import stat
import subprocess

import pytest

from clamd import EICAR, SIGNATURE, Clamd
from conftest import Server
from dvclients import BIN, PASSWORD, USER, find_marker, ftp_tls, paramiko_sftp, payload, retr, stor
from openbao import OpenBao, bao_binary

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = pathlib.Path("/var/lib/dropvault")
CONFIG = pathlib.Path("/etc/dropvault/dropvault.toml")
PAM_FILE = pathlib.Path("/etc/pam.d/dropvault")
# Left in DATA by this module, so that a run can tell its own leftovers
# (after a crash) from a real installation's data.
TEST_MARK = DATA / ".dropvault-package-test"
ENTRYPOINT = REPO / "packaging" / "docker-entrypoint.sh"
TIMEOUT = 600

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package: root only")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    """Runs a command, failing the test with its output when it fails."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def cargo_deb() -> str:
    """The cargo-deb binary scripts/test installs (on PATH or in its cache)."""
    cached = pathlib.Path.home() / ".cache/dropvault/cargo-deb/bin/cargo-deb"
    found = shutil.which("cargo-deb") or (str(cached) if os.access(cached, os.X_OK) else None)
    assert found, "cargo-deb not found: scripts/test installs it"
    return found


def build_deb(out_dir: pathlib.Path) -> pathlib.Path:
    """The .deb around BIN, without building anything: BIN's target folder
    and profile folder ("debug" for the dev profile CI builds) say where."""
    binary = pathlib.Path(BIN).resolve()
    profile = "dev" if binary.parent.name == "debug" else binary.parent.name
    env = {**os.environ, "CARGO_TARGET_DIR": str(binary.parent.parent)}
    run(cargo_deb(), "-p", "dropvault", "--no-build", "--fast", "--profile", profile,
        "--output", str(out_dir), cwd=REPO, env=env)
    debs = list(out_dir.glob("dropvault_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "dropvault"],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() not in ("", "not-installed", "config-files")


def purge() -> None:
    subprocess.run(["dpkg", "--purge", "dropvault"], capture_output=True, timeout=TIMEOUT)


def unit_path() -> pathlib.Path:
    for folder in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        path = pathlib.Path(folder) / "dropvault.service"
        if path.is_file():
            return path
    raise AssertionError("the package installed no dropvault.service")


def unit_setting(name: str) -> str:
    values = [line.split("=", 1)[1].strip() for line in unit_path().read_text().splitlines()
              if line.startswith(name + "=")]
    assert len(values) == 1, (name, values)
    return values[0]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The package, installed; purged at the end, /etc/pam.d/dropvault as
    it was before."""
    if DATA.exists() and not TEST_MARK.exists():
        pytest.fail(f"{DATA} exists and is not this test's: not touching it", pytrace=False)
    pam_before = PAM_FILE.read_bytes() if PAM_FILE.exists() else None
    purge()
    shutil.rmtree(DATA, ignore_errors=True)
    deb = build_deb(tmp_path_factory.mktemp("deb"))
    try:
        run("dpkg", "-i", str(deb))
        TEST_MARK.touch()
        yield deb
    finally:
        purge()
        shutil.rmtree(DATA, ignore_errors=True)
        if pam_before is not None:
            PAM_FILE.write_bytes(pam_before)


def test_package_installs_files_account_and_a_unit_that_verifies(package):
    account = pwd.getpwnam("dropvault")
    assert account.pw_uid < 1000 and account.pw_shell == "/usr/sbin/nologin"
    data = DATA.stat()
    assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (account.pw_uid, 0o700)
    config = CONFIG.stat()
    assert (config.st_uid, config.st_gid, stat.S_IMODE(config.st_mode)) == \
        (0, account.pw_gid, 0o640)
    assert 'data_dir = "/var/lib/dropvault"' in CONFIG.read_text()
    assert PAM_FILE.read_bytes() == (REPO / "packaging/pam.d/dropvault").read_bytes()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "dropvault").stdout
    assert str(CONFIG) in conffiles and str(PAM_FILE) in conffiles, conffiles
    assert os.access("/usr/bin/dropvault", os.X_OK)
    assert unit_setting("User") == "dropvault"
    assert unit_setting("ReadWritePaths") == str(DATA)
    # Neither enabled nor started by the install: the operator configures first.
    assert not list(pathlib.Path("/etc/systemd/system").glob("*.wants/dropvault.service"))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit_path())],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "dropvault.service" not in verify.stderr, verify.stderr


def test_packaged_service_command_serves_ftp_and_sftp_as_its_user(package, tmp_path):
    user = unit_setting("User")
    as_user = ["runuser", "-u", user, "--"]
    command = unit_setting("ExecStart").split()
    run(*as_user, command[0], "--config", str(CONFIG), "user", "add", USER, "--password-stdin",
        input=PASSWORD + "\n")
    srv = Server(DATA, {}, tmp_path)
    srv.command = as_user + command
    srv.start()
    data = payload(200_000)
    try:
        with ftp_tls(srv) as ftp:
            stor(ftp, "report.bin", data)
            assert retr(ftp, "report.bin") == data
        client, sftp = paramiko_sftp(srv.host, srv.sftp_port, USER, PASSWORD)
        try:
            with sftp.open("/report.bin", "rb") as f:
                assert f.read() == data
        finally:
            client.close()
    finally:
        srv.stop()
    uid = pwd.getpwnam(user).pw_uid
    for path in [DATA / "kek.pem", DATA / "users.toml", *DATA.rglob("report.bin*")]:
        assert path.stat().st_uid == uid, path
    assert not find_marker(DATA)


def test_reinstall_keeps_an_edited_configuration_and_the_data(package):
    edited = CONFIG.read_text() + "# edited by the operator\n"
    CONFIG.write_text(edited)
    stored = sorted(p.relative_to(DATA) for p in DATA.rglob("*"))
    run("dpkg", "-i", "--force-confold", str(package))
    assert CONFIG.read_text() == edited
    config = CONFIG.stat()
    assert (config.st_gid, stat.S_IMODE(config.st_mode)) == \
        (pwd.getpwnam("dropvault").pw_gid, 0o640)
    assert sorted(p.relative_to(DATA) for p in DATA.rglob("*")) == stored


def test_purge_removes_the_configuration_and_keeps_the_data(package):
    stored = sorted(p.relative_to(DATA) for p in DATA.rglob("*"))
    assert any(USER in p.parts for p in stored), "the previous test stored nothing"
    run("dpkg", "--purge", "dropvault")
    assert not installed()
    assert not CONFIG.exists() and not CONFIG.parent.exists()
    assert not os.path.exists("/usr/bin/dropvault")
    assert sorted(p.relative_to(DATA) for p in DATA.rglob("*")) == stored
    pwd.getpwnam("dropvault")  # the account that owns the data stays too


# -- the container, without a container engine ------------------------------


def compose_config() -> dict:
    import yaml  # PyYAML: docker-compose's own dependency

    r = run("docker-compose", "-f", str(REPO / "compose.yaml"), "config")
    return yaml.safe_load(r.stdout)


def test_compose_file_is_accepted_and_wires_transit_and_clamd():
    services = compose_config()["services"]
    assert {"dropvault", "openbao", "openbao-init", "clamd"} <= set(services)
    env = services["dropvault"]["environment"]
    assert env["DROPVAULT_KMS_PROVIDER"] == "transit"
    assert env["DROPVAULT_KMS_TRANSIT_ADDRESS"] == "http://openbao:8200"
    assert env["DROPVAULT_SCAN_CLAMD"] == "tcp:clamd:3310"
    init = " ".join(services["openbao-init"]["command"])
    assert f"transit/keys/{env['DROPVAULT_KMS_TRANSIT_KEY']}" in init


@pytest.fixture
def services(tmp_path):
    bao = OpenBao(tmp_path / "openbao")
    daemon = Clamd(tmp_path / "clamd")
    try:
        bao.start()
        daemon.start()
        yield bao, daemon
    finally:
        daemon.close()
        bao.close()


def test_entrypoint_with_the_compose_environment_waits_adds_first_user_and_scans(
        services, tmp_path, all_data_dirs):
    bao, daemon = services
    compose = compose_config()["services"]
    env = compose["dropvault"]["environment"]
    # openbao-init's own script, pointed at this OpenBao.
    init = compose["openbao-init"]
    run(*init["entrypoint"], *init["command"], env={
        **os.environ, **init["environment"], "BAO_ADDR": bao.addr, "BAO_TOKEN": bao.root_token,
        "PATH": f"{pathlib.Path(bao_binary()).parent}:{os.environ['PATH']}"})
    assert bao.key_info(env["DROPVAULT_KMS_TRANSIT_KEY"])
    # The addresses the containers would have.
    secret = tmp_path / "first-password"
    secret.write_text(PASSWORD + "\n")
    assert env["DROPVAULT_FIRST_USER"] == USER
    env.update({
        "DROPVAULT_KMS_TRANSIT_ADDRESS": bao.addr,
        "DROPVAULT_KMS_TRANSIT_TOKEN": bao.root_token,
        "DROPVAULT_SCAN_CLAMD": daemon.tcp,
        "DROPVAULT_FIRST_PASSWORD_FILE": str(secret),
        "DROPVAULT_BIN": BIN,
    })
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)  # the image's volume
    all_data_dirs.append(data_dir)
    srv = Server(data_dir, {}, tmp_path, env)
    srv.command = [str(ENTRYPOINT)]
    clean = payload(100_000)
    try:
        srv.start()
        environ = pathlib.Path(f"/proc/{srv.proc.pid}/environ").read_bytes()
        assert b"DROPVAULT_FIRST_" not in environ  # the entrypoint's own, not the server's
        with ftp_tls(srv) as ftp:
            stor(ftp, "clean.bin", clean)
            with pytest.raises(ftplib.error_perm) as err:
                stor(ftp, "eicar.com", EICAR)
            assert str(err.value).startswith("550") and SIGNATURE in str(err.value)
            assert retr(ftp, "clean.bin") == clean
        srv.restart()  # the users file has a user now: no second one
        with ftp_tls(srv) as ftp:
            assert retr(ftp, "clean.bin") == clean
    finally:
        srv.stop()
    log = srv.log_text()
    assert log.count(f"created the first user, {USER}") == 1, log[-3000:]
    assert "key service (transit): ready" in log and "clamd (tcp:" in log
    assert srv.events(), "the server's own log (stderr) is missing"
