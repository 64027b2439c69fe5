"""Uploads pass a malware scan before they are committed: a real clamd
(tests/integration/clamd.py, with an EICAR signature database of its own)
over a unix socket and TCP, the on_error policy when clamd is down or its
size limit is passed, quarantine, a command hook, and event hooks (webhook
and command) that never hold up a transfer."""

from __future__ import annotations

import ftplib
import hashlib
import hmac
import http.server
import json
import threading
import time

import pytest

from clamd import EICAR, SIGNATURE, Clamd
from dvclients import USER, ftp_plain, payload, retr, run_cli, stor, wait_until

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends


def with_eicar(size: int, at: int) -> bytes:
    data = bytearray(payload(size))
    data[at:at + len(EICAR)] = EICAR
    return bytes(data)


def rejected(ftp: ftplib.FTP, name: str, data: bytes, **kw) -> str:
    with pytest.raises(ftplib.error_perm) as err:
        stor(ftp, name, data, **kw)
    return str(err.value)


def staging(server) -> list:
    return [p for p in (server.data_dir / "files" / ".staging").iterdir()]


@pytest.mark.local_only  # looks into the local storage folder
def test_clamd_rejects_eicar_anywhere_and_commits_clean_files(dropvault, clamd):
    server = dropvault(scan_clamd=clamd.unix)
    clean = payload(200_000)
    with ftp_plain(server) as ftp:
        reply = rejected(ftp, "eicar.com", EICAR)
        assert reply.startswith("550") and SIGNATURE in reply, reply
        # Across the first 64 KiB segment boundary of a larger file.
        across = with_eicar(300_000, 65536 - 30)
        reply = rejected(ftp, "big.bin", across)
        assert reply.startswith("550") and SIGNATURE in reply, reply
        stor(ftp, "clean.bin", clean)
        assert sorted(ftp.nlst()) == ["clean.bin"]
        assert retr(ftp, "clean.bin") == clean
    assert staging(server) == []
    events = server.wait_for_event("upload_rejected", count=2)
    by_path = {e["path"]: e for e in events}
    assert by_path["/eicar.com"]["size"] == len(EICAR)
    assert by_path["/big.bin"]["size"] == 300_000
    assert all(e["user"] == USER and SIGNATURE in e["signature"] for e in events), events


@pytest.mark.local_only  # looks into the local storage folder
def test_clamd_over_tcp_scans_the_whole_file_when_an_upload_continues(dropvault, clamd):
    server = dropvault(scan_clamd=clamd.tcp)
    # EICAR straddles offset 131072: each half alone is clean.
    data = with_eicar(400_000, 131072 - 30)
    with ftp_plain(server) as ftp:
        stor(ftp, "split.bin", data[:131072])
        assert ftp.size("split.bin") == 131072
        # Continuing at 131072 makes the whole file, which is read back
        # and scanned in full before it may replace the first part.
        reply = rejected(ftp, "split.bin", data[131072:], rest=131072)
        assert reply.startswith("550") and SIGNATURE in reply, reply
        assert retr(ftp, "split.bin") == data[:131072]
        # APPE of a clean tail is scanned whole too, and passes.
        stor(ftp, "split.bin", b"clean tail", cmd="APPE")
        assert retr(ftp, "split.bin") == data[:131072] + b"clean tail"
    assert staging(server) == []


def test_quarantine_keeps_rejected_uploads_sealed_for_operators(dropvault, clamd):
    server = dropvault(scan_clamd=clamd.unix, scan_quarantine="true")
    first, second = with_eicar(100_000, 70_000), with_eicar(5000, 0)
    with ftp_plain(server) as ftp:
        ftp.mkd("in")
        rejected(ftp, "in/first.bin", first)
        rejected(ftp, "second.bin", second)
        assert ftp.nlst("in") == []
    r = run_cli(["quarantine", "list"], server.data_dir)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 2, r.stdout
    by_path = {row[2]: row for row in rows}
    assert by_path["/in/first.bin"][1] == USER and SIGNATURE in by_path["/in/first.bin"][4]
    assert by_path["/in/first.bin"][3] == "100000 bytes"
    # Users never see the quarantine; it holds sealed files only (the
    # marker scan at teardown checks that).
    with ftp_plain(server) as ftp:
        with pytest.raises(ftplib.error_perm):
            ftp.cwd("../.quarantine")

    r = run_cli(["quarantine", "release", by_path["/in/first.bin"][0]], server.data_dir)
    assert r.returncode == 0 and "released" in r.stdout, r.stderr
    r = run_cli(["quarantine", "delete", by_path["/second.bin"][0]], server.data_dir)
    assert r.returncode == 0, r.stderr
    assert run_cli(["quarantine", "list"], server.data_dir).stdout.strip() == "quarantine is empty"
    with ftp_plain(server) as ftp:
        assert retr(ftp, "in/first.bin") == first  # an operator's decision
        assert "second.bin" not in ftp.nlst()
    # Releasing over an existing file is refused.
    with ftp_plain(server) as ftp:
        rejected(ftp, "in/first.bin", first)
    entry = run_cli(["quarantine", "list"], server.data_dir).stdout.split("\t")[0]
    r = run_cli(["quarantine", "release", entry], server.data_dir)
    assert r.returncode != 0 and "exists" in r.stderr.lower(), r.stdout + r.stderr
    r = run_cli(["quarantine", "release", entry, "--dest", "/in/first-again.bin"], server.data_dir)
    assert r.returncode == 0, r.stderr


