"""The web drop's tus 1.0.0 endpoint (issue 17) against real clients:
tuspy (the tus project's Python client) for creation, single and chunked
PATCH uploads, checksums and empty files; requests and a raw TLS socket for
what a well-behaved client never sends (wrong offsets, bad checksums, too
many bytes, a PATCH cut mid-body). Every upload goes through a drop link
(`dropvault link create`) and is read back byte for byte over FTP as the
link's user; every uploaded file carries the plaintext marker, which must
not rest anywhere (the data folder; on S3 the Garage data folders)."""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib

import pytest
import requests
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from dvclients import SEGMENT, USER, ftp_plain, payload, stor
from dvdrop import (OCTETS, TUS, create_link, cut_patch, finish_after_cut, ftp_names,
                    https_url, ftp_read, location, marker_hits, metadata, session, sha1_header,
                    tus_create, tus_head, tus_patch, tus_upload, uploads_url)

# The server's certificate is self-signed on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

MIB = 1 << 20


@pytest.fixture
def web(dropvault):
    """Factory: a server with its HTTPS listener on a port of its own
    (plus any settings), and a drop link of alice's into /incoming:
    returns (server, link)."""
    def start(link_args: tuple[str, ...] = (), **settings):
        server = dropvault(http_listen="127.0.0.1:0", **settings)
        return server, create_link(server, *link_args)
    return start


# -- capabilities ---------------------------------------------------------------

def test_options_announces_version_extensions_and_checksums(web):
    """OPTIONS (no Tus-Resumable needed) tells a client what it may use."""
    server, link = web()
    r = requests.options(uploads_url(server, link.token), verify=False, timeout=30)
    assert r.status_code in (200, 204), (r.status_code, r.text)
    assert "1.0.0" in [v.strip() for v in r.headers["Tus-Version"].split(",")]
    extensions = {e.strip() for e in r.headers["Tus-Extension"].split(",")}
    assert {"creation", "creation-with-upload", "termination", "expiration",
            "checksum"} <= extensions, extensions
    algorithms = {a.strip() for a in r.headers["Tus-Checksum-Algorithm"].split(",")}
    assert {"sha1", "sha256"} <= algorithms
    assert r.headers.get("Tus-Resumable") == "1.0.0"
    # No limit configured: no Tus-Max-Size.
    assert "Tus-Max-Size" not in r.headers


# -- uploads that work ---------------------------------------------------------

@pytest.mark.both_backends
def test_tuspy_upload_is_byte_exact_sealed_and_logged(web, request):
    """A 6 MiB + 3 upload in one PATCH lands in the link's folder, reads
    back byte for byte over FTP, rests sealed (no marker on storage) and
    is logged as an upload over https."""
    server, link = web()
    data = payload(6 * MIB + 3)
    uploader = tus_upload(uploads_url(server, link.token), data, "big.bin")
    assert "/d/" + link.token + "/uploads/" in uploader.url
    assert ftp_read(server, "/incoming/big.bin") == data
    assert marker_hits(server, request) == []
    events = server.wait_for_event("upload", protocol="https", path="/incoming/big.bin")
    assert events, "no upload event with protocol https"
    assert int(events[0]["size"]) == len(data)
    assert events[0].get("user") == USER


@pytest.mark.both_backends
def test_tuspy_chunks_of_odd_sizes(web, request):
    """Several PATCHes: 1 MiB chunks, and chunks of 1 MiB + 4097 bytes
    (not a multiple of the 64 KiB segment), both byte-exact."""
    server, link = web()
    for name, chunk in (("mib.bin", MIB), ("odd.bin", MIB + 4097)):
        data = payload(4 * MIB + 12345)
        uploader = tus_upload(uploads_url(server, link.token), data, name, chunk_size=chunk)
        assert uploader.offset == len(data)
        assert ftp_read(server, f"/incoming/{name}") == data
    assert marker_hits(server, request) == []


