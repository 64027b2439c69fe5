"""SFTP downloads larger than the client's SSH window, with the pipelining
real clients use: OpenSSH's sftp (64 reads of 32 KiB in flight, a 2 MiB
window) and paramiko's getfo (which asks for the whole file at once).

The session must keep reading requests while a reply waits for window:
the SSH layer takes the client's window updates only while the channel's
incoming data is taken, so a session that stopped reading when its
in-flight bound was reached hung for good (first seen after ~30 MiB)."""

import pathlib

import pytest

from dvclients import PASSWORD, USER, paramiko_sftp, payload, run_cli, sftp_batch, ssh_keygen

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

SIZE = 48 * 1024 * 1024 + 5


def test_large_downloads_with_deep_pipelines(dropvault, tmp_path: pathlib.Path):
    server = dropvault()
    key = ssh_keygen(tmp_path / "keys")
    r = run_cli(["user", "key", "add", USER, "--file", f"{key}.pub"], server.data_dir)
    assert r.returncode == 0, r.stderr
    data = payload(SIZE)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    r = sftp_batch(server.host, server.sftp_port, USER, key, [f"put {src} /big.bin"])
    assert r.returncode == 0, r.stderr

    for extra in ([], ["-R", "256"]):
        out = tmp_path / f"openssh{len(extra)}.bin"
        r = sftp_batch(server.host, server.sftp_port, USER, key,
                       [f"get /big.bin {out}"], extra=extra)
        assert r.returncode == 0, (extra, r.stderr)
        assert out.read_bytes() == data, extra

    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, password=PASSWORD)
    try:
        out = tmp_path / "paramiko.bin"
        with open(out, "wb") as f:
            sftp.getfo("/big.bin", f)
        assert out.read_bytes() == data
    finally:
        client.close()
