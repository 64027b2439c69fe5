"""Listings stream from storage instead of being built in memory, and stop
at ftp.max_listing_entries with a reply that says so (issue 12, item 8)."""

from __future__ import annotations

import ftplib
import os
import pathlib
import shutil
import signal

import pytest

from dvclients import PASSWORD, USER, curl, ftp_plain, ftp_url, lftp, payload, rclone, stor

ENTRIES = 100_000
PARALLEL = 10
# "Within a few MiB of idle": what 10 listings of 100 000 entries may add.
# Building each listing whole took well over 100 MiB for the ten.
RSS_SLACK_KIB = 8 * 1024


def fill(server, folder: str, count: int) -> pathlib.Path:
    """`folder` with `count` files: one real upload, then hard links to its
    sealed file (a listing only reads names and sizes)."""
    with ftp_plain(server) as ftp:
        ftp.mkd(folder)
        stor(ftp, f"{folder}/seed.bin", payload(100))
    path = server.user_dir() / folder
    seed = path / "seed.bin"
    for i in range(count - 1):
        name = path / f"file-{i:06d}.bin"
        if i % 50_000 == 0:  # file systems limit links per file (ext4: 65 000)
            shutil.copyfile(seed, name)
            source = name
        else:
            os.link(source, name)
    return path


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def read_some(conn, want: int) -> bytes:
    """At least `want` bytes from a data connection (fewer only at its end)."""
    got = b""
    while len(got) < want:
        block = conn.recv(want - len(got))
        if not block:
            break
        got += block
    return got


def test_parallel_listings_of_a_huge_folder_stay_within_a_few_mib(dropvault):
    server = dropvault()
    folder = fill(server, "many", ENTRIES)
    clients = [ftp_plain(server) for _ in range(PARALLEL)]
    try:
        for ftp in clients:
            ftp.cwd("many")
        idle = rss_kib(server.proc.pid)

        # Ten listings at once; the clients read a little of each and then
        # hold back, so each listing is in flight while the memory is read.
        conns = [ftp.transfercmd("LIST") for ftp in clients]
        received = [read_some(c, 4096) for c in conns]
        assert all(len(r) == 4096 for r in received)
        peak = idle
        for _ in range(8):
            peak = max(peak, rss_kib(server.proc.pid))
            received = [r + read_some(c, 1024) for r, c in zip(received, conns)]
            peak = max(peak, rss_kib(server.proc.pid))
        assert peak - idle < RSS_SLACK_KIB, (
            f"RSS grew by {peak - idle} KiB during {PARALLEL} listings (idle {idle} KiB)")

        # Half are aborted mid-way; the session carries on.
        half = PARALLEL // 2
        for ftp, conn in zip(clients[:half], conns[:half]):
            assert ftp.abort().startswith("426")
            assert ftp.voidresp().startswith("226")
            conn.close()
            assert ftp.voidcmd("NOOP").startswith("200")
        # The others read to the end: every entry once, and a 226.
        for ftp, conn, start in zip(clients[half:], conns[half:], received[half:]):
            rest = start + read_some(conn, 1 << 30)
            conn.close()
            assert ftp.voidresp().startswith("226")
            lines = rest.decode().splitlines()
            names = {line.split()[-1] for line in lines}
            assert len(lines) == ENTRIES and len(names) == ENTRIES
            assert all(line.startswith("-rw------- 1 alice alice        100 ") for line in lines)

        # A listing held up by its client does not hold up a shutdown: it
        # is cut when the drain grace period is over.
        conn = clients[0].transfercmd("LIST")
        assert len(read_some(conn, 4096)) == 4096
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert "drain grace period over" in server.log_text()
        conn.close()
    finally:
        for ftp in clients:
            ftp.close()
        # The links are copies of the one uploaded file; the marker scan at
        # teardown need not read them 100 000 times.
        for p in folder.iterdir():
            if p.name != "seed.bin":
                p.unlink()


def test_a_listing_stops_at_the_cap_and_says_so(dropvault, tmp_path):
    server = dropvault(ftp_max_listing_entries=5)
    fill(server, "seven", 7)
    fill(server, "five", 5)
    with ftp_plain(server) as ftp:
        # More than the cap: the first five, then 550 (not 226, so a
        # client does not take the listing for complete; not 4xx, which
        # clients retry).
        for cmd in ("LIST seven", "NLST seven", "MLSD seven"):
            lines: list[str] = []
            with pytest.raises(ftplib.error_perm, match="^550 Listing stopped after 5 entries"):
                ftp.retrlines(cmd, lines.append)
            entries = [line for line in lines if "type=cdir" not in line]
            assert len(entries) == 5, (cmd, lines)
            assert len(set(entries)) == 5
            assert ftp.voidcmd("NOOP").startswith("200")
        # Exactly the cap: complete.
        assert len(ftp.nlst("five")) == 5
        facts = [f for _, f in ftp.mlsd("five") if f["type"] == "file"]
        assert len(facts) == 5
        # STAT on the control connection: five lines, and the note in its
        # last line (a multi-line 213 must end with 213).
        stat = ftp.sendcmd("STAT seven").splitlines()
        assert stat[0] == "213-Status of seven:"
        assert len([line for line in stat if line.startswith(" -rw-------")]) == 5
        assert stat[-1].startswith("213 End of status. Listing stopped after 5 entries")
        stat = ftp.sendcmd("STAT five").splitlines()
        assert stat[-1] == "213 End of status"
        # A single file is one entry.
        assert ftp.nlst("five/seed.bin") == ["seed.bin"]

    # Real clients take the 550 for a failed listing, the full one for done:
    # curl, lftp, and rclone (whose sync would otherwise act on the missing
    # entries).
    url = ftp_url(server, "/seven/")
    r = curl("--user", f"{USER}:{PASSWORD}", url)
    assert r.returncode != 0, r
    assert len(r.stdout.splitlines()) == 5
    r = curl("--user", f"{USER}:{PASSWORD}", ftp_url(server, "/five/"))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5
    r = lftp(server, "cls -1 seven")
    assert r.returncode != 0 and "Listing stopped after 5 entries" in r.stderr, r
    r = lftp(server, "cls -1 five")
    assert r.returncode == 0 and len(r.stdout.split()) == 5, r
    once = ("--retries", "1", "--low-level-retries", "1")
    r = rclone(server, "lsf", "dv:seven", *once, tls=False, config_dir=tmp_path / "rclone")
    assert r.returncode != 0, r
    r = rclone(server, "lsf", "dv:five", *once, tls=False, config_dir=tmp_path / "rclone")
    assert r.returncode == 0 and len(r.stdout.split()) == 5, r
