"""Drop links (issue 17) and the account's JSON API, with real clients:
`dropvault link create/list/revoke` and what a link may do over HTTPS
(upload into its folder, never list, download or overwrite; expiry,
upload and byte budgets, passwords with the same bans as FTP/SFTP, rate
limits), driven by tuspy and requests; the account API (login, listing,
downloads with ranges, logout) with requests, files put there over FTP."""

from __future__ import annotations

import json
import re

import pytest
import requests
from tusclient.exceptions import TusCommunicationError

from dvclients import PASSWORD, USER, Raw, ftp_plain, payload, stor, wait_until
from dvdrop import (TUS, cli, create_link, drop_url, files_holding, ftp_names, ftp_read,
                    https_url, link_list, location, session, tus_create, tus_patch,
                    tus_upload, uploads_url)

# The server's certificate is self-signed on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

LINK_PASSWORD = "Drop-pw-5521"


@pytest.fixture
def web(dropvault):
    """Factory: a server with its HTTPS listener on a port of its own."""
    def start(**settings):
        return dropvault(http_listen="127.0.0.1:0", **settings)
    return start


def info(server, token: str, sess: requests.Session | None = None) -> requests.Response:
    return (sess or requests).get(drop_url(server, token, "/info"), verify=False, timeout=30)


# -- the CLI ----------------------------------------------------------------------

