"""Logins of a Linux system account through PAM (auth.backend = "pam"):
a user made with useradd + chpasswd, without a home or a login shell."""

import ftplib
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest

from dvclients import ftp_plain, ftp_tls, paramiko_sftp, payload, raw, retr, stor

PAM_FILE = pathlib.Path("/etc/pam.d/dropvault")
SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "packaging" / "pam.d" / "dropvault"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for useradd and PAM")


@pytest.fixture
def pam_service():
    """/etc/pam.d/dropvault: the shipped file when it is not installed yet
    (removed again afterwards)."""
    installed = False
    if not PAM_FILE.exists():
        if SHIPPED.exists():
            shutil.copyfile(SHIPPED, PAM_FILE)
        else:
            PAM_FILE.write_text("@include common-auth\n@include common-account\n")
        installed = True
    yield "dropvault"
    if installed:
        PAM_FILE.unlink()


@pytest.fixture
def system_user():
    name = "dvt" + uuid.uuid4().hex[:8]
    password = "Pam-" + uuid.uuid4().hex[:12]
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True, timeout=30)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                       timeout=30)
        yield name, password
    finally:
        subprocess.run(["userdel", name], timeout=30)


def test_pam_login(dropvault, pam_service, system_user):
    name, password = system_user
    server = dropvault(users={}, auth_backend="pam", auth_pam_service=pam_service)
    data = payload(2 * 65536 + 17)
    with ftp_plain(server, user=name, password=password) as ftp:
        stor(ftp, "from-pam.bin", data)
        assert retr(ftp, "from-pam.bin") == data
    with ftp_tls(server, user=name, password=password) as ftp:
        assert retr(ftp, "from-pam.bin", rest=65536) == data[65536:]
    assert (server.user_dir(name) / "from-pam.bin").is_file()
    assert server.events("login", user=name)

    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp_plain(server, user=name, password=password + "x")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp_plain(server, user="root", password="anything")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp_plain(server, user="no-such-" + name, password=password)


def test_wrong_passwords_in_pam_do_not_hold_up_a_correct_login(dropvault, pam_service,
                                                               system_user):
    # pam_unix delays each failure by ~2 s. Before, that delay was served
    # inside PAM while holding one of a few (cores) login permits, so a
    # handful of wrong passwords made every other login queue behind them.
    # Now PAM's delay is left to the server, which serves it holding
    # nothing: the correct login is answered before any of the failures.
    name, password = system_user
    server = dropvault(users={}, auth_backend="pam", auth_pam_service=pam_service,
                       ftp_ban_after_failures=1000, ftp_max_sessions_per_ip=100)
    attackers = [raw(server) for _ in range(2 * (os.cpu_count() or 2))]
    for r in attackers:
        assert r.cmd(f"USER {name}")[0] == 331
    for r in attackers:
        r.send("PASS wrong-" + uuid.uuid4().hex[:6])
    # Let the wrong passwords reach PAM first.
    time.sleep(0.5)
    good = raw(server)
    assert good.cmd(f"USER {name}")[0] == 331
    good.send(f"PASS {password}")
    answered = []
    lock = threading.Lock()

    def collect(label, r):
        code = r.reply()[0]
        with lock:
            answered.append((label, code))

    threads = [threading.Thread(target=collect, args=("attacker", r)) for r in attackers]
    threads.append(threading.Thread(target=collect, args=("good", good)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answered[0] == ("good", 230), answered
    assert sorted(code for label, code in answered if label == "attacker") == \
        [530] * len(attackers), answered
    for r in attackers + [good]:
        r.close()


def test_pam_login_over_sftp_with_password_and_keyboard_interactive(dropvault, pam_service,
                                                                     system_user):
    import io

    import paramiko

    name, password = system_user
    server = dropvault(users={}, auth_backend="pam", auth_pam_service=pam_service)
    data = payload(3 * 65536 + 5)

    # Password authentication (paramiko's connect with a password).
    client, sftp = paramiko_sftp(server.host, server.sftp_port, name, password=password)
    try:
        sftp.putfo(io.BytesIO(data), "over-sftp.bin")
    finally:
        client.close()

    # Keyboard-interactive: the server asks for the password at a prompt.
    sock = socket.create_connection((server.host, server.sftp_port), timeout=30)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=30)
        prompts = []

        def answer(title, instructions, asked):
            prompts.extend(text for text, _echo in asked)
            return [password] * len(asked)

        transport.auth_interactive(name, answer)
        assert transport.is_authenticated() and prompts
        sftp = paramiko.SFTPClient.from_transport(transport)
        out = io.BytesIO()
        sftp.getfo("over-sftp.bin", out)
        assert out.getvalue() == data
    finally:
        transport.close()

    assert server.events("login", user=name, protocol="sftp")
    # A wrong PAM password is refused over SFTP too.
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_sftp(server.host, server.sftp_port, name, password=password + "x")
