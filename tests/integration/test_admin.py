"""The admin listener: /metrics counts what FTP (ftplib, curl) and SFTP
(paramiko) clients did, a failed login and a scan verdict from a real
clamd; /healthz and /readyz, which names the key service while OpenBao is
down; and the bearer token."""

from __future__ import annotations

import ftplib
import io
import json
import re
import urllib.error
import urllib.request

import pytest

from clamd import EICAR
from dvclients import PASSWORD, USER, curl, ftp_plain, ftp_url, paramiko_sftp, payload, retr, \
    stor, wait_until
from dvdrop import create_link, tus_upload, uploads_url
from test_transit import transit

TOKEN = "admin-token-5521"
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def get(server, path: str, token: str | None = TOKEN) -> tuple[int, str]:
    """(status, body) of GET `path` on the server's admin listener."""
    req = urllib.request.Request(f"http://127.0.0.1:{server.admin_port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(server, token: str | None = TOKEN) -> dict[tuple[str, frozenset], float]:
    """/metrics parsed: (name, labels) -> value."""
    status, text = get(server, "/metrics", token)
    assert status == 200, text
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
            out[(m["name"], labels)] = float(m["value"])
    return out


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, frozenset(labels.items()))
    assert key in after, f"{name}{labels} not exposed"
    return after[key] - before.get(key, 0.0)


# The drop link's upload goes to the self-signed HTTPS listener.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_metrics_count_logins_transfers_and_scans(dropvault, clamd, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    server = dropvault(scan_clamd=clamd.unix, admin_token_file=str(token_file))
    assert server.admin_port
    # The token: none or a wrong one is refused on every path.
    for path in ("/metrics", "/healthz", "/readyz"):
        assert get(server, path, token=None)[0] == 401
        assert get(server, path, token="admin-token-5522")[0] == 401
    assert get(server, "/healthz") == (200, "ok\n")
    status, body = get(server, "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}, body

    before = samples(server)
    data = payload(150_000)
    with ftp_plain(server) as ftp:
        stor(ftp, "ftp.bin", data)
        assert retr(ftp, "ftp.bin") == data
        with pytest.raises(ftplib.error_perm):
            stor(ftp, "eicar.com", EICAR)
    got = tmp_path / "curl.bin"
    r = curl("-o", str(got), "--user", f"{USER}:{PASSWORD}", ftp_url(server, "/ftp.bin"))
    assert r.returncode == 0 and got.read_bytes() == data, r.stderr
    with pytest.raises(ftplib.error_perm):
        ftp_plain(server, password="not-the-password")
    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD)
    try:
        sftp.putfo(io.BytesIO(data[:70_000]), "sftp.bin")
        out = io.BytesIO()
        sftp.getfo("sftp.bin", out)
        assert out.getvalue() == data[:70_000]
    finally:
        client.close()
    # Through a drop link: counted as https (its session is the owner's).
    link = create_link(server)
    tus_upload(uploads_url(server, link.token), data[:50_000], "link.bin")
    # Sessions end (and their gauge goes down) once the server sees the close.
    def idle():
        now = samples(server)
        return all(now[("dropvault_sessions_active", frozenset({("protocol", p)}))] == 0
                   for p in ("ftp", "sftp"))

    assert wait_until(idle)
    after = samples(server)

    assert delta(before, after, "dropvault_logins_total", protocol="ftp", outcome="ok") == 2
    assert delta(before, after, "dropvault_logins_total", protocol="ftp", outcome="failed") == 1
    assert delta(before, after, "dropvault_logins_total", protocol="sftp", outcome="ok") == 1
    assert delta(before, after, "dropvault_sessions_total", protocol="ftp") == 2
    assert delta(before, after, "dropvault_sessions_total", protocol="sftp") == 1
    for proto, size, downloads in (("ftp", len(data), 2), ("sftp", 70_000, 1)):
        assert delta(before, after, "dropvault_transfer_files_total",
                     protocol=proto, direction="in") == 1
        assert delta(before, after, "dropvault_transfer_bytes_total",
                     protocol=proto, direction="in") == size
        assert delta(before, after, "dropvault_transfer_files_total",
                     protocol=proto, direction="out") == downloads
        assert delta(before, after, "dropvault_transfer_bytes_total",
                     protocol=proto, direction="out") == size * downloads
        assert delta(before, after, "dropvault_upload_duration_seconds_count",
                     protocol=proto) == 1
    assert delta(before, after, "dropvault_logins_total", protocol="https", outcome="ok") == 1
    assert delta(before, after, "dropvault_transfer_files_total",
                 protocol="https", direction="in") == 1
    assert delta(before, after, "dropvault_transfer_bytes_total",
                 protocol="https", direction="in") == 50_000
    assert delta(before, after, "dropvault_scans_total", verdict="clean") == 3
    assert delta(before, after, "dropvault_scans_total", verdict="infected") == 1
    assert delta(before, after, "dropvault_scan_wait_seconds_count") == 4
    # The local provider unwrapped the user's key at least once.
    assert delta(before, after, "dropvault_key_calls_total", operation="unwrap") >= 1
    assert after[("dropvault_storage_errors_total", frozenset())] == 0


def test_readyz_names_the_key_service_while_it_is_down(dropvault, bao):
    bao.create_key("dv-admin", "aes256-gcm96")
    server = dropvault(**transit(bao, "dv-admin"))
    assert get(server, "/readyz", token=None) == (200, '{"ready":true}\n')
    bao.stop()
    try:
        def not_ready():
            status, body = get(server, "/readyz", token=None)
            return status == 503 and json.loads(body)

        answer = wait_until(not_ready, timeout=30)
        assert answer["ready"] is False and answer["failing"] == ["key service"], answer
        assert answer["reason"] == "key service unavailable", answer
        assert get(server, "/healthz", token=None) == (200, "ok\n")
        assert server.wait_for_event("not_ready")
        assert delta({}, samples(server, token=None), "dropvault_key_errors_total",
                     kind="transient") >= 1
    finally:
        bao.start()
    assert wait_until(lambda: get(server, "/readyz", token=None)[0] == 200, timeout=30)

