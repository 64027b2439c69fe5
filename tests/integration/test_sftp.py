"""SFTP end to end (issue 13): `dropvault serve`'s SSH front end against
real clients. OpenSSH's sftp with a key added by `dropvault user key add`
(every batch command, 5 MiB + 1 and empty files, reput / reget after a
client that was killed mid-transfer), paramiko with a password (attributes,
times, refused random writes, renames, links), curl (libssh2), lftp and
rclone; and the audit events of SFTP sessions. Refusals and limits are in
test_sftp_defence.py. Every uploaded file carries the plaintext marker,
which the fixture looks for in the data folder at teardown."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

import pytest

from dvclients import (PASSWORD, USER, curl_sftp, lftp_sftp, paramiko_sftp, payload,
                       rclone_sftp, rclone_sftp_remote, run_cli, sftp_batch, ssh_keygen,
                       ssh_options, tree_files, wait_until)

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

BIG = 5 * 1024 * 1024 + 1


def add_key(server, key: pathlib.Path, user: str = USER) -> None:
    r = run_cli(["user", "key", "add", user, "--file", f"{key}.pub"], server.data_dir)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def keyed(dropvault, tmp_path):
    """(server, private key): a server whose alice has an ed25519 key on
    file, added with `dropvault user key add` while it runs."""
    server = dropvault()
    key = ssh_keygen(tmp_path / "ssh")
    add_key(server, key)
    return server, key


def batch(server, key, commands, **kw) -> subprocess.CompletedProcess:
    return sftp_batch(server.host, server.sftp_port, USER, key, commands, **kw)


def staged_size(server, name: str) -> int:
    """What a second SFTP session's STAT says of `name` (an upload in
    progress or interrupted: the size it can be resumed from), 0 if none."""
    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD)
    try:
        return sftp.stat(name).st_size or 0
    except OSError:
        return 0
    finally:
        client.close()


def read_back(server, name: str) -> bytes:
    """`name`'s content, read with paramiko's getfo (its prefetch asks for
    every piece of the file at once)."""
    import io

    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD)
    try:
        out = io.BytesIO()
        sftp.getfo(name, out)
        return out.getvalue()
    finally:
        client.close()


def paramiko_session(server):
    return paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD)


# -- OpenSSH sftp with a key ---------------------------------------------------


def test_openssh_sftp_every_batch_command_with_a_key(keyed, tmp_path):
    server, key = keyed
    big = tmp_path / "big.bin"
    big.write_bytes(payload(BIG))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    r = batch(server, key, [
        "mkdir box",
        f"put {big} box/big.bin",
        f"put {empty} box/empty.bin",
        "ls -l box",
        f"get box/big.bin {out}/big.bin",
        f"get box/empty.bin {out}/empty.bin",
        "rename box/big.bin box/renamed.bin",
        "ls -l box",
    ])
    assert r.returncode == 0, r.stdout + r.stderr
    first, second = r.stdout.split("sftp> ls -l box")[1:]
    assert "big.bin" in first and str(BIG) in first, r.stdout
    assert "empty.bin" in first, r.stdout
    assert "renamed.bin" in second and "big.bin" not in second.replace("renamed.bin", ""), r.stdout
    assert (out / "big.bin").read_bytes() == big.read_bytes()
    assert (out / "empty.bin").read_bytes() == b""
    assert server.events("login", protocol="sftp", user=USER), "no sftp login event"

    r = batch(server, key, [
        f"get box/renamed.bin {out}/again.bin",
        "rm box/renamed.bin",
        "rm box/empty.bin",
        "rmdir box",
        "ls -l",
    ])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "again.bin").read_bytes() == big.read_bytes()
    assert "box" not in r.stdout.split("sftp> ls -l")[1], r.stdout
    # Gone for good: a get of it fails.
    r = batch(server, key, [f"get box/renamed.bin {out}/none.bin"])
    assert r.returncode != 0
    assert not (out / "none.bin").exists()


def _slow_client(cmd: list[str], commands: str) -> subprocess.Popen:
    """A client process in a session of its own (sftp and the ssh it runs
    are killed together, as by a crash)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(commands.encode())
    proc.stdin.close()
    return proc


