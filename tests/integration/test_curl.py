"""curl against dropvault: plain FTP, explicit FTPS (--ssl-reqd), implicit
FTPS (ftps://), resumed downloads and uploads (-C -)."""

import pytest

from dvclients import (MAGIC, PASSWORD, SEGMENT, USER, curl, ftp_plain, ftp_url,
                       interrupted_upload, mlsd, payload, sealed_len, stor)

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

AUTH = ("-u", f"{USER}:{PASSWORD}")


@pytest.mark.local_only  # looks into the local storage folder
def test_curl_plain_upload_download_list(server, payload_file, tmp_path):
    src = payload_file(300_000)
    r = curl(*AUTH, "-T", str(src), ftp_url(server, "/plain.bin"))
    assert r.returncode == 0, r.stderr

    out = tmp_path / "out.bin"
    r = curl(*AUTH, "-o", str(out), ftp_url(server, "/plain.bin"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()

    r = curl(*AUTH, ftp_url(server, "/"))
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.endswith(" plain.bin"))
    assert " 300000 " in line, line

    # On disk: a sealed file of exactly the size FORMAT.md gives.
    stored = server.user_dir() / "plain.bin"
    assert stored.stat().st_size == sealed_len(300_000)
    assert stored.read_bytes()[:8] == MAGIC


def _roundtrips(server, payload_file, tmp_path, *, implicit):
    scheme = "ftps" if implicit else "ftp"
    tls = ["-k"] if implicit else ["--ssl-reqd", "-k"]
    # Several files, so that an intermittent failure cannot hide.
    for i in range(10):
        src = payload_file(256 * 1024 + i * 7919)
        url = ftp_url(server, f"/tls-{i}.bin", scheme=scheme, implicit=implicit)
        r = curl(*tls, *AUTH, "-T", str(src), url)
        assert r.returncode == 0, f"upload {i}: {r.stderr}"
        out = tmp_path / f"back-{i}.bin"
        r = curl(*tls, *AUTH, "-o", str(out), url)
        assert r.returncode == 0, f"download {i}: {r.stderr}"
        assert out.read_bytes() == src.read_bytes()


def test_curl_explicit_ftps_roundtrips(server, payload_file, tmp_path):
    _roundtrips(server, payload_file, tmp_path, implicit=False)


def test_curl_implicit_ftps_roundtrips(server, payload_file, tmp_path):
    assert server.implicit_port
    _roundtrips(server, payload_file, tmp_path, implicit=True)


@pytest.mark.parametrize("tls_max", ["1.3", "1.2"])
def test_curl_many_ftps_transfers_on_one_control_connection(server, payload_file, tmp_path,
                                                             tls_max):
    """curl --next keeps one control connection; with OpenSSL it offers
    each TLS 1.3 ticket once, so every download must leave it a new one.
    More transfers than the server keeps sessions for.

    Over TLS 1.3 the upload runs on its own connection: curl 7.x then
    offers no session at all on the next data connection, against any
    server (curl issue 4654), so no server can accept it."""
    src = payload_file(200_000 + SEGMENT)
    url = ftp_url(server, "/many.bin")
    opts = ["--ssl-reqd", "-k", "--tls-max", tls_max, *AUTH]
    upload = [*opts, "-T", str(src), url]
    args = [] if tls_max == "1.3" else [*upload, "--next"]
    if tls_max == "1.3":
        r = curl(*upload)
        assert r.returncode == 0, r.stderr
    outs = [tmp_path / f"many-{i}.bin" for i in range(12)]
    for i, out in enumerate(outs):
        args += [*(["--next"] if i else []), *opts, "-o", str(out), url]
    r = curl(*args)
    assert r.returncode == 0, r.stderr
    for out in outs:
        assert out.read_bytes() == src.read_bytes(), out
    # One control connection for the downloads.
    assert len(server.events("login", user=USER)) == (2 if tls_max == "1.3" else 1)


def test_curl_explicit_ftps_large_upload_and_download(server, payload_file, tmp_path):
    src = payload_file(5 * 1024 * 1024)
    url = ftp_url(server, "/big.bin")
    r = curl("--ssl-reqd", "-k", *AUTH, "-T", str(src), url)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "big.out"
    r = curl("--ssl-reqd", "-k", *AUTH, "-o", str(out), url)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()
    login = server.events("login", user=USER)
    assert login and all(e["encrypted"] is True for e in login)


def test_curl_implicit_ftps_download(server, tmp_path):
    data = payload(700_000)
    with ftp_plain(server) as ftp:
        stor(ftp, "implicit.bin", data)
    out = tmp_path / "out.bin"
    r = curl("-k", *AUTH, "-o", str(out), ftp_url(server, "/implicit.bin", "ftps", implicit=True))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-ftps"])
def test_curl_resumed_download(server, tmp_path, tls):
    data = payload(3 * SEGMENT + 12345)
    with ftp_plain(server) as ftp:
        stor(ftp, "resume.bin", data)
    opts = ["--ssl-reqd", "-k"] if tls else []
    # A download that broke off inside the second segment.
    for cut in (1, SEGMENT + 17, 2 * SEGMENT):
        part = tmp_path / f"part-{cut}.bin"
        part.write_bytes(data[:cut])
        r = curl(*opts, *AUTH, "-C", "-", "-o", str(part), ftp_url(server, "/resume.bin"))
        assert r.returncode == 0, r.stderr
        assert part.read_bytes() == data, f"resumed at {cut}"
    # It really resumed: the server logged downloads of the remainders only.
    sent = sorted(int(e["bytes"]) for e in server.events("download", path="/resume.bin"))
    assert sent == sorted(len(data) - c for c in (1, SEGMENT + 17, 2 * SEGMENT))


@pytest.mark.local_only  # looks into the local storage folder
def test_curl_resumed_upload_after_interruption(server, tmp_path):
    """curl -C - -T asks SIZE for the resume point and sends the rest with
    APPE; the file must end up whole."""
    data = payload(48 * SEGMENT + 999)
    interrupted_upload(server, "upload.bin", data)
    with ftp_plain(server) as ftp:
        assert "upload.bin" not in mlsd(ftp), "an interrupted upload appeared under its name"
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    r = curl(*AUTH, "-C", "-", "-T", str(src), ftp_url(server, "/upload.bin"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "back.bin"
    r = curl(*AUTH, "-o", str(out), ftp_url(server, "/upload.bin"))
    assert r.returncode == 0, r.stderr
    back = out.read_bytes()
    assert len(back) == len(data)
    assert back == data
