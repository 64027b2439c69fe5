"""Clients of dropvault's HTTPS front end (issue 17) for the acceptance
tests: drop links made with `dropvault link ...`, the tus 1.0.0 protocol
through tuspy (pip `tuspy`, module `tusclient`) and through bare requests
or a raw TLS socket for what tuspy does not send on purpose (a cut PATCH,
wrong offsets, bad checksums), and the account's JSON API with requests.

Every client here talks to a self-signed certificate: TLS verification is
off (requests `verify=False`, tuspy `verify_tls_cert=False`)."""

from __future__ import annotations

import base64
import dataclasses
import ftplib
import hashlib
import json
import os
import pathlib
import re
import socket
import subprocess
import time
import warnings

import requests
import urllib3

from dvclients import find_marker, ftp_plain, retr, run_cli, tls_context, wait_until

# Self-signed certificate on purpose: requests' warning about it would
# drown every test's output.
warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
HTTPS_READY = re.compile(r"dropvault: HTTPS on (?P<host>[0-9.]+):(?P<port>\d+)")
TOKEN_URL = re.compile(r"/d/(?P<token>[A-Za-z0-9_-]+)/?$")
HTTP_TIMEOUT = 60


# -- the server's HTTPS listener ------------------------------------------------

def https_url(server, timeout: float = 20) -> str:
    """"https://127.0.0.1:PORT" of the server's HTTPS listener: the
    conftest's `server.https_port`, else the port of the HTTPS ready line
    on its stdout (of the latest start)."""
    if getattr(server, "https_port", None):
        return f"https://127.0.0.1:{server.https_port}"

    def port() -> int | None:
        lines = server.stdout_lines
        for line in reversed(lines):
            m = HTTPS_READY.search(line)
            if m:
                return int(m["port"])
        return None

    found = wait_until(port, timeout=timeout)
    assert found, f"no HTTPS ready line; stdout: {server.stdout_lines[-10:]}"
    return f"https://127.0.0.1:{found}"


def session() -> requests.Session:
    """A requests session for the self-signed certificate (keeps cookies).
    It ignores the environment: REQUESTS_CA_BUNDLE would otherwise turn
    verification back on for a session (requests merges it over
    `verify`), and no proxy is wanted for loopback."""
    s = requests.Session()
    s.trust_env = False
    s.verify = False
    return s


# -- drop links -----------------------------------------------------------------

@dataclasses.dataclass
class Link:
    id: str
    token: str
    printed_url: str
    stdout: str


