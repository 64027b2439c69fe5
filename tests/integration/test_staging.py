"""Staging files under load and abuse (issue 12, items 3 and 5): two
sessions racing to upload one path while a scanner rejects one of them,
APPE's re-seal of a committed file (after the 150, stopped by ABOR, leaving
no copy), the per-user bound on staging bytes, and a resume that sends
nothing."""

from __future__ import annotations

import ftplib
import json
import threading


from dvclients import (SEGMENT, ftp_plain, interrupted_upload, payload, raw, retr, stor)

MIB = 1024 * 1024


def staging(server) -> list:
    return sorted((server.data_dir / "files" / ".staging").iterdir())


def reject_script(folder, marker: str):
    path = folder / "reject.sh"
    path.write_text(f"""#!/bin/sh
if grep -q '{marker}'; then
    echo "found {marker}" >&2
    exit 3
fi
exit 0
""")
    path.chmod(0o755)
    return path


def stor_refused(ftp: ftplib.FTP, cmd: str, data: bytes, rest: int | None = None) -> str:
    """Sends `data` for `cmd` (the server may stop reading part-way) and
    returns the final reply's text."""
    conn = ftp.transfercmd(cmd, rest)
    try:
        conn.sendall(data)
    except OSError:
        pass
    conn.close()
    try:
        return ftp.voidresp()
    except (ftplib.error_perm, ftplib.error_temp) as e:
        return str(e)


def test_two_sessions_racing_on_one_path_never_leave_a_bad_file(dropvault, hook_dir):
    hook = reject_script(hook_dir, "REJECT-THIS-UPLOAD")
    server = dropvault(scan_command=json.dumps([str(hook)]))
    goods = [payload(150_000 + 4099 * i) for i in range(5)]
    bad = payload(170_000) + b"REJECT-THIS-UPLOAD"
    rounds = 100
    problems: list[str] = []
    outcomes = {"good": 0, "rejected": 0, "busy": 0}
    done = threading.Event()

    def uploader(kind: str) -> None:
        with ftp_plain(server) as ftp:
            for i in range(rounds):
                data = goods[i % len(goods)] if kind == "good" else bad
                try:
                    stor(ftp, "same.bin", data)
                    outcomes["good"] += 1
                    if kind != "good":
                        problems.append("the rejected content was committed")
                except ftplib.error_temp as e:
                    if str(e).startswith("450"):
                        outcomes["busy"] += 1
                    else:
                        problems.append(f"{kind}: {e}")
                except ftplib.error_perm as e:
                    if kind == "bad" and str(e).startswith("550 Upload rejected"):
                        outcomes["rejected"] += 1
                    else:
                        problems.append(f"{kind}: {e}")

    def checker() -> None:
        with ftp_plain(server) as ftp:
            while not done.is_set():
                try:
                    got = retr(ftp, "same.bin")
                except ftplib.error_perm as e:
                    if not str(e).startswith("550 No such file"):
                        problems.append(f"RETR: {e}")
                    continue
                except ftplib.error_temp as e:
                    problems.append(f"RETR: {e}")
                    continue
                if got not in goods:
                    problems.append(f"RETR gave {len(got)} bytes that no clean upload sent")

    threads = [threading.Thread(target=uploader, args=(k,)) for k in ("good", "bad")]
    watch = threading.Thread(target=checker)
    for t in threads + [watch]:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watch.join()
    assert problems == [], problems[:10]
    assert outcomes["good"] >= 1 and outcomes["rejected"] >= 1, outcomes
    with ftp_plain(server) as ftp:
        assert retr(ftp, "same.bin") in goods
        assert ftp.nlst() == ["same.bin"]
    assert staging(server) == []


def test_an_appe_answers_150_at_once_and_abor_leaves_no_staging_copy(server):
    data = payload(16 * MIB)
    with ftp_plain(server) as ftp:
        stor(ftp, "big.bin", data)
    r = raw(server, login=True)
    try:
        assert r.cmd("TYPE I")[0] == 200
        assert r.cmd("PASV")[0] == 227
        code, text = r.cmd("APPE big.bin")
        assert code == 150, text
        # The control connection is served while the re-seal runs; ABOR
        # stops it, and the session answers once the upload let go.
        code, text = r.cmd("ABOR")
        assert code == 426, text
        assert r.reply()[0] == 226
        assert staging(server) == []
    finally:
        r.close()
    with ftp_plain(server) as ftp:
        assert ftp.size("big.bin") == len(data)
        assert retr(ftp, "big.bin") == data


def test_staging_bytes_are_bounded_per_user(dropvault):
    server = dropvault(storage_max_staging_bytes_per_user="3MiB")
    with ftp_plain(server) as ftp:
        ftp.voidcmd("TYPE I")
        # Too large by itself: refused part-way, nothing kept.
        reply = stor_refused(ftp, "STOR big.bin", payload(6 * MIB))
        assert reply.startswith("552"), reply
        assert ftp.nlst() == [] and staging(server) == []
        data = payload(2 * MIB)
        stor(ftp, "two.bin", data)
        # APPE re-seals 2 MiB into staging, then the new bytes pass 3 MiB.
        reply = stor_refused(ftp, "APPE two.bin", payload(2 * MIB))
        assert reply.startswith("552"), reply
        assert staging(server) == []
        assert retr(ftp, "two.bin") == data
        # Within the bound, an APPE works.
        stor(ftp, "two.bin", b"tail", cmd="APPE")
        assert retr(ftp, "two.bin") == data + b"tail"
    assert staging(server) == []


def test_a_resume_with_no_new_bytes_is_refused_and_stays_resumable(server):
    data = payload(60 * SEGMENT + 1234)
    point = interrupted_upload(server, "r.bin", data)
    with ftp_plain(server) as ftp:
        ftp.voidcmd("TYPE I")
        reply = stor_refused(ftp, "STOR r.bin", b"", rest=point)
        assert reply.startswith("554"), reply
        assert ftp.nlst() == []
        assert ftp.size("r.bin") == point
        stor(ftp, "r.bin", data[point:], rest=point)
        assert retr(ftp, "r.bin") == data
    assert staging(server) == []
