"""Per-user quotas (issue 16 section 2) with real clients: an FTP upload
over the quota gets 552 and leaves no file and no staging file (curl, and
ftplib with ALLO), an SFTP upload over it fails (paramiko, OpenSSH sftp),
a delete frees space, a user's own quota in the users file goes first,
and `dropvault user usage` tells what a user takes."""

from __future__ import annotations

import ftplib
import re
import subprocess
import urllib.request

import pytest

from dvclients import (PASSWORD, USER, curl, ftp_plain, ftp_url, payload, paramiko_sftp,
                       run_cli, sftp_batch, ssh_keygen, stor)

MIB = 1024 * 1024


def staging(server) -> list:
    return sorted((server.data_dir / "files" / ".staging").iterdir())


def cli(server, *args: str) -> subprocess.CompletedProcess:
    """`dropvault ARGS` on the server's folder, with its [limits]."""
    limits = {"DROPVAULT_" + k.upper(): str(v) for k, v in server.settings.items()
              if k.startswith("limits_")}
    return run_cli(list(args), server.data_dir, extra_env=limits)


def usage(server, user: str = USER) -> tuple[int, int, str]:
    """(bytes, files, quota text) that `dropvault user usage` prints."""
    r = cli(server, "user", "usage", user)
    assert r.returncode == 0, r.stderr
    m = re.match(rf"{user}: (\d+) bytes in (\d+) files; quota (.*)$", r.stdout.strip())
    assert m, r.stdout
    return int(m[1]), int(m[2]), m[3]


def curl_put(server, tmp_path, name: str, data: bytes) -> subprocess.CompletedProcess:
    src = tmp_path / f"src-{name}"
    src.write_bytes(data)
    return curl("-v", "--user", f"{USER}:{PASSWORD}", "-T", str(src), ftp_url(server, "/" + name))


def test_curl_upload_over_the_quota_gets_552_and_leaves_nothing(dropvault, tmp_path):
    server = dropvault(limits_quota_bytes="3MiB")
    assert curl_put(server, tmp_path, "first.bin", payload(2 * MIB)).returncode == 0
    r = curl_put(server, tmp_path, "second.bin", payload(2 * MIB))
    assert r.returncode != 0
    assert "< 552 Quota exceeded" in r.stderr, r.stderr
    with ftp_plain(server) as ftp:
        assert ftp.nlst() == ["first.bin"]
    assert staging(server) == []
    assert usage(server) == (2 * MIB, 1, "3145728 bytes, no limit on files")
    assert server.events("quota_refused", user=USER)
    # Counted for the operator's metrics too.
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.admin_port}/metrics",
                                     timeout=30).read().decode()
    assert re.search(r"^dropvault_quota_refused_total 1$", metrics, re.M), metrics


def test_allo_and_the_files_quota_refuse_at_the_start(dropvault):
    server = dropvault(limits_quota_bytes="1MiB", limits_quota_files="1")
    with ftp_plain(server) as ftp:
        ftp.voidcmd("TYPE I")
        assert ftp.sendcmd("ALLO 5000000").startswith("202")
        with pytest.raises(ftplib.error_perm, match="^552"):
            stor(ftp, "big.bin", payload(1000))
        assert ftp.nlst() == []
        # ALLO is for one upload only.
        stor(ftp, "small.bin", payload(1000))
        # And the files quota refuses a second name at once.
        with pytest.raises(ftplib.error_perm, match="^552"):
            stor(ftp, "other.bin", payload(10))
        assert ftp.nlst() == ["small.bin"]
    assert staging(server) == []


@pytest.mark.both_backends
def test_sftp_over_the_quota_fails_and_a_delete_frees_space(dropvault, tmp_path):
    server = dropvault(limits_quota_bytes="1MiB")
    first, second = payload(700_000), payload(700_000)
    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD)
    try:
        with sftp.open("/first.bin", "wb") as f:
            f.write(first)
        # Refused as the bytes arrive (paramiko ignores a failed CLOSE, so
        # the upload is large enough to be refused while it is written).
        with pytest.raises(OSError, match="Quota exceeded"):
            with sftp.open("/second.bin", "wb") as f:
                f.write(payload(3 * MIB))
        assert sftp.listdir("/") == ["first.bin"]
        sftp.remove("/first.bin")
        with sftp.open("/second.bin", "wb") as f:
            f.write(second)
        with sftp.open("/second.bin", "rb") as f:
            assert f.read() == second
    finally:
        client.close()
    assert usage(server) == (700_000, 1, "1048576 bytes, no limit on files")


def test_openssh_sftp_put_over_the_quota_fails(dropvault, tmp_path):
    server = dropvault(limits_quota_bytes="100KiB")
    key = ssh_keygen(tmp_path)
    r = run_cli(["user", "key", "add", USER, "--file", str(key.with_suffix(".pub"))],
                server.data_dir)
    assert r.returncode == 0, r.stderr
    src = tmp_path / "big.bin"
    src.write_bytes(payload(300_000))
    r = sftp_batch(server.host, server.sftp_port, USER, key, f"put {src} /big.bin\n")
    # OpenSSH shows the status code (SSH_FX_FAILURE), not its message.
    assert r.returncode != 0
    assert "close remote: Failure" in r.stderr, r.stderr
    assert server.events("quota_refused", user=USER, files=False)
    assert usage(server)[:2] == (0, 0)
    assert staging(server) == []


def test_a_users_own_quota_in_the_users_file_goes_first(dropvault, tmp_path):
    server = dropvault(users={USER: PASSWORD, "bob": "bob-Pw-99817"}, limits_quota_bytes="100KiB")
    r = cli(server, "user", "set-quota", USER, "--bytes", "1MiB", "--files", "2")
    assert r.returncode == 0, r.stderr
    assert "quota of alice: 1048576 bytes, 2 files" in r.stdout
    assert "quota_bytes" in (server.data_dir / "users.toml").read_text()
    # alice may store 500 KB (her own limit), bob may not (the server's).
    assert curl_put(server, tmp_path, "a.bin", payload(500_000)).returncode == 0
    r = curl("--user", "bob:bob-Pw-99817", "-T", str(tmp_path / "src-a.bin"),
             ftp_url(server, "/a.bin"))
    assert r.returncode != 0
    assert usage(server, "bob")[:2] == (0, 0)
    assert usage(server) == (500_000, 1, "1048576 bytes, 2 files")
    # --clear: back to the server's.
    r = cli(server, "user", "set-quota", USER, "--clear")
    assert r.returncode == 0, r.stderr
    assert "quota of alice: 102400 bytes, no limit on files" in r.stdout
    r = curl_put(server, tmp_path, "b.bin", payload(1000))
    assert r.returncode != 0 and "< 552" in r.stderr, r.stderr