@pytest.mark.local_only  # looks into the local storage folder
def test_on_error_policies_when_clamd_is_down_or_its_limit_is_passed(dropvault, tmp_path):
    daemon = Clamd(tmp_path / "clamd", stream_max="1M").start()
    try:
        strict = dropvault(scan_clamd=daemon.unix, scan_timeout_secs="5")
        lenient = dropvault(scan_clamd=daemon.unix, scan_on_error="accept",
                            scan_timeout_secs="5")
        big = payload(2_000_000)  # more than clamd's StreamMaxLength
        with ftp_plain(strict) as ftp:
            with pytest.raises(ftplib.error_temp) as err:
                stor(ftp, "big.bin", big)
            assert str(err.value).startswith("451") and "try again later" in str(err.value).lower()
            assert ftp.nlst() == []
        with ftp_plain(lenient) as ftp:
            stor(ftp, "big.bin", big)
            assert retr(ftp, "big.bin") == big
        assert "size limit" in lenient.wait_for_event("scan_failed")[-1]["error"]
    finally:
        daemon.stop()

    # clamd stopped: nothing listens on its socket.
    small = payload(10_000)
    with ftp_plain(strict) as ftp:
        with pytest.raises(ftplib.error_temp) as err:
            stor(ftp, "small.bin", small)
        assert str(err.value).startswith("451"), err.value
        assert ftp.nlst() == []
    refused = strict.events("transfer_failed")
    assert refused and refused[-1]["code"] == 451
    with ftp_plain(lenient) as ftp:
        stor(ftp, "small.bin", small)
        assert retr(ftp, "small.bin") == small
    warnings = lenient.wait_for_event("scan_failed", count=2)
    assert "cannot reach clamd" in warnings[-1]["error"], warnings
    assert staging(strict) == [] and staging(lenient) == []
    daemon.close()


def test_a_scanner_slower_than_the_timeout_is_no_verdict(dropvault, hook_dir):
    slow = hook_script(hook_dir, "slow.sh", "sleep 30\n")
    strict = dropvault(scan_command=json.dumps([str(slow)]), scan_timeout_secs="2")
    with ftp_plain(strict) as ftp:
        with pytest.raises(ftplib.error_temp) as err:
            stor(ftp, "late.bin", payload(1000))
        assert str(err.value).startswith("451"), err.value
        assert ftp.nlst() == []
    failures = [r for r in strict.events() if "gave no verdict" in r.get("error", "")]
    assert failures, strict.log_text()[-2000:]


def hook_script(folder, name: str, body: str):
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_command_hook_gets_the_plaintext_and_decides(dropvault, hook_dir, monkeypatch):
    seen = hook_dir / "hook-events.jsonl"
    leaked = hook_dir / "hook-env.txt"
    # The server's secrets stay out of the hook's environment.
    monkeypatch.setenv("VAULT_TOKEN", "s.not-for-hooks")
    # The first line of standard error is the finding when it is a short
    # name; the rest (here: what the file said) goes to the log only.
    hook = hook_script(hook_dir, "dlp.sh", f"""\
printf '%s\\n' "$DROPVAULT_EVENT" >> {seen}
env | grep -E '^(DROPVAULT_|VAULT_TOKEN|BAO_TOKEN)' | grep -v '^DROPVAULT_EVENT=' >> {leaked}
if [ "$(head -c 4 | tr -cd A-Z)" = "FREE" ]; then
    echo "the file starts with FREE-TEXT-FINDING" >&2
    exit 4
fi
if grep -q 'SECRET-DLP-TOKEN'; then
    echo "DLP.Secret-Token" >&2
    echo "matched: ...SECRET-DLP-TOKEN... at the end" >&2
    exit 3
fi
exit 0
""")
    server = dropvault(scan_command=json.dumps([str(hook)]))
    leaky = payload(150_000) + b"...SECRET-DLP-TOKEN..."
    clean = payload(150_000)
    with ftp_plain(server) as ftp:
        reply = rejected(ftp, "leak.txt", leaky)
        assert reply.startswith("550") and "DLP.Secret-Token" in reply, reply
        assert "matched" not in reply, reply
        # A first line that is not a short name is not shown to the client.
        reply = rejected(ftp, "free.txt", b"FREE" + payload(1000))
        assert reply.startswith("550") and "scan-command-rejected" in reply, reply
        assert "FREE-TEXT" not in reply, reply
        stor(ftp, "ok.bin", clean)
        assert ftp.nlst() == ["ok.bin"]
        assert retr(ftp, "ok.bin") == clean
    calls = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [(c["user"], c["path"]) for c in calls] == [
        (USER, "/leak.txt"), (USER, "/free.txt"), (USER, "/ok.bin")]
    rejections = server.wait_for_event("upload_rejected", count=2)
    assert [r["signature"] for r in rejections] == ["DLP.Secret-Token", "scan-command-rejected"]
    stderr = {r["path"]: r["stderr"] for r in server.events("scan_hook_stderr")}
    assert "matched: ...SECRET-DLP-TOKEN..." in stderr["/leak.txt"], stderr
    assert "FREE-TEXT-FINDING" in stderr["/free.txt"], stderr
    assert leaked.read_text() == "", leaked.read_text()