def test_creation_with_upload(web):
    """A creation POST carrying the whole body: 201 with Upload-Offset at
    the end, and the file is committed."""
    server, link = web()
    data = payload(200_000)
    r = tus_create(uploads_url(server, link.token), len(data), "withbody.bin", body=data)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers.get("Upload-Offset") == str(len(data))
    assert r.headers.get("Tus-Resumable") == "1.0.0"
    assert ftp_read(server, "/incoming/withbody.bin") == data

    # Part of the body with the creation, the rest in a PATCH.
    data = payload(300_000)
    r = tus_create(uploads_url(server, link.token), len(data), "half.bin", body=data[:100_000])
    assert r.status_code == 201, (r.status_code, r.text)
    offset = int(r.headers["Upload-Offset"])
    assert 0 <= offset <= 100_000
    r2 = tus_patch(location(server, r), offset, data[offset:])
    assert r2.status_code == 204, (r2.status_code, r2.text)
    assert ftp_read(server, "/incoming/half.bin") == data


def test_empty_file_is_committed_at_creation(web):
    """Upload-Length 0 commits an empty file at once (tuspy sends no PATCH)."""
    server, link = web()
    tus_upload(uploads_url(server, link.token), b"", "empty.txt")
    with ftp_plain(server) as ftp:
        assert ftp.size("/incoming/empty.txt") == 0
    assert ftp_read(server, "/incoming/empty.txt") == b""


def test_upload_expires_is_about_seven_days_ahead(web):
    """The expiration extension: Upload-Expires about 7 days ahead, and
    Location is the upload's absolute path under the link."""
    server, link = web()
    r = tus_create(uploads_url(server, link.token), 10, "later.bin")
    assert r.status_code == 201, (r.status_code, r.text)
    expires = email.utils.parsedate_to_datetime(r.headers["Upload-Expires"])
    ahead = expires - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=6) < ahead <= datetime.timedelta(days=7, minutes=5), ahead
    loc = r.headers["Location"]
    assert loc.startswith(f"/d/{link.token}/uploads/"), loc


# -- resuming -------------------------------------------------------------------

@pytest.mark.both_backends
def test_resume_after_a_cut_connection(web, request):
    """A PATCH cut after 2.5 MiB of 8 MiB (TCP reset): HEAD reports an
    offset no further than what was sent, the rest from there completes
    the file byte for byte."""
    server, link = web()
    data = payload(8 * MIB)
    r = tus_create(uploads_url(server, link.token), len(data), "cut.bin")
    assert r.status_code == 201, (r.status_code, r.text)
    url = location(server, r)
    sent = 40 * SEGMENT + SEGMENT // 2
    cut_patch(server, url, 0, data, sent)
    offset, done = finish_after_cut(url, data)
    assert 0 <= offset <= sent, offset
    assert done.status_code == 204, (done.status_code, done.text)
    assert done.headers["Upload-Offset"] == str(len(data))
    assert ftp_read(server, "/incoming/cut.bin") == data
    assert marker_hits(server, request) == []


@pytest.mark.both_backends
def test_resume_after_a_server_restart(web, request):
    """Half an upload, then the server is killed (SIGKILL) and started
    again: HEAD on the same upload path reports an offset no further than
    what was acknowledged, and the rest completes the file."""
    server, link = web()
    data = payload(5 * MIB + 777)
    r = tus_create(uploads_url(server, link.token), len(data), "restart.bin")
    assert r.status_code == 201, (r.status_code, r.text)
    path = r.headers["Location"]
    first = 3 * MIB
    r = tus_patch(location(server, r), 0, data[:first])
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(first)
    server.kill()
    server.start()
    url = https_url(server) + path
    head = tus_head(url)
    assert head.status_code == 200, (head.status_code, head.text)
    offset = int(head.headers["Upload-Offset"])
    assert 0 <= offset <= first, offset
    assert head.headers["Upload-Length"] == str(len(data))
    r = tus_patch(url, offset, data[offset:])
    assert r.status_code == 204, (r.status_code, r.text)
    assert ftp_read(server, "/incoming/restart.bin") == data
    assert marker_hits(server, request) == []


# -- refusals ---------------------------------------------------------------------

def test_wrong_offset_is_409(web):
    """A PATCH from anywhere but the upload's offset is refused with 409
    and the offset it can continue from."""
    server, link = web()
    data = payload(100_000)
    r = tus_create(uploads_url(server, link.token), len(data), "off.bin")
    url = location(server, r)
    r = tus_patch(url, 5, data[5:])
    assert r.status_code == 409 and r.headers.get("Upload-Offset") == "0", r.status_code
    assert tus_patch(url, 0, data[:50_000]).status_code == 204
    assert tus_head(url).headers["Upload-Offset"] == "50000"
    assert tus_patch(url, 50_000, data[50_000:]).status_code == 204
    assert ftp_read(server, "/incoming/off.bin") == data
    # A finished upload takes no more.
    assert tus_patch(url, 0, b"").status_code == 409


