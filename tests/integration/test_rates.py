"""Bandwidth limits (issue 16 §3): `[limits]` upload/download rates per
session, per user and for the whole server. Transfers under every limit at
once complete and read back byte-exact over FTP (plain and FTPS, two
sessions of one user at a time) and SFTP (paramiko and OpenSSH's sftp);
bad rates stop the start with the key named. How close a limited transfer
comes to its rate is measured in bench/rates, not here: no test times
anything."""

from __future__ import annotations

import threading

import pytest

from dvclients import (PASSWORD, USER, ftp_plain, ftp_tls, paramiko_sftp, payload, retr,
                       run_cli, sftp_batch, ssh_keygen, stor)

MIB = 1024 * 1024

# Every limit on, low enough that the buckets hold transfers back, high
# enough that the tests stay short: 3 MiB + 1 per transfer, a 1 MiB burst.
LIMITS = {
    "limits_upload_rate": "8MiB",
    "limits_download_rate": "8MiB",
    "limits_user_upload_rate": "12MiB",
    "limits_user_download_rate": "12MiB",
    "limits_total_upload_rate": "16MiB",
    "limits_total_download_rate": "16MiB",
}
SIZE = 3 * MIB + 1


@pytest.fixture
def limited(dropvault):
    return dropvault(**LIMITS)


def ftp_round_trip(server, name: str, data: bytes, secure: bool) -> None:
    ftp = ftp_tls(server) if secure else ftp_plain(server)
    try:
        assert stor(ftp, name, data).startswith("226")
        assert retr(ftp, name) == data
    finally:
        ftp.quit()


def test_limited_ftp_transfers_complete_byte_exact(limited):
    """Two sessions of alice (plain and FTPS) at once, each upload and
    download paced by its session's, alice's and the server's buckets."""
    files = {"plain.bin": (payload(SIZE), False), "tls.bin": (payload(SIZE + 7), True)}
    errors: list[BaseException] = []

    def run(name, data, secure):
        try:
            ftp_round_trip(limited, name, data, secure)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n, d, s)) for n, (d, s) in files.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "an FTP transfer did not finish"
    assert not errors, errors
    # A third session reads both back, and the server recorded every byte.
    ftp = ftp_plain(limited)
    try:
        for name, (data, _) in files.items():
            assert retr(ftp, name) == data
    finally:
        ftp.quit()
    uploads = {e["path"]: e["size"] for e in limited.wait_for_event("upload", count=2)}
    assert uploads == {f"/{n}": len(d) for n, (d, _) in files.items()}


def test_limited_sftp_transfers_complete_byte_exact(limited, tmp_path):
    """paramiko (password) and OpenSSH's sftp (key), upload and download."""
    data = payload(SIZE)
    client, sftp = paramiko_sftp(limited.host, limited.sftp_port, USER, PASSWORD, timeout=60)
    try:
        with sftp.open("paramiko.bin", "wb") as f:
            f.write(data)
        with sftp.open("paramiko.bin", "rb") as f:
            f.prefetch()
            assert f.read() == data
    finally:
        client.close()

    key = ssh_keygen(tmp_path / "ssh")
    r = run_cli(["user", "key", "add", USER, "--file", f"{key}.pub"], limited.data_dir)
    assert r.returncode == 0, r.stderr
    src, back = tmp_path / "up.bin", tmp_path / "back.bin"
    src.write_bytes(payload(SIZE + 3))
    r = sftp_batch(limited.host, limited.sftp_port, USER, key,
                   [f"put {src} openssh.bin", f"get openssh.bin {back}"])
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("key,value", [
    ("upload_rate", "10MB"),
    ("download_rate", "1.5MiB"),
    ("user_upload_rate", "fast"),
    ("user_download_rate", "-1"),
    ("total_upload_rate", "99999999999TiB"),
    ("total_download_rate", "10 Mbit"),
])
def test_a_bad_rate_stops_the_start_and_names_the_key(tmp_path, key, value):
    """From the environment and from a config file alike."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    r = run_cli(["serve"], data_dir, extra_env={f"DROPVAULT_LIMITS_{key.upper()}": value})
    assert r.returncode != 0
    assert f"limits.{key}" in r.stderr, r.stderr
    config = tmp_path / "dropvault.toml"
    config.write_text(f'[limits]\n{key} = "{value}"\n')
    r = run_cli(["serve"], data_dir, extra_env={"DROPVAULT_CONFIG": str(config)})
    assert r.returncode != 0
    assert f"limits.{key}" in r.stderr, r.stderr


def test_zero_rates_are_no_limits(dropvault):
    """"0" everywhere (the default, spelt out) serves as usual."""
    server = dropvault(**{k: "0" for k in LIMITS})
    data = payload(MIB + 5)
    ftp = ftp_plain(server)
    try:
        stor(ftp, "free.bin", data)
        assert retr(ftp, "free.bin") == data
    finally:
        ftp.quit()