class Receiver:
    """A loopback HTTP server that records every JSON body POSTed to it,
    optionally taking `delay` seconds to answer each."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0):
        self.bodies: list[dict] = []
        self.signed: list[tuple[bytes, str | None]] = []
        self.refused = 0
        received = self.bodies
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if delay:
                    time.sleep(delay)
                if outer.refused < fail_first:
                    # A receiver having a bad moment: the sender retries.
                    outer.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                received.append(json.loads(body))
                outer.signed.append((body, self.headers.get("X-Dropvault-Signature")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> set[str]:
        return {b["event"] for b in self.bodies}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_every_event_kind_reaches_the_webhook_and_the_command(dropvault, hook_dir):
    receiver = Receiver(fail_first=2)
    log = hook_dir / "events.jsonl"
    command = hook_script(hook_dir, "event.sh", f'printf "%s\\n" "$DROPVAULT_EVENT" >> {log}\n')
    reject = hook_script(hook_dir, "reject.sh", """\
if grep -q 'REJECT-ME'; then echo "policy:REJECT-ME" >&2; exit 1; fi
""")
    server = dropvault(hooks_webhook_url=receiver.url, hooks_command=json.dumps([str(command)]),
                       hooks_webhook_secret="hook-secret-1",
                       scan_command=json.dumps([str(reject)]))
    try:
        with pytest.raises(ftplib.error_perm):
            ftp_plain(server, password="wrong password")
        with ftp_plain(server) as ftp:
            stor(ftp, "a.bin", payload(1000))
            rejected(ftp, "bad.bin", b"REJECT-ME")
            assert len(retr(ftp, "a.bin")) == 1000
            ftp.rename("a.bin", "b.bin")
            ftp.delete("b.bin")
        kinds = {"login_failed", "login", "upload", "upload_rejected", "download", "rename",
                 "delete", "logout"}
        assert wait_until(lambda: kinds <= receiver.kinds(), timeout=30), receiver.kinds()
        by_kind = {b["event"]: b for b in receiver.bodies}
        assert by_kind["upload"]["path"] == "/a.bin" and by_kind["upload"]["size"] == 1000
        assert by_kind["rename"]["path"] == "/a.bin" and by_kind["rename"]["to"] == "/b.bin"
        assert by_kind["upload_rejected"]["finding"] == "policy:REJECT-ME"
        assert by_kind["login_failed"]["user"] == USER and "peer" in by_kind["login_failed"]
        assert all(b["user"] == USER and b["time"] > 1e9 for b in receiver.bodies)
        assert receiver.refused == 2  # and yet every kind arrived: retried
        # Every body carries an HMAC-SHA256 of itself under the shared secret.
        for body, signature in receiver.signed:
            expected = hmac.new(b"hook-secret-1", body, hashlib.sha256).hexdigest()
            assert signature == f"sha256={expected}", (body, signature)
        assert wait_until(lambda: log.exists() and kinds <= {
            json.loads(line)["event"] for line in log.read_text().splitlines()}, timeout=30)
    finally:
        receiver.close()


def test_a_slow_webhook_drops_counted_events_and_never_holds_up_transfers(dropvault):
    receiver = Receiver(delay=3)
    server = dropvault(hooks_webhook_url=receiver.url, hooks_queue_size="1",
                       hooks_retries="0", hooks_timeout_secs="1")
    try:
        data = payload(50_000)
        with ftp_plain(server) as ftp:
            for i in range(10):
                stor(ftp, f"f{i}.bin", data)
                assert retr(ftp, f"f{i}.bin") == data
        drops = server.wait_for_event("events_dropped")
        assert drops and drops[-1]["dropped_total"] >= 1, server.log_text()[-2000:]
    finally:
        receiver.close()


@pytest.mark.local_only  # looks into the local storage folder
def test_import_scans_every_file_too(dropvault, clamd, tmp_path):
    server = dropvault(scan_clamd=clamd.unix)
    src = tmp_path / "legacy"
    src.mkdir()
    (src / "infected.bin").write_bytes(with_eicar(200_000, 65536 - 10))
    clean = payload(90_000)
    (src / "clean.bin").write_bytes(clean)
    r = run_cli(["import", "--user", USER, str(src)], server.data_dir,
                extra_env={"DROPVAULT_SCAN_CLAMD": clamd.unix})
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"skipped {src / 'infected.bin'}: rejected by the malware scan: {SIGNATURE}"
            in r.stdout), r.stdout
    assert "imported 1 files" in r.stdout, r.stdout
    with ftp_plain(server) as ftp:
        assert ftp.nlst() == ["clean.bin"]
        assert retr(ftp, "clean.bin") == clean
    assert staging(server) == []
