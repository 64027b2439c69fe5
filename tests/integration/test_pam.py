"""Logins of a Linux system account through PAM (auth.backend = "pam"):
a user made with useradd + chpasswd, without a home or a login shell."""

import ftplib
import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

from dvclients import ftp_plain, ftp_tls, payload, retr, stor

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
