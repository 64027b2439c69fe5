"""Once an upload reached its end of data, its commit finishes or fails on
its own: an ABOR or a vanished client during the commit (here: a scanner
that holds its verdict until the test lets it go) changes only the reply,
never the outcome, and the upload / upload_rejected event and log line are
always there."""

from __future__ import annotations

import ftplib
import json

import pytest

from dvclients import USER, ftp_plain, mlsd, payload, reset_ftp, retr, wait_until

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends


@pytest.fixture
def held(hook_dir):
    """A scan command that reads the upload, says it started deciding,
    then waits for the test's word: `release` accepts, `reject` rejects."""
    gate = hook_dir / "gate"
    gate.mkdir()
    gate.chmod(0o777)
    hook = hook_dir / "held.sh"
    hook.write_text(f"""#!/bin/sh
cat > /dev/null
touch {gate}/deciding
i=0
while [ ! -e {gate}/release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
if [ -e {gate}/reject ]; then echo "Held-Test-Finding" >&2; exit 3; fi
exit 0
""")
    hook.chmod(0o755)
    return gate, json.dumps([str(hook)])


def start_upload(server, name: str, data: bytes, gate) -> ftplib.FTP:
    """Sends the whole upload and closes its data connection; returns when
    the commit is under way (the scanner is deciding)."""
    ftp = ftp_plain(server)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(data)
    conn.close()
    assert wait_until(lambda: (gate / "deciding").exists()), "the commit never started"
    return ftp


def test_abor_during_the_commit_changes_only_the_reply(dropvault, held):
    gate, hook = held
    server = dropvault(scan_command=hook)
    data = payload(300_000)
    ftp = start_upload(server, "kept.bin", data, gate)
    ftp.putcmd("ABOR")
    (gate / "release").touch()
    # The upload's own reply first (it was committed), then ABOR's.
    first = ftp.getresp()
    assert first.startswith("226") and "300000 bytes received" in first, first
    second = ftp.getresp()
    assert second.startswith("226") and "ABOR" in second, second
    assert mlsd(ftp)["kept.bin"]["size"] == str(len(data))
    assert retr(ftp, "kept.bin") == data
    ftp.quit()
    uploads = server.wait_for_event("upload", path="/kept.bin")
    assert len(uploads) == 1 and uploads[0]["user"] == USER
    assert server.events("transfer_aborted") == []


def test_abor_during_a_rejected_commit_reports_the_rejection(dropvault, held):
    gate, hook = held
    server = dropvault(scan_command=hook)
    ftp = start_upload(server, "bad.bin", payload(100_000), gate)
    ftp.putcmd("ABOR")
    (gate / "reject").touch()
    (gate / "release").touch()
    with pytest.raises(ftplib.error_perm, match="^550.*Held-Test-Finding"):
        ftp.getresp()
    assert ftp.getresp().startswith("226")
    assert "bad.bin" not in mlsd(ftp)
    ftp.quit()
    assert server.wait_for_event("upload_rejected", path="/bad.bin")


@pytest.mark.parametrize("verdict", ["release", "reject"])
def test_a_client_gone_during_the_commit_loses_no_record(dropvault, held, verdict):
    gate, hook = held
    server = dropvault(scan_command=hook)
    data = payload(200_000)
    ftp = start_upload(server, "gone.bin", data, gate)
    peer = "%s:%d" % ftp.sock.getsockname()[:2]
    reset_ftp(ftp)
    if verdict == "reject":
        (gate / "reject").touch()
    (gate / "release").touch()
    event = "upload" if verdict == "release" else "upload_rejected"
    records = server.wait_for_event(event, path="/gone.bin")
    assert len(records) == 1 and records[0]["peer"] == peer, records
    assert server.wait_for_event("logout", peer=peer)
    with ftp_plain(server) as again:
        if verdict == "release":
            assert retr(again, "gone.bin") == data
        else:
            assert "gone.bin" not in mlsd(again)
    # The record comes before the session's logout.
    kinds = [r.get("event") for r in server.events() if r.get("peer") == peer]
    assert kinds.index(event) < kinds.index("logout"), kinds