def test_link_create_prints_the_url_and_stores_only_a_hash(web):
    """`link create` prints `link ID for alice: ...` and the URL last; the
    token carries at least 128 bits (22+ base64url characters), differs
    per link, and no file under the data folder holds it."""
    server = web()
    link = create_link(server)
    first = link.stdout.splitlines()[0]
    assert re.match(rf"^link {re.escape(link.id)} for {USER}: uploads into /incoming, "
                    r"expires \d{4}-\d\d-\d\dT", first), first
    assert link.printed_url.endswith(f"/d/{link.token}")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", link.token), link.token
    other = create_link(server, "--folder", "/other", "--expires", "0")
    assert other.token != link.token and other.id != link.id
    for token in (link.token, other.token):
        assert files_holding(server.data_dir, token.encode()) == []
    # And the page is served for it.
    r = requests.get(drop_url(server, link.token), verify=False, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    body = info(server, link.token).json()
    assert body["folder"] == "/incoming" and body["password"] is False
    assert body["uploads_left"] is None and body["bytes_left"] is None
    assert info(server, other.token).json()["expires"] is None


def test_link_create_makes_the_folder(web):
    """The contract: the folder is created if missing, so the user sees
    where drops will land before the first one."""
    server = web()
    create_link(server, "--folder", "/from-clients")
    assert "from-clients" in ftp_names(server, "/")


def test_link_list_counts_uploads(web):
    """`link list` shows the link (text and --json) with its limits and what
    it let in: one upload and its bytes after one tus upload."""
    server = web()
    link = create_link(server, "--max-uploads", "5", "--max-bytes", "1MiB")
    r = cli(server, "link", "list")
    assert r.returncode == 0 and link.id in r.stdout, r.stdout + r.stderr
    (entry,) = [e for e in link_list(server) if e["id"] == link.id]
    assert entry["user"] == USER and entry["folder"] == "/incoming"
    assert entry["uploads"] == 0 and entry["bytes"] == 0
    assert entry["max_uploads"] == 5 and entry["password"] is False
    data = payload(70_000)
    tus_upload(uploads_url(server, link.token), data, "counted.bin")
    (entry,) = [e for e in link_list(server) if e["id"] == link.id]
    assert entry["uploads"] == 1 and entry["bytes"] == len(data), entry
    # Nothing of the token in the listing.
    assert link.token not in json.dumps(link_list(server))


def test_revoked_link_is_gone_everywhere(web):
    """After `link revoke` the page, /info, creation and an upload begun
    before all answer 404; revoking an unknown id exits 1."""
    server = web()
    link = create_link(server)
    r = tus_create(uploads_url(server, link.token), 100_000, "pending.bin")
    assert r.status_code == 201
    pending = location(server, r)
    assert cli(server, "link", "revoke", link.id).returncode == 0
    assert cli(server, "link", "revoke", "no-such-link").returncode == 1
    page = requests.get(drop_url(server, link.token), verify=False, timeout=30)
    assert page.status_code == 404 and "text/html" in page.headers["Content-Type"]
    assert info(server, link.token).status_code == 404
    assert tus_create(uploads_url(server, link.token), 10, "late.bin").status_code == 404
    assert tus_patch(pending, 0, b"").status_code == 404
    assert link.id not in [e["id"] for e in link_list(server)]
    assert ftp_names(server, "/incoming") == []


def test_a_link_dies_with_its_owner(web):
    """A link of a user who was deleted (their files kept) lets nothing in:
    its session finds no account to act for."""
    server = web()
    assert cli(server, "user", "add", "bob", "--password-stdin",
               stdin="bob-Pw-77311\n").returncode == 0
    link = create_link(server, user="bob")
    assert tus_create(uploads_url(server, link.token), 10, "first.bin").status_code == 201
    assert cli(server, "user", "delete", "bob").returncode == 0
    assert tus_create(uploads_url(server, link.token), 10, "late.bin").status_code == 404
    assert server.wait_for_event("link_owner_unknown", protocol="https", user="bob")


def test_expired_link_is_refused(web):
    """A link made with --expires 2s answers 404 (page, /info, creation)
    once its time is up."""
    server = web()
    link = create_link(server, "--expires", "2s")
    assert info(server, link.token).status_code in (200, 404)
    assert wait_until(lambda: info(server, link.token).status_code == 404, timeout=15)
    assert requests.get(drop_url(server, link.token), verify=False,
                        timeout=30).status_code == 404
    assert tus_create(uploads_url(server, link.token), 10, "late.bin").status_code == 404
    assert ftp_names(server, "/incoming") == []


def test_max_uploads(web):
    """--max-uploads 2: two uploads, the third creation is refused."""
    server = web()
    link = create_link(server, "--max-uploads", "2")
    assert info(server, link.token).json()["uploads_left"] == 2
    for name in ("one.bin", "two.bin"):
        tus_upload(uploads_url(server, link.token), payload(1000), name)
    r = tus_create(uploads_url(server, link.token), 1000, "three.bin")
    assert r.status_code in (403, 404), (r.status_code, r.text)
    assert ftp_names(server, "/incoming") == ["one.bin", "two.bin"]


def test_max_bytes(web):
    """--max-bytes 100000: over the remaining bytes is refused with 413."""
    server = web()
    link = create_link(server, "--max-bytes", "100000")
    url = uploads_url(server, link.token)
    assert tus_create(url, 100_001, "big.bin").status_code == 413
    data = payload(60_000)
    tus_upload(url, data, "first.bin")
    assert info(server, link.token).json()["bytes_left"] == 40_000
    assert tus_create(url, 40_001, "second.bin").status_code == 413
    rest = payload(40_000)
    tus_upload(url, rest, "exact.bin")
    assert ftp_names(server, "/incoming") == ["exact.bin", "first.bin"]


# -- what a link may not do ------------------------------------------------------------

def test_a_link_never_lists_or_downloads(web):
    """With the link's token anywhere (path, cookie, bearer), nothing
    answers 200 with the user's files or their names."""
    server = web()
    secret = payload(5000)
    with ftp_plain(server) as ftp:
        stor(ftp, "private.bin", secret)
    link = create_link(server)
    tus_upload(uploads_url(server, link.token), payload(3000), "dropped.bin")
    base = https_url(server)
    bearer = {"Authorization": f"Bearer {link.token}", "Cookie": f"dv_session={link.token}"}
    tries = [
        ("GET", f"{base}/files/private.bin", bearer),
        ("GET", f"{base}/files/incoming/dropped.bin", bearer),
        ("GET", f"{base}/api/files?path=/", bearer),
        ("GET", f"{base}/api/files?path=/incoming", bearer),
        ("GET", f"{base}/api/session", bearer),
        ("GET", drop_url(server, link.token, "/files/private.bin"), {}),
        ("GET", drop_url(server, link.token, "/incoming/dropped.bin"), {}),
        ("GET", drop_url(server, link.token, "/uploads"), TUS),
        ("PUT", drop_url(server, link.token, "/incoming/dropped.bin"), {}),
        ("PUT", f"{base}/files/private.bin", bearer),
        ("GET", drop_url(server, link.token, "/api/files"), {}),
    ]
    for method, url, headers in tries:
        r = session().request(method, url, headers=headers,
                              data=b"x" if method == "PUT" else None, timeout=30)
        assert r.status_code != 200 or (b"private.bin" not in r.content
                                        and secret[:64] not in r.content), (method, url)
        assert r.status_code in (400, 401, 403, 404, 405), (method, url, r.status_code)
    # The finished upload's URL does not give its bytes back either.
    done = tus_upload(uploads_url(server, link.token), payload(3000), "back.bin")
    r = requests.get(done.url, headers=TUS, verify=False, timeout=30)
    assert r.status_code != 200 or len(r.content) < 100, r.status_code
    assert ftp_read(server, "/private.bin") == secret


def test_a_link_never_overwrites(web):
    """The same name twice through a link: both kept, "a (1).txt" next to
    the unchanged "a.txt"."""
    server = web()
    link = create_link(server)
    first, second = payload(1500), payload(1600)
    tus_upload(uploads_url(server, link.token), first, "a.txt")
    tus_upload(uploads_url(server, link.token), second, "a.txt")
    assert ftp_names(server, "/incoming") == ["a (1).txt", "a.txt"]
    assert ftp_read(server, "/incoming/a.txt") == first
    assert ftp_read(server, "/incoming/a (1).txt") == second
    # Nor a file the user put there over FTP.
    with ftp_plain(server) as ftp:
        stor(ftp, "/incoming/b.txt", b"mine")
    tus_upload(uploads_url(server, link.token), payload(900), "b.txt")
    assert ftp_read(server, "/incoming/b.txt") == b"mine"
    assert "b (1).txt" in ftp_names(server, "/incoming")


def test_a_link_uploads_into_its_folder_only(web):
    """A `folder` metadata field and a path in the filename are ignored:
    the file lands in the link's folder under its last name component."""
    server = web()
    link = create_link(server, "--folder", "/drop/box")
    data = payload(2000)
    tus_upload(uploads_url(server, link.token), data, "sub/inner/evil.txt", folder="/")
    tus_upload(uploads_url(server, link.token), payload(10), "..\\..\\win.txt")
    assert ftp_names(server, "/drop/box") == ["evil.txt", "win.txt"]
    assert ftp_read(server, "/drop/box/evil.txt") == data
    assert ftp_names(server, "/") == ["drop"]
    assert info(server, link.token).json()["folder"] == "/drop/box"


# -- password links ------------------------------------------------------------------

def test_password_link_unlocks_with_the_right_password(web):
    """A password link: tus without the unlock cookie 401 (tuspy too), a
    wrong password 403, the right one a cookie (HttpOnly, Secure,
    SameSite=Strict, Path=/d/TOKEN) with which tuspy uploads; the password
    is stored only hashed."""
    server = web()
    link = create_link(server, password=LINK_PASSWORD)
    body = info(server, link.token).json()
    assert body["password"] is True and body["unlocked"] is False
    assert [e for e in link_list(server) if e["id"] == link.id][0]["password"] is True
    assert LINK_PASSWORD.encode() not in b"".join(
        p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    # tus without the cookie: 401.
    assert tus_create(uploads_url(server, link.token), 10, "x.bin").status_code == 401
    with pytest.raises(TusCommunicationError) as refused:
        tus_upload(uploads_url(server, link.token), b"0123456789", "x.bin")
    assert refused.value.status_code == 401
    s = session()
    unlock = drop_url(server, link.token, "/unlock")
    r = s.post(unlock, json={"password": "not-it"}, timeout=30)
    assert r.status_code == 403 and r.json() == {"error": "wrong password"}
    r = s.post(unlock, json={"password": LINK_PASSWORD}, timeout=30)
    assert r.status_code == 204, (r.status_code, r.text)
    cookie = r.headers["Set-Cookie"]
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", f"Path=/d/{link.token}"):
        assert attr.lower() in cookie.lower(), cookie
    assert info(server, link.token, sess=s).json()["unlocked"] is True
    jar = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    data = payload(300_000)
    tus_upload(uploads_url(server, link.token), data, "locked.bin", headers={"Cookie": jar})
    assert ftp_read(server, "/incoming/locked.bin") == data


def test_wrong_link_passwords_ban_the_address_for_ftp_too(web):
    """ftp.ban_after_failures wrong link passwords ban the address, as
    failed FTP/SFTP logins do: the link then answers 403 to everything
    from it, and FTP refuses it too."""
    server = web(ftp_ban_after_failures="3")
    link = create_link(server, password=LINK_PASSWORD)
    unlock = drop_url(server, link.token, "/unlock")
    replies = []
    for i in range(3):
        try:
            r = session().post(unlock, json={"password": f"guess-{i}"}, timeout=30)
            replies.append(r.status_code)
        except requests.ConnectionError:
            # The ban may close the connection of the request that made it.
            replies.append("closed")
    assert replies[:2] == [403, 403] and replies[2] in (403, "closed"), replies
    assert len(server.wait_for_event("login_failed", protocol="https", count=3)) == 3
    assert server.wait_for_event("banned", protocol="https")
    # Banned: the link refuses the address, with the right password too.
    # (The server drops a banned address's connections at accept, as FTP
    # and SFTP do, where the contract said 403: either way, nothing.)
    for attempt in (lambda: info(server, link.token, sess=session()),
                    lambda: session().get(drop_url(server, link.token), timeout=30),
                    lambda: session().post(unlock, json={"password": LINK_PASSWORD},
                                           timeout=30)):
        try:
            status = attempt().status_code
        except requests.ConnectionError:
            status = "closed"
        assert status in (403, 429, "closed"), status
    raw = Raw(server.host, server.port)
    try:
        code, text = raw.reply()
        if code == 220:
            raw.cmd(f"USER {USER}")
            code, text = raw.cmd(f"PASS {PASSWORD}")
        assert code in (421, 530), (code, text)
    finally:
        raw.close()


def test_a_link_session_does_not_forgive_failed_passwords(web):
    """Uploading through a link opens a session for its owner, but proves
    nothing about their password: wrong FTP passwords for the owner before
    it still count, and the next one bans the address."""
    server = web(ftp_ban_after_failures="3")
    link = create_link(server)

    def wrong_ftp_login() -> int:
        raw = Raw(server.host, server.port)
        try:
            code, text = raw.reply()
            assert code == 220, (code, text)
            raw.cmd(f"USER {USER}")
            return raw.cmd("PASS not-the-password")[0]
        finally:
            raw.close()

    assert [wrong_ftp_login(), wrong_ftp_login()] == [530, 530]
    tus_upload(uploads_url(server, link.token), payload(70_000), "between.bin")
    assert server.wait_for_event("upload", protocol="https", path="/incoming/between.bin")
    assert wrong_ftp_login() in (421, 530)
    assert server.wait_for_event("banned", protocol="ftp"), server.events("login_failed")


# -- rate limits ----------------------------------------------------------------------

def test_a_burst_from_one_address_gets_429(web):
    """Many quick requests from one address: some get 429 with a
    Retry-After (no timing asserted, only that the limit exists)."""
    server = web()
    link = create_link(server)
    s = session()
    url = drop_url(server, link.token, "/info")
    limited = None
    for _ in range(500):
        r = s.get(url, timeout=30)
        assert r.status_code in (200, 429), r.status_code
        if r.status_code == 429:
            limited = r
            break
    assert limited is not None, "500 requests in a burst, none refused with 429"
    assert int(limited.headers["Retry-After"]) >= 1


# -- the account's JSON API -------------------------------------------------------------

def test_account_login_listing_ranges_and_logout(web):
    """The account API: a wrong password 401, a right one the session
    cookie; the listing shows a file put there over FTP; downloads whole
    and by range (206, 416); after logout 401 again."""
    server = web()
    data = payload(100_000)
    with ftp_plain(server) as ftp:
        ftp.mkd("/docs")
        stor(ftp, "/docs/report.bin", data)
    base = https_url(server)
    s = session()
    # Not JSON: refused (a form post from another site cannot log in).
    form = session()
    r = form.post(f"{base}/api/login", data=f"user={USER}&password={PASSWORD}",
                  headers={"Content-Type": "application/x-www-form-urlencoded"},
                  timeout=30)
    assert r.status_code in (400, 415), r.status_code
    assert "dv_session" not in form.cookies
    r = s.post(f"{base}/api/login", json={"user": USER, "password": "wrong-Pw-1"}, timeout=30)
    assert r.status_code == 401 and r.json() == {"error": "login incorrect"}
    assert s.get(f"{base}/api/session", timeout=30).status_code == 401
    assert s.get(f"{base}/api/files?path=/docs", timeout=30).status_code == 401
    r = s.post(f"{base}/api/login", json={"user": USER, "password": PASSWORD}, timeout=30)
    assert r.status_code == 204, (r.status_code, r.text)
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("dv_session=")
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attr.lower() in cookie.lower(), cookie
    assert s.get(f"{base}/api/session", timeout=30).json() == {"user": USER}
    assert server.wait_for_event("login", protocol="https", user=USER)

    listing = s.get(f"{base}/api/files?path=/docs", timeout=30).json()
    assert listing["path"] == "/docs" and listing["truncated"] is False
    (entry,) = listing["entries"]
    assert entry["name"] == "report.bin" and entry["kind"] == "file"
    assert entry["size"] == len(data)
    root = s.get(f"{base}/api/files?path=/", timeout=30).json()
    assert any(e["name"] == "docs" and e["kind"] == "dir" for e in root["entries"]), root
    assert s.get(f"{base}/api/files?path=/nowhere", timeout=30).status_code == 404

    r = s.get(f"{base}/files/docs/report.bin", timeout=30)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers.get("Accept-Ranges") == "bytes"
    r = s.get(f"{base}/files/docs/report.bin", headers={"Range": "bytes=10-19"}, timeout=30)
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = s.get(f"{base}/files/docs/report.bin", headers={"Range": "bytes=999999999-"},
              timeout=30)
    assert r.status_code == 416

    assert s.post(f"{base}/api/logout", json={}, timeout=30).status_code == 204
    assert s.get(f"{base}/api/session", timeout=30).status_code == 401
    assert s.get(f"{base}/files/docs/report.bin", timeout=30).status_code == 401


def test_account_tus_upload_replaces_like_ftp(web):
    """The account's own tus endpoint (/uploads) with the session cookie:
    a file into a chosen folder, replacing one of the same name."""
    server = web()
    with ftp_plain(server) as ftp:
        ftp.mkd("/mine")
        stor(ftp, "/mine/same.bin", b"old")
    base = https_url(server)
    s = session()
    assert s.post(f"{base}/api/login", json={"user": USER, "password": PASSWORD},
                  timeout=30).status_code == 204
    jar = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    data = payload(400_000)
    tus_upload(f"{base}/uploads", data, "same.bin", headers={"Cookie": jar}, folder="/mine")
    assert ftp_read(server, "/mine/same.bin") == data
    assert ftp_names(server, "/mine") == ["same.bin"]
    # Without the cookie: 401.
    assert tus_create(f"{base}/uploads", 10, "x.bin").status_code == 401


def test_account_downloads_are_audited(web):
    """A download over HTTPS is an audit event like an FTP/SFTP one."""
    server = web()
    with ftp_plain(server) as ftp:
        stor(ftp, "audited.bin", payload(5000))
    base = https_url(server)
    s = session()
    assert s.post(f"{base}/api/login", json={"user": USER, "password": PASSWORD},
                  timeout=30).status_code == 204
    assert s.get(f"{base}/files/audited.bin", timeout=30).status_code == 200
    assert server.wait_for_event("download", timeout=5, protocol="https",
                                 path="/audited.bin")
