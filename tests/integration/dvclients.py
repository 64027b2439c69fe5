"""Real FTP clients for the acceptance tests: curl and lftp as subprocesses,
Python's ftplib, and a raw control-connection socket for what no client
sends on purpose (over-long lines, refused PORTs, ...). SFTP clients:
OpenSSH's sftp, paramiko, curl, lftp and rclone (checked against OpenSSH's
sshd by `python3 tests/integration/sshd.py`). S3: rclone against a Garage
cluster (garage.py)."""

from __future__ import annotations

import base64
import datetime
import ftplib
import hashlib
import ipaddress
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
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


# The storage settings (DROPVAULT_STORAGE_*) of data folders whose server
# stores on S3, so that commands run on the folder reach the same storage.
STORAGE_ENV: dict[str, dict[str, str]] = {}


def run_cli(args: list[str], data_dir: pathlib.Path, stdin: str | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `dropvault ARGS` on `data_dir` (user management and the like),
    with the storage settings of the folder's server."""
    env = base_env()
    env["DROPVAULT_DATA_DIR"] = str(data_dir)
    env.update(STORAGE_ENV.get(str(data_dir), {}))
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


def rclone_s3(cluster, *args: str, config_dir: pathlib.Path,
              timeout: int = CLIENT_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs `rclone ARGS` with remotes `g0:`, `g1:`... for the S3 API of
    each node of `cluster` (garage.GarageCluster; paths are BUCKET/KEY),
    from a config file in `config_dir` (it holds the secret key, so it is
    not on the command line). The bucket exists: rclone does not try to
    create it."""
    conf = config_dir / "rclone-s3.conf"
    config_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, endpoint in enumerate(cluster.endpoints):
        lines += [f"[g{i}]", "type = s3", "provider = Other", "env_auth = false",
                  f"access_key_id = {cluster.access_key_id}",
                  f"secret_access_key = {cluster.secret_access_key}",
                  f"region = {cluster.region}", f"endpoint = {endpoint}",
                  "force_path_style = true", "no_check_bucket = true", ""]
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    # No AWS_ settings of the caller's: rclone's S3 SDK would take a CA
    # bundle (AWS_CA_BUNDLE), a profile or credentials from them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(["rclone", "--config", str(conf), "--contimeout", "15s",
                           "--timeout", "60s", "--retries", "1", "--low-level-retries", "2",
                           *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


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


# -- SFTP clients ---------------------------------------------------------------
#
# Every helper takes the server's address as (host, port): a dropvault
# fixture's (server.host, server.sftp_port), or an OpenSSH sshd's (sshd.py).
# None of them reads ~/.ssh: OpenSSH runs with `-F /dev/null` and a
# known_hosts file of the caller's, curl with the host key's fingerprint (or
# -k), rclone with an empty config.

def ssh_options(known_hosts: pathlib.Path, key: pathlib.Path | None = None,
                batch: bool = True) -> list[str]:
    """OpenSSH client options for one server: no user or system client
    config, no agent, only `key` (when given), new host keys accepted into
    `known_hosts` and checked on later connections, timeouts on connect and
    on a silent server. batch=False lets ssh prompt for a password (for a
    program that answers it, like lftp)."""
    opts = {
        "StrictHostKeyChecking": "accept-new",
        "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "IdentityAgent": "none",
        "ConnectTimeout": "15",
        "ServerAliveInterval": "15",
        "ServerAliveCountMax": "2",
        "LogLevel": "ERROR",
    }
    if batch:
        opts["BatchMode"] = "yes"
    if key is not None:
        opts["IdentitiesOnly"] = "yes"
        opts["IdentityFile"] = str(key)
    else:
        opts["PubkeyAuthentication"] = "no"
        opts["NumberOfPasswordPrompts"] = "1"
    args = ["-F", "/dev/null"]
    for name, value in opts.items():
        args += ["-o", f"{name}={value}"]
    return args


def ssh_keygen(directory: pathlib.Path, name: str = "id_ed25519", kind: str = "ed25519",
               comment: str = "dropvault-test") -> pathlib.Path:
    """Generates a client key pair with ssh-keygen (no passphrase) into
    `directory`; returns the private key's path (the public key is beside
    it, with `.pub`)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(key)]
    if kind == "ecdsa":
        cmd += ["-b", "256"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return key


def key_fingerprint(pub: pathlib.Path) -> str:
    """`SHA256:...` of a public key file (or known_hosts file's first key),
    as ssh-keygen -l prints it."""
    r = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
                       capture_output=True, text=True, timeout=30, check=True)
    return r.stdout.split()[1]