def _crash(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _sftp_cmd(server, key, limit_kbit: int) -> list[str]:
    return ["sftp", "-b", "-", *ssh_options(key.parent / "known_hosts", key),
            "-l", str(limit_kbit), "-P", str(server.sftp_port), f"{USER}@{server.host}"]


def test_upload_killed_mid_transfer_resumes_with_reput(keyed, tmp_path):
    server, key = keyed
    src = tmp_path / "huge.bin"
    data = payload(64 * 1024 * 1024)
    src.write_bytes(data)
    # 16 Mbit/s: the transfer is still going when it is killed.
    proc = _slow_client(_sftp_cmd(server, key, 16384), f"put {src} huge.bin\n")
    try:
        reached = wait_until(lambda: proc.poll() is None
                             and staged_size(server, "huge.bin") >= 2 * 1024 * 1024,
                             timeout=90, interval=0.5)
    finally:
        _crash(proc)
    assert reached, "the server never staged 2 MiB of the upload"
    assert server.wait_for_event("logout", protocol="sftp", count=2), "killed session never ended"
    # Nothing under the name yet, only a resumable upload.
    point = staged_size(server, "huge.bin")
    assert 0 < point < len(data), point
    assert not server.events("upload", path="/huge.bin")

    r = batch(server, key, [f"reput {src} huge.bin"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_back(server, "huge.bin") == data
    uploads = server.events("upload", path="/huge.bin", protocol="sftp")
    assert len(uploads) == 1 and int(uploads[0]["size"]) == len(data), uploads


def test_download_killed_mid_transfer_resumes_with_reget(keyed, tmp_path):
    server, key = keyed
    src = tmp_path / "src.bin"
    data = payload(24 * 1024 * 1024 + 7)
    src.write_bytes(data)
    r = batch(server, key, [f"put {src} file.bin"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "part.bin"
    proc = _slow_client(_sftp_cmd(server, key, 16384), f"get file.bin {out}\n")
    try:
        reached = wait_until(lambda: proc.poll() is None and out.exists()
                             and out.stat().st_size >= 1024 * 1024, timeout=90, interval=0.2)
    finally:
        _crash(proc)
    assert reached, "the download never got 1 MiB in"
    assert out.stat().st_size < len(data)
    r = batch(server, key, [f"reget file.bin {out}"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes() == data


def test_reput_continues_an_upload_cut_short(keyed, tmp_path):
    # An upload that stopped part way (the client sent only the first
    # 3 MiB of the file, then its connection went): `reput` sends the rest.
    # On S3 what is kept is whole parts (8 MiB): the cut comes later.
    server, key = keyed
    cut = (3 if server.backend == "local" else 20) * 1024 * 1024
    data = payload(cut + 3 * 1024 * 1024 + 3)
    client, sftp = paramiko_session(server)
    f = sftp.open("cut.bin", "wb")
    f.set_pipelined(True)
    for i in range(0, cut, 32768):
        f.write(data[i:i + 32768])
    f.flush()
    # Dropped without CLOSE: the transport goes away under the handle.
    client.get_transport().sock.close()
    client.close()
    assert server.wait_for_event("logout", protocol="sftp"), "cut session never ended"
    point = staged_size(server, "cut.bin")
    assert 0 < point <= cut, point
    src = tmp_path / "cut.bin"
    src.write_bytes(data)
    r = batch(server, key, [f"reput {src} cut.bin"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_back(server, "cut.bin") == data


def test_pipelined_reads_do_not_stall(server):
    import io

    data = payload(6 * 1024 * 1024 + 3)
    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD, timeout=20)
    try:
        sftp.putfo(io.BytesIO(data), "many.bin")
        with sftp.open("many.bin", "rb") as f:
            f.prefetch()
            assert f.read() == data
    finally:
        client.close()


# -- paramiko with a password ------------------------------------------------------


def test_paramiko_put_get_stat_listdir_and_times(server):
    import io

    client, sftp = paramiko_session(server)
    try:
        data = payload(300_001)
        before = time.time()
        sftp.mkdir("docs")
        attrs = sftp.putfo(io.BytesIO(data), "docs/a.bin")
        assert attrs.st_size == len(data)
        sftp.putfo(io.BytesIO(b""), "docs/empty.bin")
        st = sftp.stat("docs/a.bin")
        assert st.st_size == len(data)
        assert before - 5 <= st.st_mtime <= time.time() + 5
        back = io.BytesIO()
        sftp.getfo("docs/a.bin", back)
        assert back.getvalue() == data
        listed = {a.filename: a for a in sftp.listdir_attr("docs")}
        assert set(listed) == {"a.bin", "empty.bin"}
        assert listed["a.bin"].st_size == len(data)
        assert listed["empty.bin"].st_size == 0
        import stat as st_mod
        assert st_mod.S_ISREG(listed["a.bin"].st_mode)
        assert st_mod.S_ISDIR(sftp.stat("docs").st_mode)

        when = 1_500_000_000
        sftp.utime("docs/a.bin", (when, when))
        assert sftp.stat("docs/a.bin").st_mtime == when
        assert {a.filename: a.st_mtime for a in sftp.listdir_attr("docs")}["a.bin"] == when
        # The time set survives a fresh session, and the content is intact.
        client.close()
        client, sftp = paramiko_session(server)
        assert sftp.stat("docs/a.bin").st_mtime == when
        with sftp.open("docs/a.bin", "rb") as f:
            f.seek(123_456)
            assert f.read(1000) == data[123_456:124_456]
    finally:
        client.close()


def test_a_write_at_a_wrong_offset_never_commits(server):
    import io

    import paramiko

    client, sftp = paramiko_session(server)
    try:
        first = payload(40_000)
        f = sftp.open("holey.bin", "wb")
        f.write(first)
        f.flush()
        f.seek(50 * 1024 * 1024)
        # A write further ahead than pipelining explains is refused at
        # once, not only at the CLOSE (paramiko's own close() ignores a
        # failed CLOSE, so its user would never hear of it).
        with pytest.raises((IOError, paramiko.SFTPError)):
            f.write(b"garbage after a hole" * 10)
            f.flush()
        f._closed = True
        with pytest.raises((IOError, paramiko.SFTPError)):
            sftp._request(paramiko.sftp.CMD_CLOSE, f.handle)
        # Nothing was committed under the name: no file, no upload event. (A
        # resumable part of what came before the hole may be reported.)
        try:
            assert sftp.stat("holey.bin").st_size <= len(first)
        except FileNotFoundError:
            pass
        assert "holey.bin" not in sftp.listdir(".")
        assert not server.events("upload", path="/holey.bin")

        # Writing behind what was written is refused too, and the file
        # that was there before stays as it was.
        sftp.putfo(io.BytesIO(first), "kept.bin")
        f = sftp.open("kept.bin", "wb")
        f.write(payload(70_000))
        f.flush()
        f.seek(10)
        with pytest.raises((IOError, paramiko.SFTPError)):
            try:
                f.write(b"overwrite")
                f.flush()
            finally:
                f._closed = True
                sftp._request(paramiko.sftp.CMD_CLOSE, f.handle)
        with sftp.open("kept.bin", "rb") as f:
            assert f.read() == first
    finally:
        client.close()


def test_renames_v3_refuses_to_replace_posix_rename_replaces(server):
    import io

    client, sftp = paramiko_session(server)
    try:
        a, b = payload(1000), payload(2000)
        sftp.putfo(io.BytesIO(a), "a.bin")
        sftp.putfo(io.BytesIO(b), "b.bin")
        with pytest.raises(IOError):
            sftp.rename("a.bin", "b.bin")
        with sftp.open("b.bin", "rb") as f:
            assert f.read() == b
        sftp.posix_rename("a.bin", "b.bin")
        assert sorted(sftp.listdir(".")) == ["b.bin"]
        with sftp.open("b.bin", "rb") as f:
            assert f.read() == a
        # A plain rename to a free name works.
        sftp.rename("b.bin", "c.bin")
        assert sorted(sftp.listdir(".")) == ["c.bin"]
    finally:
        client.close()
    assert server.wait_for_event("rename", protocol="sftp", count=2)


def test_links_are_refused(server):
    import io

    client, sftp = paramiko_session(server)
    try:
        sftp.putfo(io.BytesIO(payload(100)), "target.bin")
        with pytest.raises(IOError):
            sftp.symlink("target.bin", "link.bin")
        with pytest.raises(IOError):
            sftp.readlink("target.bin")
        assert sorted(sftp.listdir(".")) == ["target.bin"]
    finally:
        client.close()


# -- curl, lftp, rclone -----------------------------------------------------------


def test_curl_sftp_upload_and_download(server, tmp_path):
    src = tmp_path / "c.bin"
    src.write_bytes(payload(BIG))
    r = curl_sftp(server.host, server.sftp_port, "/c.bin", "-T", str(src),
                  host_sha256=server.sftp_host_key)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "c.out"
    r = curl_sftp(server.host, server.sftp_port, "/c.bin", "-o", str(out),
                  host_sha256=server.sftp_host_key)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()
    r = curl_sftp(server.host, server.sftp_port, "/", host_sha256=server.sftp_host_key)
    assert r.returncode == 0 and "c.bin" in r.stdout, r.stdout + r.stderr
    # A wrong host key is caught by the client.
    r = curl_sftp(server.host, server.sftp_port, "/c.bin", "-o", str(tmp_path / "x"),
                  host_sha256="SHA256:" + "A" * 43)
    assert r.returncode != 0


def make_tree(root: pathlib.Path) -> dict[str, bytes]:
    folders = ["", "a", "a/b c", "a/b c/ünïcødé", "dépôt"]
    for i in range(20):
        folder = folders[i % len(folders)]
        path = root / folder / f"file {i} ü.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload((0, 1, 4000, 65536, 65537, 300_000)[i % 6] + i))
        when = 1_600_000_000 + i * 86_400
        os.utime(path, (when, when))
    return tree_files(root)


def test_lftp_mirror_up_and_back(server, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    r = lftp_sftp(server.host, server.sftp_port, f"mirror -R {src} tree")
    assert r.returncode == 0, r.stdout + r.stderr
    back = tmp_path / "back"
    r = lftp_sftp(server.host, server.sftp_port, f"mirror tree {back}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_files(back) == files


def test_rclone_copy_up_and_back_and_check(server, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    remote = rclone_sftp_remote(server.host, server.sftp_port)
    conf = tmp_path / "rclone"
    up = rclone_sftp(remote, "copy", str(src), remote + "tree", config_dir=conf)
    assert up.returncode == 0, up.stderr
    assert "ERROR" not in up.stderr, up.stderr
    check = rclone_sftp(remote, "check", str(src), remote + "tree", config_dir=conf)
    assert check.returncode == 0, check.stderr
    assert f"{len(files)} matching files" in check.stderr, check.stderr
    back = tmp_path / "back"
    down = rclone_sftp(remote, "copy", remote + "tree", str(back), config_dir=conf)
    assert down.returncode == 0, down.stderr
    assert tree_files(back) == files
    # Times were kept both ways.
    for name in files:
        assert (back / name).stat().st_mtime == (src / name).stat().st_mtime, name


# -- events ----------------------------------------------------------------------


def test_sftp_sessions_are_audited_with_their_protocol(server):
    import io

    data = payload(70_000)
    client, sftp = paramiko_session(server)
    try:
        sftp.mkdir("box")
        sftp.putfo(io.BytesIO(data), "box/a.bin")
        assert sftp.open("box/a.bin", "rb").read() == data
        sftp.rename("box/a.bin", "box/b.bin")
        sftp.remove("box/b.bin")
        sftp.rmdir("box")
    finally:
        client.close()
    expect = {
        "login": {"user": USER},
        "mkdir": {"path": "/box"},
        "upload": {"path": "/box/a.bin", "size": len(data)},
        "download": {"path": "/box/a.bin"},
        "rename": {"from": "/box/a.bin", "to": "/box/b.bin"},
        "delete": {"path": "/box/b.bin"},
        "rmdir": {"path": "/box"},
        "logout": {"user": USER},
    }
    for name, fields in expect.items():
        found = server.wait_for_event(name, protocol="sftp", **fields)
        assert found, f"no {name} event with protocol sftp and {fields}"
        assert all(e.get("user") == USER for e in found), found
    assert not server.events(protocol="ftp")
