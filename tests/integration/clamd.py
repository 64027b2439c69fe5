"""A real ClamAV daemon for the scan tests.

`Clamd(workdir)` writes a signature database of its own (the EICAR test
string, as an extended signature that matches anywhere in a file — no
signature download is possible here) and a clamd.conf, and runs
`clamd --foreground` on a unix socket and a loopback TCP port. clamd spools
each INSTREAM to its TemporaryDirectory before scanning; that is put on
tmpfs (/dev/shm) here, as docs/SECURITY.md asks of real deployments.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

from procs import die_with_parent, free_port

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Dropvault-Test-EICAR"
START_TIMEOUT = 120



def clamd_binary() -> str:
    found = shutil.which("clamd") or ("/usr/sbin/clamd" if os.access("/usr/sbin/clamd", os.X_OK)
                                      else None)
    if not found:
        raise RuntimeError("clamd not found: install Debian's clamav-daemon (scripts/test does)")
    return found


class Clamd:
    def __init__(self, workdir: pathlib.Path, stream_max: str = "1M"):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "clamd.sock"
        self.port = free_port()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="dropvault-clamd-", dir=shm))
        self.stream_max = stream_max
        self.proc: subprocess.Popen | None = None

    @property
    def unix(self) -> str:
        return f"unix:{self.socket}"

    @property
    def tcp(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self) -> "Clamd":
        db = self.workdir / "db"
        db.mkdir(exist_ok=True)
        # Target 0 (any file), offset * (anywhere), the string in hex.
        (db / "dropvault-test.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
        conf = self.workdir / "clamd.conf"
        conf.write_text(
            f"Foreground yes\n"
            f"LocalSocket {self.socket}\n"
            f"TCPSocket {self.port}\n"
            f"TCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {db}\n"
            f"TemporaryDirectory {self.tmp}\n"
            f"StreamMaxLength {self.stream_max}\n"
            f"LogFile {self.workdir / 'clamd.log'}\n"
            f"PidFile {self.workdir / 'clamd.pid'}\n"
        )
        with open(self.workdir / "clamd.out", "ab") as out:
            self.proc = subprocess.Popen([clamd_binary(), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("clamd exited: " + self.log_text()[-3000:])
            if self.ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("clamd did not answer PING in time: " + self.log_text()[-3000:])

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(64).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in
                       (self.workdir / "clamd.out", self.workdir / "clamd.log") if p.exists())