def sftp_batch(host: str, port: int, user: str, key: pathlib.Path,
               commands: str | list[str], known_hosts: pathlib.Path | None = None,
               extra: list[str] | None = None, timeout: int = CLIENT_TIMEOUT
               ) -> subprocess.CompletedProcess:
    """Runs OpenSSH's `sftp -b -` with `commands` (one a line; a leading `-`
    lets one fail without ending the batch) as `user` with the private key
    `key`. known_hosts defaults to a file beside the key, so a second call
    checks the host key the first one accepted. A failed command, auth or
    host key check gives a non-zero exit; stdout echoes each command
    (`sftp> ls`) and its output."""
    if isinstance(commands, list):
        commands = "\n".join(commands)
    known_hosts = known_hosts or key.parent / "known_hosts"
    cmd = ["sftp", "-b", "-", *ssh_options(known_hosts, key), "-P", str(port),
           *(extra or []), f"{user}@{host}"]
    return subprocess.run(cmd, input=commands + "\n", capture_output=True, text=True,
                          timeout=timeout)


def paramiko_connect(host: str, port: int, user: str, password: str | None = None,
                     key: pathlib.Path | None = None, timeout: float = 30):
    """A logged-in paramiko SSHClient (password auth, or `key`; any host
    key accepted, no agent, no ~/.ssh keys). `client.open_sftp()` gives its
    SFTPClient; close the client when done. The server's host key is
    `client.get_transport().get_remote_server_key()` (see host_key_sha256)."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    pkey = paramiko.PKey.from_path(str(key)) if key is not None else None
    try:
        client.connect(host, port=port, username=user, password=password, pkey=pkey,
                       allow_agent=False, look_for_keys=False, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout)
    except BaseException:
        client.close()
        raise
    return client


def paramiko_sftp(host: str, port: int, user: str, password: str | None = None,
                  key: pathlib.Path | None = None, timeout: float = 30):
    """(SSHClient, SFTPClient) logged in as paramiko_connect does; every
    SFTP request times out after `timeout`. Close the client when done."""
    client = paramiko_connect(host, port, user, password, key, timeout)
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(timeout)
    except BaseException:
        client.close()
        raise
    return client, sftp


def host_key_sha256(pkey) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(pkey.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def sftp_url(host: str, port: int, path: str = "/") -> str:
    """An sftp:// URL; `path` is from the root the server gives the user
    (dropvault: the user's vault root)."""
    if not path.startswith("/"):
        path = "/" + path
    return f"sftp://{host}:{port}{path}"


def curl_sftp(host: str, port: int, path: str, *args: str, user: str = USER,
              password: str | None = PASSWORD, key: pathlib.Path | None = None,
              host_sha256: str | None = None, timeout: int = CLIENT_TIMEOUT
              ) -> subprocess.CompletedProcess:
    """curl (libssh2) on sftp://host:port/path with ARGS (-T FILE to
    upload, -o FILE to download, a path ending in / lists, -Q "rm /x" ...).
    Password auth by default; with `key`, that key (and KEY.pub) instead.
    The host key is checked against `host_sha256` ("SHA256:..." or bare
    base64, curl's --hostpubsha256) when given, else not checked (-k)."""
    cmd = ["curl", "-sS", "--connect-timeout", "15", "--max-time", str(timeout - 10)]
    if key is not None:
        cmd += ["-u", f"{user}:", "--key", str(key), "--pubkey", f"{key}.pub"]
    else:
        cmd += ["-u", f"{user}:{password}"]
    if host_sha256:
        cmd += ["--hostpubsha256", host_sha256.removeprefix("SHA256:")]
    else:
        cmd.append("-k")
    cmd += [*args, sftp_url(host, port, path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def lftp_sftp(host: str, port: int, commands: str, user: str = USER,
              password: str | None = PASSWORD, key: pathlib.Path | None = None,
              known_hosts: pathlib.Path | None = None, timeout: int = CLIENT_TIMEOUT
              ) -> subprocess.CompletedProcess:
    """Runs lftp `commands` over sftp:// (lftp drives OpenSSH's ssh with
    its sftp subsystem). Password auth (lftp answers ssh's prompt) by
    default; with `key`, that key and no password. known_hosts defaults
    to one beside the key, or a fresh one per call for passwords."""
    own = None
    if known_hosts is None:
        if key is not None:
            known_hosts = key.parent / "known_hosts"
        else:
            own = tempfile.mkdtemp(prefix="dv-lftp-")
            known_hosts = pathlib.Path(own) / "known_hosts"
    ssh = ["ssh", "-a", "-x", *ssh_options(known_hosts, key, batch=key is not None)]
    settings = [
        "set net:max-retries 1",
        "set net:timeout 20",
        "set net:reconnect-interval-base 1",
        "set cmd:fail-exit true",
        "set sftp:connect-program " + shlex.quote(shlex.join(ssh)),
    ]
    secret = "" if key is not None else (password or "")
    script = "; ".join(settings + [
        f"open -u {shlex.quote(user)},{shlex.quote(secret)} -p {port} sftp://{host}",
        commands, "bye"])
    try:
        return subprocess.run(["lftp", "-c", script], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        if own:
            shutil.rmtree(own, ignore_errors=True)


def rclone_sftp_remote(host: str, port: int, user: str = USER, password: str | None = PASSWORD,
                       key: pathlib.Path | None = None,
                       known_hosts: pathlib.Path | None = None) -> str:
    """An rclone on-the-fly sftp remote (`:sftp,host=...:`) for the server;
    append a path. Password (rclone-obscured) or `key_file`; rclone runs no
    shell commands on the server (shell_type=none, no hash checks), as a
    server without a shell needs. With known_hosts, rclone checks the host
    key against it (else any is accepted)."""
    opts = [f"host={host}", f"port={port}", f"user={user}", "shell_type=none",
            "disable_hashcheck=true"]
    if key is not None:
        opts.append(f"key_file={key}")
    else:
        obscured = subprocess.run(["rclone", "obscure", password or ""], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip()
        opts.append(f"pass={obscured}")
    if known_hosts is not None:
        opts.append(f"known_hosts_file={known_hosts}")
    return ":sftp," + ",".join(opts) + ":"


def rclone_sftp(remote: str, *args: str, config_dir: pathlib.Path,
                timeout: int = CLIENT_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs `rclone ARGS` where ARGS name `remote` (from rclone_sftp_remote)
    plus a path, e.g. rclone_sftp(r, "copy", str(local), r + "dir"), with an
    empty config file in `config_dir` and rclone's defaults otherwise (4
    parallel transfers)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    conf = config_dir / "rclone.conf"
    conf.touch()
    return subprocess.run(["rclone", "--config", str(conf), "--contimeout", "15s",
                           "--timeout", "60s", "--retries", "1", "--low-level-retries", "1",
                           *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def make_certificate(cert_path, key_path) -> None:
    """A self-signed P-256 certificate for 127.0.0.1 and localhost (with the
    `cryptography` package, which scripts/test installs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dropvault-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def key_files(server) -> dict[str, dict]:
    """The server's key files (local storage), by user."""
    out = {}
    for path in (server.data_dir / "keys").glob("*.json"):
        kf = json.loads(path.read_text())
        out[kf["user"]] = kf
    return out