def test_refusals_before_the_body_is_read_reach_the_client(web):
    """The server refuses some requests before reading their bodies (a
    terminated upload, a missing Tus-Resumable, a wrong content type): it
    reads and drops what is left of the body first, so the reply is not
    lost to a connection reset under the sender, and the kept-alive
    connection goes on serving."""
    server, link = web()
    # Under the 4 MiB the server reads off a refused body; reliably
    # reset under the reply when it read none.
    body = payload(3 * MIB)
    url = location(server, tus_create(uploads_url(server, link.token), len(body), "r.bin"))
    assert requests.delete(url, headers=TUS, verify=False, timeout=30).status_code == 204
    live = location(server, tus_create(uploads_url(server, link.token), len(body), "l.bin"))
    s = session()
    for _ in range(3):
        assert tus_patch(url, 0, body, sess=s).status_code == 404
        r = s.patch(live, headers={"Upload-Offset": "0", "Content-Type": OCTETS},
                    data=body, timeout=30)
        assert r.status_code == 412, r.status_code
        r = tus_patch(live, 0, body, headers={"Content-Type": "text/plain"}, sess=s)
        assert r.status_code == 415, r.status_code
    assert tus_head(live).headers["Upload-Offset"] == "0"
    assert s.get(f"{https_url(server)}/assets/style.css", timeout=30).status_code == 200


def test_a_refused_patch_leaves_the_upload_where_it_was(web):
    """After a chunk HEAD says 50000; a PATCH from 0 (a client's stale
    retry) or from 60000 must get 409 and leave the offset at 50000."""
    server, link = web()
    data = payload(100_000)
    url = location(server, tus_create(uploads_url(server, link.token), len(data), "rew.bin"))
    assert tus_patch(url, 0, data[:50_000]).status_code == 204
    assert tus_head(url).headers["Upload-Offset"] == "50000"
    r = tus_patch(url, 60_000, b"")
    assert r.status_code == 409 and r.headers.get("Upload-Offset") == "50000", r.headers
    assert tus_head(url).headers["Upload-Offset"] == "50000"
    r = tus_patch(url, 0, b"")
    assert r.status_code == 409, (r.status_code, r.text)
    assert tus_head(url).headers["Upload-Offset"] == "50000"


def test_checksums_right_and_wrong(web):
    """Upload-Checksum sha1 that matches: 204; one that does not: 460 and
    nothing of that PATCH is kept (the offset does not move)."""
    server, link = web()
    data = payload(300_000)
    r = tus_create(uploads_url(server, link.token), len(data), "sum.bin")
    url = location(server, r)
    first = data[:100_000]
    r = tus_patch(url, 0, first, headers={"Upload-Checksum": sha1_header(first)})
    assert r.status_code == 204, (r.status_code, r.text)
    rest = data[100_000:]
    r = tus_patch(url, 100_000, rest, headers={"Upload-Checksum": sha1_header(rest[:-1])})
    assert r.status_code == 460, (r.status_code, r.text)
    assert tus_head(url).headers["Upload-Offset"] == "100000"
    # sha256 is offered too.
    digest = base64.b64encode(hashlib.sha256(rest).digest()).decode()
    r = tus_patch(url, 100_000, rest, headers={"Upload-Checksum": f"sha256 {digest}"})
    assert r.status_code == 204, (r.status_code, r.text)
    assert ftp_read(server, "/incoming/sum.bin") == data
    # tuspy's own checksums (sha1 on every PATCH) pass.
    data2 = payload(2 * MIB + 1)
    tus_upload(uploads_url(server, link.token), data2, "tuspy-sum.bin", chunk_size=MIB,
               checksum=True)
    assert ftp_read(server, "/incoming/tuspy-sum.bin") == data2


