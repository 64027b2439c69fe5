"""rclone (Debian's package, Go's crypto/tls), as a new user would set it up:
explicit FTPS, certificate not checked, its default 4 parallel transfers.
Its control connections share one TLS session cache, so a data connection
often presents a session issued to a sibling control connection; and it
keeps modification times with MFMT."""

import os

import pytest

from dvclients import USER, mlsd, payload, rclone, ftp_plain

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

# A tree of 44 files in nested folders, names with spaces and UTF-8.
FOLDERS = ["", "a", "a/b c", "a/b c/ünïcødé", "dépôt", "dépôt/日本語 folder"]


def make_tree(root):
    files = {}
    for i in range(44):
        folder = FOLDERS[i % len(FOLDERS)]
        name = f"{folder}/file {i} ü.bin".lstrip("/")
        size = (0, 1, 4000, 65536, 65537, 300_000)[i % 6] + i
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(size))
        # Times rclone must carry over: whole seconds, some years back.
        when = 1_600_000_000 + i * 86_400 + 7
        os.utime(path, (when, when))
        files[name] = (size, when)
    return files


def test_rclone_copies_a_tree_up_and_back_over_ftps(server, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    conf = tmp_path / "rclone"
    up = rclone(server, "copy", str(src), "dv:tree", config_dir=conf)
    assert up.returncode == 0, up.stderr
    # No file failed, none was retried, and times were kept.
    assert "ERROR" not in up.stderr, up.stderr
    assert "SetModTime" not in up.stderr, up.stderr
    check = rclone(server, "check", str(src), "dv:tree", config_dir=conf)
    assert check.returncode == 0, check.stderr
    assert f"{len(files)} matching files" in check.stderr, check.stderr

    # `rclone lsl` shows the source's times, and so does MLSD.
    lsl = rclone(server, "lsl", "dv:tree", config_dir=conf)
    assert lsl.returncode == 0, lsl.stderr
    listed = {}
    for line in lsl.stdout.splitlines():
        size, day, clock, name = line.split(None, 3)
        listed[name] = (int(size), f"{day} {clock[:8]}")
    import datetime
    for name, (size, when) in files.items():
        utc = datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
        assert listed[name] == (size, utc), name
    with ftp_plain(server) as ftp:
        facts = mlsd(ftp, "/tree/a")
        when = files["a/file 1 ü.bin"][1]
        stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        assert facts["file 1 ü.bin"]["modify"] == stamp.strftime("%Y%m%d%H%M%S")

    back = tmp_path / "back"
    down = rclone(server, "copy", "dv:tree", str(back), config_dir=conf)
    assert down.returncode == 0 and "ERROR" not in down.stderr, down.stderr
    for name, (size, when) in files.items():
        got = back / name
        assert got.read_bytes() == (src / name).read_bytes(), name
        assert int(got.stat().st_mtime) == when, name
    check = rclone(server, "check", str(back), "dv:tree", config_dir=conf)
    assert check.returncode == 0, check.stderr
    # Every data connection resumed a session of this login: none refused.
    assert server.events("data_tls_refused") == []
    assert len(server.events("upload", user=USER)) == len(files)


def test_rclone_over_plain_ftp(server, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    conf = tmp_path / "rclone"
    up = rclone(server, "copy", str(src), "dv:plain", tls=False, config_dir=conf)
    assert up.returncode == 0 and "ERROR" not in up.stderr, up.stderr
    check = rclone(server, "check", str(src), "dv:plain", tls=False, config_dir=conf)
    assert check.returncode == 0, check.stderr
    assert f"{len(files)} matching files" in check.stderr, check.stderr
