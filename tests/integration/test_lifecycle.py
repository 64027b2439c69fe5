"""The server's life: first start, restarts, SIGTERM draining, SIGKILL in
the middle of uploads, and the events it logs on the way."""

import ftplib
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from dvclients import (BIN, MAGIC, PASSWORD, SEGMENT, USER, curl, find_marker, ftp_plain,
                       ftp_url, mlsd, payload, raw, reset_close, retr, sealed_len, stor,
                       wait_until)

MIB = 1024 * 1024


def staging_files(server):
    return [p for p in (server.data_dir / "files" / ".staging").glob("*") if p.is_file()]


def test_first_start_creates_demo_user(dropvault, tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    server = dropvault(users={}, data_dir=data_dir, prepare=False)
    text = "\n".join(server.stdout_lines)
    m = re.search(r'created user "demo" with password "([^"]+)"', text)
    assert m, text
    r = curl("-u", f"demo:{m.group(1)}", ftp_url(server, "/"))
    assert r.returncode == 0, r.stderr
    assert oct(data_dir.stat().st_mode & 0o777) == oct(0o700)
    assert oct((data_dir / "kek.pem").stat().st_mode & 0o777) == oct(0o600)
    # A self-signed TLS pair was generated there, and is what the server serves.
    assert oct((data_dir / "tls-key.pem").stat().st_mode & 0o777) == oct(0o600)
    r = curl("--ssl-reqd", "--cacert", str(data_dir / "tls-cert.pem"),
             "-u", f"demo:{m.group(1)}", ftp_url(server, "/"))
    assert r.returncode == 0, r.stderr
    # Shown once: a restart does not print it again.
    server.restart()
    assert len(re.findall(r'created user "demo"', "\n".join(server.stdout_lines))) == 1


def test_restart_keeps_files_and_the_users_key(server):
    data = payload(3 * SEGMENT + 3)
    with ftp_plain(server) as ftp:
        stor(ftp, "keep.bin", data)
    assert server.stop() == 0
    keys = list((server.data_dir / "keys").iterdir())
    assert len(keys) == 1
    key_before = keys[0].read_bytes()
    server.start()
    with ftp_plain(server) as ftp:
        assert retr(ftp, "keep.bin") == data
    assert [k.read_bytes() for k in (server.data_dir / "keys").iterdir()] == [key_before]
    assert server.log_text().count('"created data key"') == 1


def test_sigterm_right_after_the_ready_line_stops_cleanly(server):
    """A supervisor may stop the server the moment it says it is ready."""
    server.stop()
    codes = []
    for _ in range(30):
        proc = subprocess.Popen([BIN, "serve"], env=server.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        try:
            for line in proc.stdout:
                if line.startswith(b"dropvault: FTP on"):
                    proc.send_signal(signal.SIGTERM)
                    break
            codes.append(proc.wait(timeout=30))
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
            proc.stdout.close()
    assert codes == [0] * len(codes), codes


def test_sigterm_drains_transfers_and_refuses_new_sessions(dropvault):
    server = dropvault(ftp_drain_grace_secs=60)
    data = payload(12 * MIB)
    idle = raw(server, login=True)
    idle_peer = "%s:%d" % idle.sock.getsockname()
    ftp = ftp_plain(server)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR drained.bin")
    conn.sendall(data[:2 * MIB])

    server.signal(signal.SIGTERM)
    assert wait_until(lambda: "draining sessions" in server.log_text()), "no drain started"
    # The idle session is told and closed; its logout is logged.
    code, text = idle.reply()
    assert code == 421, text
    assert idle.closed_by_peer()
    assert server.wait_for_event("logout", peer=idle_peer)
    # No new sessions, on either listener.
    for port in (server.port, server.implicit_port):
        with pytest.raises(OSError):
            s = socket.create_connection((server.host, port), timeout=5)
            # A listener that still accepts would greet; a closed one refuses.
            s.settimeout(5)
            if not s.recv(1024).startswith(b"220"):
                s.close()
                raise OSError("refused after accept")
            s.close()
    # The upload in flight finishes.
    conn.sendall(data[2 * MIB:])
    conn.close()
    assert ftp.voidresp().startswith("226")
    try:
        final = ftp.getresp()
    except (ftplib.error_temp, EOFError, OSError) as e:
        final = str(e)
    assert final.startswith("421") or final == "", final
    assert server.wait(timeout=60) == 0
    assert server.events("upload", path="/drained.bin")

    server.start()
    with ftp_plain(server) as ftp:
        assert retr(ftp, "drained.bin") == data


def test_sigterm_cuts_transfers_after_the_grace_period(dropvault):
    server = dropvault(ftp_drain_grace_secs=1)
    ftp = ftp_plain(server)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR cut.bin")
    conn.sendall(payload(3 * MIB))
    server.signal(signal.SIGTERM)
    # The client never finishes; the server stops by itself.
    assert server.wait(timeout=60) == 0
    assert "drain grace period over" in server.log_text()
    conn.close()
    assert not (server.user_dir() / "cut.bin").exists()
    assert find_marker(server.data_dir) == []
    server.start()
    with ftp_plain(server) as ftp:
        assert "cut.bin" not in mlsd(ftp)


class SlowSource:
    """A file object for storbinary that hands out `data` slowly and raises
    once `stop` is set, so that a killed server cannot be mistaken for the
    end of the upload."""

    def __init__(self, data: bytes, delay: float = 0.03):
        self.data = data
        self.pos = 0
        self.delay = delay
        self.stop = threading.Event()
        self.sent = 0

    def read(self, n: int) -> bytes:
        if self.stop.is_set():
            raise ConnectionAbortedError("test stopped the upload")
        if self.pos > 4 * MIB:
            time.sleep(self.delay)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        self.sent = self.pos
        return chunk


def start_slow_upload(server, name: str, data: bytes):
    ftp = ftp_plain(server, timeout=60)
    source = SlowSource(data)
    errors: list[BaseException] = []

    def run():
        try:
            ftp.storbinary(f"STOR {name}", source, blocksize=256 * 1024)
            errors.append(AssertionError(f"upload of {name} completed"))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return ftp, source, thread, errors


def test_sigkill_during_uploads(server):
    """A crash in the middle of uploads leaves no short file under a final
    name and no plaintext: the replaced file is still the old one, the new
    file does not exist, leftovers are sealed."""
    old = payload(3 * MIB)
    with ftp_plain(server) as ftp:
        stor(ftp, "doc.bin", old)
    replacing = payload(20 * MIB)
    fresh = payload(20 * MIB)
    uploads = [start_slow_upload(server, "doc.bin", replacing),
               start_slow_upload(server, "new.bin", fresh)]

    def well_under_way():
        staged = staging_files(server)
        return (all(u[1].sent > 6 * MIB for u in uploads)
                and len(staged) >= 2 and all(p.stat().st_size > 2 * MIB for p in staged))

    assert wait_until(well_under_way, timeout=60), "uploads did not get going"
    server.kill()
    for _ftp, source, thread, errors in uploads:
        source.stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert errors and not isinstance(errors[0], AssertionError), errors
    for ftp, *_ in uploads:
        try:
            ftp.close()
        except OSError:
            pass

    # On disk, before anything cleans up: no plaintext anywhere, leftovers
    # sealed, the final names whole.
    assert find_marker(server.data_dir) == []
    leftovers = staging_files(server)
    assert leftovers
    for p in leftovers:
        assert p.read_bytes()[:8] == MAGIC, p
    assert (server.user_dir() / "doc.bin").stat().st_size == sealed_len(len(old))
    assert not (server.user_dir() / "new.bin").exists()

    server.start()
    with ftp_plain(server) as ftp:
        names = mlsd(ftp)
        assert names["doc.bin"]["size"] == str(len(old))
        assert retr(ftp, "doc.bin") == old
        assert "new.bin" not in names
        with pytest.raises(ftplib.error_perm, match="^55"):
            retr(ftp, "new.bin")


def test_upload_resumes_after_a_crash(server):
    data = payload(20 * MIB)
    ftp, source, thread, errors = start_slow_upload(server, "crash.bin", data)
    assert wait_until(lambda: source.sent > 6 * MIB and staging_files(server)
                      and staging_files(server)[0].stat().st_size > 2 * MIB, timeout=60)
    server.kill()
    source.stop.set()
    thread.join(timeout=60)
    server.start()
    with ftp_plain(server) as ftp:
        point = int(ftp.sendcmd("SIZE crash.bin").split()[1])
        assert point > 0 and point % SEGMENT == 0 and point < len(data)
        stor(ftp, "crash.bin", data[point:], rest=point)
        assert retr(ftp, "crash.bin") == data


def test_logout_is_logged_on_every_path(server):
    quitter = raw(server, login=True)
    dropper = raw(server, login=True)
    resetter = raw(server, login=True)
    peers = {name: "%s:%d" % r.sock.getsockname()
             for name, r in (("quit", quitter), ("drop", dropper), ("reset", resetter))}
    assert quitter.cmd("QUIT")[0] == 221
    quitter.close()
    dropper.close()
    reset_close(resetter.sock)
    for how, peer in peers.items():
        assert server.wait_for_event("login", peer=peer, user=USER), how
        assert server.wait_for_event("logout", peer=peer, user=USER), f"no logout after {how}"


def test_events_are_logged_as_json(server):
    data = payload(SEGMENT + 123)
    with ftp_plain(server) as ftp:
        ftp.mkd("box")
        stor(ftp, "box/a.bin", data)
        retr(ftp, "box/a.bin")
        ftp.rename("box/a.bin", "box/b.bin")
        ftp.delete("box/b.bin")
        ftp.rmd("box")
    with pytest.raises(ftplib.error_perm):
        ftp_plain(server, password="not-it")
    expect = {
        "login": {"user": USER},
        "login_failed": {"user": USER},
        "mkdir": {"user": USER, "path": "/box"},
        "upload": {"user": USER, "path": "/box/a.bin", "size": len(data)},
        "download": {"user": USER, "path": "/box/a.bin"},
        "rename": {"user": USER, "from": "/box/a.bin", "to": "/box/b.bin"},
        "delete": {"user": USER, "path": "/box/b.bin"},
        "logout": {"user": USER},
    }
    for name, fields in expect.items():
        assert server.wait_for_event(name, **fields), f"no {name} event with {fields}"
    upload = server.events("upload")[0]
    assert int(upload["size"]) == len(data)


def test_login_refused_when_the_key_cannot_be_unwrapped(server):
    """A lost key-encryption key must refuse logins clearly, never replace
    the user's key (which would crypto-shred their files)."""
    data = payload(SEGMENT + 1)
    with ftp_plain(server) as ftp:
        stor(ftp, "precious.bin", data)
    assert server.stop() == 0
    keys = server.data_dir / "keys"
    key_files = {p.name: p.read_bytes() for p in keys.iterdir()}
    kek = server.data_dir / "kek.pem"
    saved_kek = kek.read_bytes()
    kek.unlink()  # the next start generates a different one

    server.start()
    r = raw(server)
    assert r.cmd(f"USER {USER}")[0] == 331
    code, text = r.cmd(f"PASS {PASSWORD}")
    assert code == 530, text
    assert "key" in text.lower(), f"refusal does not say why: {text}"
    r.close()
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == key_files
    assert server.events("login_refused", user=USER)
    assert server.stop() == 0

    kek.write_bytes(saved_kek)
    server.start()
    with ftp_plain(server) as ftp:
        assert retr(ftp, "precious.bin") == data