def test_protocol_refusals(web):
    """412 without Tus-Resumable, 415 for a PATCH of another content type,
    413 for more bytes than Upload-Length, 400 for a deferred length."""
    server, link = web()
    url = uploads_url(server, link.token)
    r = requests.post(url, headers={"Upload-Length": "10",
                                    "Upload-Metadata": metadata(filename="x.bin")},
                      verify=False, timeout=30)
    assert r.status_code == 412, (r.status_code, r.text)
    r = requests.post(url, headers={**TUS, "Upload-Defer-Length": "1",
                                    "Upload-Metadata": metadata(filename="x.bin")},
                      verify=False, timeout=30)
    assert r.status_code == 400, (r.status_code, r.text)

    r = tus_create(url, 100, "x.bin")
    assert r.status_code == 201
    up = location(server, r)
    r = requests.patch(up, headers={"Upload-Offset": "0", "Content-Type": OCTETS},
                       data=b"a" * 100, verify=False, timeout=30)
    assert r.status_code == 412, (r.status_code, r.text)
    r = tus_patch(up, 0, b"a" * 100, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 415, (r.status_code, r.text)
    r = tus_patch(up, 0, b"a" * 200)
    assert r.status_code == 413, (r.status_code, r.text)
    assert tus_head(up).headers["Upload-Offset"] == "0"
    assert "x.bin" not in ftp_names(server, "/incoming")


def test_termination(web):
    """DELETE drops a partial upload: 204, then HEAD 404, and no file."""
    server, link = web()
    data = payload(500_000)
    r = tus_create(uploads_url(server, link.token), len(data), "gone.bin")
    url = location(server, r)
    assert tus_patch(url, 0, data[:200_000]).status_code == 204
    r = requests.delete(url, headers=TUS, verify=False, timeout=30)
    assert r.status_code == 204, (r.status_code, r.text)
    assert tus_head(url).status_code == 404
    assert tus_patch(url, 200_000, b"").status_code == 404
    assert "gone.bin" not in ftp_names(server, "/incoming")


def test_filenames_are_sanitised_and_never_collide(web):
    """A filename with a path and a control character lands as a plain
    name in the link's folder (nothing outside it); the same name again
    gets " (1)"."""
    server, link = web()
    evil = "../../etc/pa\x01ss"
    a, b = payload(1000), payload(2000)
    tus_upload(uploads_url(server, link.token), a, evil)
    tus_upload(uploads_url(server, link.token), b, evil)
    names = ftp_names(server, "/incoming")
    assert len(names) == 2, names
    for name in names:
        assert not any(c in name for c in "/\\") and ".." not in name, names
        assert all(ord(c) >= 0x20 and ord(c) != 0x7f for c in name), names
    first, second = sorted(names, key=len)
    assert first.startswith("pa") and first.endswith("ss"), names
    assert second == first + " (1)", names
    assert ftp_read(server, f"/incoming/{first}") == a
    assert ftp_read(server, f"/incoming/{second}") == b
    assert ftp_names(server, "/") == ["incoming"]


def test_max_upload_bytes_refuses_at_creation(web):
    """http.max_upload_bytes: announced as Tus-Max-Size, a creation over it
    is 413 at once, a file of exactly that size goes through."""
    server, link = web(http_max_upload_bytes=str(MIB))
    url = uploads_url(server, link.token)
    r = requests.options(url, verify=False, timeout=30)
    assert r.headers.get("Tus-Max-Size") == str(MIB)
    r = tus_create(url, MIB + 1, "too-big.bin")
    assert r.status_code == 413, (r.status_code, r.text)
    data = payload(MIB)
    tus_upload(url, data, "just-fits.bin")
    assert ftp_read(server, "/incoming/just-fits.bin") == data
    assert ftp_names(server, "/incoming") == ["just-fits.bin"]


def test_quota_refuses_web_uploads(web):
    """limits.quota_bytes counts for web uploads as for FTP: an upload
    that would pass the quota is refused (at creation or at its PATCH) and
    leaves no file."""
    server, link = web(limits_quota_bytes="1MiB")
    with ftp_plain(server) as ftp:
        stor(ftp, "ftp.bin", payload(700_000))
    url = uploads_url(server, link.token)
    data = payload(600_000)
    try:
        tus_upload(url, data, "over.bin")
    except (TusCommunicationError, TusUploadFailed) as e:
        assert e.status_code in (403, 413, 507), (e.status_code, e.response_content)
    else:
        pytest.fail("an upload over the quota was accepted")
    assert "over.bin" not in ftp_names(server, "/incoming")
    small = payload(100_000)
    tus_upload(url, small, "under.bin")
    assert ftp_read(server, "/incoming/under.bin") == small