def cli(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`dropvault ARGS` on the server's data folder with the server's own
    settings (its DROPVAULT_* environment: [http], [limits], storage)."""
    settings = {k: v for k, v in server.env().items() if k.startswith("DROPVAULT_")}
    return run_cli(list(args), server.data_dir, stdin=stdin, extra_env=settings)


def create_link(server, *args: str, user: str = "alice", password: str | None = None) -> Link:
    """`dropvault link create --user USER ARGS` (with `--password`, the
    password on stdin); the link's id and token from what it prints."""
    cmd = ["link", "create", "--user", user, *args]
    if password is not None:
        cmd.append("--password")
    r = cli(server, *cmd, stdin=None if password is None else password + "\n")
    assert r.returncode == 0, f"link create failed: {r.stdout}{r.stderr}"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2, r.stdout
    m = re.match(r"^link (\S+) for ", lines[0])
    assert m, f"first line is not `link ID for USER: ...`: {lines[0]!r}"
    url = lines[-1].strip()
    t = TOKEN_URL.search(url)
    assert t, f"last line is not the link's URL: {url!r}"
    return Link(id=m[1], token=t["token"], printed_url=url, stdout=r.stdout)


def link_list(server) -> list[dict]:
    r = cli(server, "link", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def drop_url(server, token: str, rest: str = "") -> str:
    return f"{https_url(server)}/d/{token}{rest}"


def uploads_url(server, token: str) -> str:
    """The link's tus creation URL."""
    return drop_url(server, token, "/uploads")


# -- tus ------------------------------------------------------------------------

def metadata(**fields: str) -> str:
    """An Upload-Metadata value: `key base64(value)` pairs."""
    return ",".join(f"{k} {base64.b64encode(v.encode('utf-8')).decode()}"
                    for k, v in fields.items())


def tus_upload(url: str, data: bytes, filename: str, chunk_size: int | None = None,
               headers: dict[str, str] | None = None, checksum: bool = False, **meta: str):
    """Uploads `data` with tuspy to the creation URL `url` (a link's
    /d/TOKEN/uploads, or the account's /uploads with a session cookie in
    `headers`), in PATCHes of `chunk_size` (default: one PATCH). Returns
    the tuspy Uploader (its `.url` is the upload's URL). Raises tuspy's
    TusCommunicationError / TusUploadFailed on a refusal."""
    import io

    from tusclient.client import TusClient

    client = TusClient(url, headers=dict(headers or {}))
    kwargs = {"chunk_size": chunk_size} if chunk_size else {}
    uploader = client.uploader(file_stream=io.BytesIO(data), verify_tls_cert=False,
                               metadata={"filename": filename, **meta},
                               upload_checksum=checksum, **kwargs)
    uploader.upload()
    return uploader


def tus_create(url: str, length: int, filename: str | None = "file.bin",
               headers: dict[str, str] | None = None, body: bytes | None = None,
               sess: requests.Session | None = None, **meta: str) -> requests.Response:
    """A bare tus creation POST (with `body`: creation-with-upload)."""
    h = {**TUS, "Upload-Length": str(length)}
    fields = dict(meta)
    if filename is not None:
        fields = {"filename": filename, **fields}
    if fields:
        h["Upload-Metadata"] = metadata(**fields)
    if body is not None:
        h["Content-Type"] = OCTETS
    h.update(headers or {})
    return (sess or requests).post(url, headers=h, data=body, verify=False,
                                   timeout=HTTP_TIMEOUT)


def location(server, response: requests.Response) -> str:
    """The absolute URL of a creation's Location (an absolute path)."""
    loc = response.headers.get("Location")
    assert loc, f"no Location: {response.status_code} {response.headers}"
    return loc if loc.startswith("https://") else https_url(server) + loc


def tus_patch(url: str, offset: int, data: bytes, headers: dict[str, str] | None = None,
              sess: requests.Session | None = None) -> requests.Response:
    h = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
    h.update(headers or {})
    return (sess or requests).patch(url, headers=h, data=data, verify=False,
                                    timeout=HTTP_TIMEOUT)


def tus_head(url: str, headers: dict[str, str] | None = None,
             sess: requests.Session | None = None) -> requests.Response:
    return (sess or requests).head(url, headers={**TUS, **(headers or {})}, verify=False,
                                   timeout=HTTP_TIMEOUT)


def sha1_header(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


def cut_patch(server, upload_url: str, offset: int, data: bytes, send: int,
              total: int | None = None) -> None:
    """A PATCH from `offset` announcing len(data) bytes (or `total`) that
    sends only the first `send` of them over a raw TLS connection, then
    resets the connection: a client that lost its network mid-upload."""
    from dvclients import reset_close

    path = upload_url.split("://", 1)[1]
    hostport, path = path.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    conn = tls_context().wrap_socket(raw, server_hostname=host)
    head = (f"PATCH /{path} HTTP/1.1\r\nHost: {hostport}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {OCTETS}\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {total if total is not None else len(data)}\r\n\r\n")
    conn.sendall(head.encode())
    view = memoryview(data)[:send]
    for i in range(0, len(view), 1 << 16):
        conn.sendall(view[i:i + (1 << 16)])
    reset_close(conn)


def finish_after_cut(url: str, data: bytes, timeout: float = 30) -> tuple[int, requests.Response]:
    """Finishes an upload whose PATCH was cut: HEAD, then one PATCH of the
    rest from the offset HEAD gave. While the server is still winding the
    cut PATCH up it may answer 423 (or a HEAD offset that moved on: 409);
    then it is asked again. Returns (the offset the finishing PATCH
    started from, its response)."""
    deadline = time.monotonic() + timeout
    while True:
        head = tus_head(url)
        assert head.status_code == 200, (head.status_code, head.text)
        assert head.headers.get("Cache-Control", "").lower() == "no-store", head.headers
        offset = int(head.headers["Upload-Offset"])
        r = tus_patch(url, offset, data[offset:])
        if r.status_code not in (409, 423):
            return offset, r
        assert time.monotonic() < deadline, f"the cut PATCH was never let go: {r.status_code}"
        time.sleep(0.2)


# -- reading back -------------------------------------------------------------

def ftp_read(server, path: str, user: str = "alice", password: str | None = None) -> bytes:
    """A file's bytes over plain FTP, as the account's owner reads them."""
    from dvclients import PASSWORD

    with ftp_plain(server, user=user, password=password or PASSWORD) as ftp:
        return retr(ftp, path)


def ftp_names(server, folder: str, user: str = "alice", password: str | None = None
              ) -> list[str]:
    """Names in a vault folder (MLSD, files and folders), sorted."""
    from dvclients import PASSWORD, mlsd

    with ftp_plain(server, user=user, password=password or PASSWORD) as ftp:
        try:
            return sorted(mlsd(ftp, folder))
        except ftplib.error_perm:
            return []


def marker_dirs(server, request) -> list[pathlib.Path]:
    """Where the server's bytes may rest: its data folder, and on S3 the
    shared Garage cluster's data folders."""
    dirs = [server.data_dir]
    if server.backend == "s3":
        dirs += list(request.getfixturevalue("garage").data_dirs)
    return dirs


def marker_hits(server, request) -> list[pathlib.Path]:
    return [hit for d in marker_dirs(server, request) for hit in find_marker(d)]


def files_holding(root: pathlib.Path, needle: bytes) -> list[pathlib.Path]:
    """Every regular file under `root` whose bytes contain `needle`."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = pathlib.Path(dirpath, name)
            if p.is_symlink() or not p.is_file():
                continue
            try:
                if needle in p.read_bytes():
                    hits.append(p)
            except OSError:
                continue
    return hits
