"""`dropvault user add|list|passwd|delete` for the `file` account backend,
applied to a running server."""

import ftplib

import pytest

from dvclients import PASSWORD, USER, ftp_plain, payload, retr, run_cli, stor


def test_user_management_applies_to_the_running_server(server):
    data_dir = server.data_dir
    r = run_cli(["user", "add", "bob", "--password-stdin"], data_dir, stdin="bob-First-1\n")
    assert r.returncode == 0, r.stderr
    r = run_cli(["user", "list"], data_dir)
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["alice", "bob"], r
    with ftp_plain(server, user="bob", password="bob-First-1") as ftp:
        stor(ftp, "bobs.bin", payload(3000))

    r = run_cli(["user", "passwd", "bob", "--password-stdin"], data_dir, stdin="bob-Second-2\n")
    assert r.returncode == 0, r.stderr
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp_plain(server, user="bob", password="bob-First-1")
    with ftp_plain(server, user="bob", password="bob-Second-2") as ftp:
        assert ftp.size("bobs.bin") == 3000

    r = run_cli(["user", "delete", "bob"], data_dir)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp_plain(server, user="bob", password="bob-Second-2")
    # Files stay (deleting the key file is what shreds them).
    assert (server.user_dir("bob") / "bobs.bin").is_file()
    assert run_cli(["user", "list"], data_dir).stdout.split() == [USER]
    with ftp_plain(server) as ftp:
        stor(ftp, "still.bin", b"ok")
        assert retr(ftp, "still.bin") == b"ok"


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "", "x" * 65, "sp ace"])
def test_user_add_refuses_bad_names(tmp_path, name):
    r = run_cli(["user", "add", name, "--password-stdin"], tmp_path / "data", stdin="pw-12345\n")
    assert r.returncode != 0, r.stdout


def test_user_add_refuses_duplicates_and_empty_passwords(tmp_path):
    data_dir = tmp_path / "data"
    assert run_cli(["user", "add", USER, "--password-stdin"], data_dir,
                   stdin=PASSWORD + "\n").returncode == 0
    assert run_cli(["user", "add", USER, "--password-stdin"], data_dir,
                   stdin="other-pw\n").returncode != 0
    assert run_cli(["user", "add", "carol", "--password-stdin"], data_dir,
                   stdin="\n").returncode != 0
    assert run_cli(["user", "list"], data_dir).stdout.split() == [USER]
    # The users file never holds a password in the clear.
    assert PASSWORD not in (data_dir / "users.toml").read_text()
