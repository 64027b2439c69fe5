"""Real FTP clients for the acceptance tests: curl and lftp as subprocesses,
Python's ftplib, and a raw control-connection socket for what no client
sends on purpose (over-long lines, refused PORTs, ...)."""

from __future__ import annotations

import ftplib
import os
import pathlib
import re
import socket
import ssl
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("DROPVAULT_BIN") or str(REPO / "target" / "debug" / "dropvault")

MARKER = b"DROPVAULT-PLAINTEXT-MARKER"
USER = "alice"
PASSWORD = "alice-Pw-7731"
SEGMENT = 65536
HEADER = 96
TAG = 16
MAGIC = b"\x89DRPVLT\n"

CLIENT_TIMEOUT = 120


# -- the dropvault command ------------------------------------------------------

def base_env() -> dict[str, str]:
    """The environment without any DROPVAULT_ setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPVAULT_")}
    env.pop("RUST_LOG", None)
    return env


def run_cli(args: list[str], data_dir: pathlib.Path, stdin: str | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `dropvault ARGS` on `data_dir` (user management and the like)."""
    env = base_env()
    env["DROPVAULT_DATA_DIR"] = str(data_dir)
    env.update(extra_env or {})
    return subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


# -- payloads and what storage may hold ------------------------------------

def payload(size: int) -> bytes:
    """Random bytes carrying MARKER at the start, across the first segment
    boundary, in the middle and at the end, wherever it fits."""
    data = bytearray(os.urandom(size))
    n = len(MARKER)
    for pos in (0, SEGMENT - n // 2, size // 2, size - n):
        if 0 <= pos and pos + n <= size:
            data[pos:pos + n] = MARKER
    return bytes(data)


def find_marker(root: pathlib.Path) -> list[pathlib.Path]:
    """Every regular file under `root` (recursively, dot folders and
    leftovers included, symlinks not followed) that contains MARKER."""
    hits = []
    chunk = 1 << 20
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = pathlib.Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            try:
                with open(path, "rb") as f:
                    tail = b""
                    while True:
                        block = f.read(chunk)
                        if not block:
                            break
                        if MARKER in tail + block:
                            hits.append(path)
                            break
                        tail = block[-(len(MARKER) - 1):]
            except OSError:
                continue
    return hits


def sealed_len(plain: int) -> int:
    """docs/FORMAT.md section 3: C = H + P + 16 * max(1, ceil(P / 65536))."""
    segments = max(1, -(-plain // SEGMENT))
    return HEADER + plain + TAG * segments


def tree_files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# -- curl and lftp ------------------------------------------------------------

def curl(*args: str, timeout: int = CLIENT_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = ["curl", "-sS", "--connect-timeout", "15", "--max-time", str(timeout - 10), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def ftp_url(server, path: str = "/", scheme: str = "ftp", implicit: bool = False) -> str:
    port = server.implicit_port if implicit else server.port
    return f"{scheme}://127.0.0.1:{port}{path}"


def lftp(server, commands: str, tls: str | None = None, user: str = USER,
         password: str = PASSWORD, extra: str = "", timeout: int = CLIENT_TIMEOUT
         ) -> subprocess.CompletedProcess:
    """Runs lftp commands against `server`. tls: None (plain FTP), "1.3" or
    "1.2" (explicit FTPS with protected data, that TLS version only)."""
    settings = [
        "set net:max-retries 1",
        "set net:timeout 20",
        "set net:reconnect-interval-base 1",
        "set cmd:fail-exit true",
        "set ftp:passive-mode true",
    ]
    if tls:
        settings += [
            "set ftp:ssl-force true",
            "set ftp:ssl-protect-data true",
            "set ftp:ssl-protect-list true",
            "set ssl:verify-certificate no",
            f"set ssl:priority NORMAL:-VERS-ALL:+VERS-TLS{tls}",
        ]
    else:
        settings.append("set ftp:ssl-allow false")
    if extra:
        settings.append(extra)
    script = "; ".join(settings + [
        f"open -u {user},{password} ftp://127.0.0.1:{server.port}", commands, "bye"])
    return subprocess.run(["lftp", "-c", script], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# -- rclone and basic-ftp ------------------------------------------------------

def rclone(server, *args: str, tls: bool = True, config_dir: pathlib.Path,
           user: str = USER, password: str = PASSWORD, timeout: int = CLIENT_TIMEOUT
           ) -> subprocess.CompletedProcess:
    """Runs `rclone ARGS` with a remote `dv:` for `server` (explicit FTPS
    with `tls`, as a new user would set it up: certificate not checked),
    with rclone's defaults otherwise (4 parallel transfers)."""
    conf = config_dir / "rclone.conf"
    if not conf.exists():
        config_dir.mkdir(parents=True, exist_ok=True)
        obscured = subprocess.run(["rclone", "obscure", password], capture_output=True,
                                  text=True, check=True).stdout.strip()
        lines = ["[dv]", "type = ftp", f"host = {server.host}", f"port = {server.port}",
                 f"user = {user}", f"pass = {obscured}"]
        if tls:
            lines += ["explicit_tls = true", "no_check_certificate = true"]
        conf.write_text("\n".join(lines) + "\n")
    return subprocess.run(["rclone", "--config", str(conf), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


NODE_CLIENTS = REPO / "tests" / "integration" / "node"


def basic_ftp(server, *steps: str, secure: bool = True, user: str = USER,
              password: str = PASSWORD, timeout: int = CLIENT_TIMEOUT
              ) -> tuple[int, list[dict]]:
    """Runs npm's basic-ftp (tests/integration/node/basicftp.js) through
    `steps` in one session, e.g. "upload:LOCAL:REMOTE"; returns its exit
    status and one record per step (the last one the error, if any)."""
    import json
    opts = {"host": server.host, "port": server.port, "user": user,
            "password": password, "secure": secure}
    r = subprocess.run(["node", str(NODE_CLIENTS / "basicftp.js"), json.dumps(opts), *steps],
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, records


# -- ftplib -------------------------------------------------------------------

def tls_context(version: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "1.3":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose protected data connections resume the control
    connection's TLS session, as FileZilla, lftp and curl do."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def ftp_plain(server, user: str = USER, password: str = PASSWORD, timeout: float = 30
              ) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=timeout)
    ftp.connect(server.host, server.port)
    ftp.login(user, password)
    return ftp


def ftp_tls(server, reuse: bool = True, version: str | None = None, user: str = USER,
            password: str = PASSWORD, timeout: float = 30, cls=None) -> ftplib.FTP_TLS:
    """Logs in over explicit FTPS with PROT P. `cls` overrides the client
    class (default: one that resumes the TLS session when `reuse`)."""
    if cls is None:
        cls = ResumingFTP_TLS if reuse else ftplib.FTP_TLS
    ftp = cls(context=tls_context(version), timeout=timeout)
    ftp.connect(server.host, server.port)
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


def retr(ftp: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    parts: list[bytes] = []
    ftp.retrbinary(f"RETR {name}", parts.append, rest=rest)
    return b"".join(parts)


def stor(ftp: ftplib.FTP, name: str, data: bytes, cmd: str = "STOR", rest=None) -> str:
    import io
    return ftp.storbinary(f"{cmd} {name}", io.BytesIO(data), rest=rest)


def mlsd(ftp: ftplib.FTP, path: str = "") -> dict[str, dict[str, str]]:
    """MLSD entries by name, without the folder's own (cdir/pdir) entries."""
    return {name: facts for name, facts in ftp.mlsd(path)
            if facts.get("type") not in ("cdir", "pdir")}


def epsv_port(reply: str) -> int:
    m = re.search(r"\(\|\|\|(\d+)\|\)", reply)
    assert m, f"not an EPSV reply: {reply!r}"
    return int(m.group(1))


# -- a raw control connection ---------------------------------------------------

class Raw:
    """A bare control connection: send any bytes, read replies."""

    def __init__(self, host: str, port: int, timeout: float = 30, source: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply as (code, full text)."""
        first = self.readline().decode("utf-8", "replace")
        lines = [first]
        if len(first) > 3 and first[3] == "-":
            code = first[:3]
            while True:
                line = self.readline().decode("utf-8", "replace")
                lines.append(line)
                if line.startswith(code + " "):
                    break
        return int(first[:3]), "\n".join(lines)

    def send(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode()
        self.sock.sendall(line + b"\r\n")

    def cmd(self, line: bytes | str) -> tuple[int, str]:
        self.send(line)
        return self.reply()

    def login(self, user: str = USER, password: str = PASSWORD) -> None:
        code, text = self.cmd(f"USER {user}")
        assert code == 331, text
        code, text = self.cmd(f"PASS {password}")
        assert code == 230, text

    def closed_by_peer(self, timeout: float = 10) -> bool:
        """True when the server closes the connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def raw(server, timeout: float = 30, login: bool = False) -> Raw:
    r = Raw(server.host, server.port, timeout)
    code, text = r.reply()
    assert code == 220, text
    if login:
        r.login()
    return r


def reset_close(sock: socket.socket) -> None:
    """Closes with a TCP RST instead of a FIN: the abrupt end of a client
    that crashed or lost its network."""
    import struct
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def reset_ftp(ftp: ftplib.FTP) -> None:
    """Resets an ftplib session's control connection (its file object holds
    the socket open, so it is closed too)."""
    sock = ftp.sock
    if ftp.file is not None:
        ftp.file.close()
    ftp.file = ftp.sock = None
    if sock is not None:
        reset_close(sock)


def wait_until(predicate, timeout: float = 20, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def interrupted_upload(server, name: str, data: bytes, segments: int = 40) -> int:
    """Starts `STOR name`, sends `segments` and a half segments of `data`,
    waits (watching SIZE from a second session) until the server has sealed
    at least two whole segments into its staging file, then resets both the
    data and the control connection, as a client that crashed would.
    Returns the resume point the server then reports with SIZE: a segment
    boundary, at most what was sent (the server buffers up to 1 MiB of sealed
    data in memory, which a broken connection loses)."""
    sent = segments * SEGMENT + SEGMENT // 2
    assert len(data) > sent
    ftp = ftp_plain(server)
    ftp.voidcmd("TYPE I")
    peer = "%s:%d" % ftp.sock.getsockname()[:2]
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(data[:sent])
    watcher = ftp_plain(server)

    def staged() -> int:
        try:
            return int(watcher.sendcmd(f"SIZE {name}").split()[1])
        except ftplib.error_perm:
            return 0

    reached = wait_until(lambda: staged() >= 2 * SEGMENT, timeout=30)
    reset_close(conn)
    reset_ftp(ftp)
    assert reached, "the server never sealed two segments of the upload into staging"
    # The interrupted session ends (and lets go of the staging file) before
    # anyone resumes.
    assert server.wait_for_event("logout", peer=peer), "interrupted session never ended"
    point = staged()
    watcher.quit()
    assert point % SEGMENT == 0 and 2 * SEGMENT <= point <= segments * SEGMENT, point
    return point
