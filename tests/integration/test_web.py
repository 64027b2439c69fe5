"""The web drop in a real browser (issue 17): Debian's Chromium, headless,
driven by Playwright, against `dropvault serve`'s HTTPS listener.

The drop page (/d/TOKEN, crates/http/assets/drop.html and drop.js) uploads
several files at once with its own tus client, shows a progress bar per file
and overall, and says what became of each file: uploaded, rejected by the
malware scan, link no longer valid. The drop zone opens the file chooser
from the keyboard and takes dragged files. An upload cut off by a killed
server continues when the server is back, whether the page stayed open or
was opened again (Chromium's network emulation holds uploads back so that
they are under way when the server dies). Expired, revoked, used-up
and password links are refused as they should be. The account page (/)
logs in with the FTP credentials, lists, downloads and uploads. Every file
is read back over FTP byte-exact, and no page breaks its Content Security
Policy (no inline script or style, no eval).

Playwright's own browsers are never downloaded: Chromium is /usr/bin/chromium
(scripts/test installs it and the playwright package)."""

from __future__ import annotations

import ftplib
import os
import pathlib
import re
import ssl
import time
import urllib.error
import urllib.request

import pytest

from clamd import EICAR, SIGNATURE
from dvclients import (PASSWORD, REPO, USER, find_marker, ftp_plain, payload, retr,
                       run_cli, stor, wait_until)
from procs import free_port

CHROMIUM = "/usr/bin/chromium"
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if sync_playwright is None or not os.access(CHROMIUM, os.X_OK):
    pytest.skip("needs the playwright package and Chromium at /usr/bin/chromium "
                "(scripts/test installs both)", allow_module_level=True)

MIB = 1024 * 1024
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# How long the page may take for what a test waits for (ms).
PAGE_TIMEOUT = 60_000
SCREENSHOT = REPO / "docs" / "images" / "drop-page.png"
# Where the tests leave what a person may want to look at (the page's
# screenshot): $DROPVAULT_TEST_OUTPUT, else tests/integration/output.
OUTPUT = pathlib.Path(os.environ.get("DROPVAULT_TEST_OUTPUT")
                      or REPO / "tests" / "integration" / "output")
LINK_PASSWORD = "drop-Pw-5521"
INVALID = "This link is no longer valid"


# -- the browser -----------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module; each test gets its own context."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Tab:
    """A page in a fresh browser context (its own cookies and localStorage)
    that records console messages and uncaught errors."""

    def __init__(self, browser):
        self.context = browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                           viewport={"width": 900, "height": 1100})
        self.context.set_default_timeout(PAGE_TIMEOUT)
        self.page: Page = self.context.new_page()
        self.console: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # File choosers the page opens. Listening from the start makes
        # Chromium hand every one to Playwright (expect_file_chooser, which
        # starts listening just before the action, misses some).
        self.choosers: list = []
        self.page.on("filechooser", lambda c: self.choosers.append(c))

    def wait_chooser(self, timeout: float = 20):
        """The next file chooser the page opened."""
        deadline = time.monotonic() + timeout
        while not self.choosers and time.monotonic() < deadline:
            self.page.wait_for_timeout(50)  # lets Playwright deliver events
        assert self.choosers, "the page opened no file chooser"
        return self.choosers.pop(0)

    def close(self) -> None:
        self.context.close()

    def assert_clean(self) -> None:
        """No Content Security Policy violation and no script error."""
        csp = [m for m in self.console if "Content Security Policy" in m]
        assert csp == [], csp
        assert self.errors == [], self.errors


@pytest.fixture
def tab(chromium):
    t = Tab(chromium)
    yield t
    t.close()


# -- links -----------------------------------------------------------------------

def create_link(server, *args: str, stdin: str | None = None) -> tuple[str, str]:
    """`dropvault link create --user alice ARGS`: (link id, token)."""
    r = run_cli(["link", "create", "--user", USER, *args], server.data_dir, stdin=stdin)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    m = re.match(r"link (\S+) for ", lines[0])
    assert m, r.stdout
    t = re.search(r"/d/([^/\s]+)$", lines[-1].strip())
    assert t, r.stdout
    return m.group(1), t.group(1)


def drop_url(server, token: str) -> str:
    return f"{server.https_url}/d/{token}"


def open_drop(tab: Tab, url: str, state: str = "ready") -> None:
    """Opens a drop page and waits until it has asked /info (body[data-link])."""
    response = tab.page.goto(url)
    assert response is not None and response.status == 200, response and response.status
    tab.page.wait_for_selector(f"body[data-link={state}]", state="attached")


def pick(tab: Tab, *paths: pathlib.Path) -> None:
    """Chooses files with the page's <input type=file multiple>."""
    tab.page.set_input_files("#file-input", [str(p) for p in paths])


def wait_uploads(tab: Tab) -> str:
    """Waits until every upload of the page has ended: "done" or "failed"."""
    tab.page.wait_for_selector("body[data-uploads=done], body[data-uploads=failed]",
                               state="attached")
    return tab.page.get_attribute("body", "data-uploads")


def files_shown(tab: Tab) -> dict[str, dict]:
    """Each upload row of the page: state, message, progress value and max."""
    return {row["name"]: row for row in tab.page.eval_on_selector_all(
        "#file-list li.file",
        """rows => rows.map(li => {
            const bar = li.querySelector("progress");
            return {name: li.dataset.name, state: li.dataset.state,
                    status: li.querySelector(".file-status").textContent,
                    value: bar.value, max: bar.max,
                    label: bar.getAttribute("aria-label"),
                    resumedFrom: li.dataset.resumedFrom};
        })""")}


def progress_of(tab: Tab, name: str) -> float:
    return tab.page.eval_on_selector(f"#file-list li.file[data-name='{name}'] progress",
                                     "bar => bar.value / bar.max")


def ftp_read(server, path: str) -> bytes:
    with ftp_plain(server) as ftp:
        return retr(ftp, path)


def ftp_names(server, folder: str) -> list[str]:
    with ftp_plain(server) as ftp:
        try:
            return sorted(os.path.basename(n) for n in ftp.nlst(folder))
        except ftplib.error_perm:
            return []


def tus_head(url: str) -> int | None:
    """HEAD of a tus upload URL: its Upload-Offset, None when it is gone."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, method="HEAD", headers={"Tus-Resumable": "1.0.0"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return int(r.headers["Upload-Offset"])
    except urllib.error.HTTPError:
        return None


def throttle(tab: Tab, rate: int | None, cdp=None):
    """Holds the page's uploads to `rate` bytes a second with Chromium's
    network emulation (None lifts it), so that an upload is still under way
    when the test acts; returns the DevTools session."""
    if cdp is None:
        cdp = tab.context.new_cdp_session(tab.page)
        cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": -1 if rate is None else rate})
    return cdp


def write_file(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- the drop page -----------------------------------------------------------------

def test_drop_page_uploads_several_files_at_once(dropvault, tab, tmp_path):
    """Three files picked at once (empty, 20 MiB, small text) each reach
    their bar's max and "Uploaded", the overall bar and "All files uploaded"
    follow; the files read back byte-exact over FTP in /incoming, the big
    one's marker is nowhere in the data folder, and each upload is an
    "upload" event with protocol https."""
    server = dropvault()
    _, token = create_link(server)
    big = write_file(tmp_path / "in" / "big.bin", payload(20 * MIB))
    empty = write_file(tmp_path / "in" / "empty.txt", b"")
    text = write_file(tmp_path / "in" / "notes – ünïcode.txt",
                      "Quarterly notes\nline two: ünïcode ✓\n".encode())
    open_drop(tab, drop_url(server, token))
    page = tab.page
    # The page runs under the strict policy the CSP check below relies on.
    csp = page.evaluate("async () => (await fetch(location.href)).headers.get("
                        "'content-security-policy')")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp, csp
    assert page.locator("#fact-folder").inner_text() == "/incoming"
    assert page.locator("#fact-expires").inner_text() not in ("", "Never")
    assert page.locator("#file-input").get_attribute("multiple") is not None
    assert page.locator("label[for=file-input]").count() >= 1
    assert page.locator("#dropzone").get_attribute("tabindex") == "0"

    # The drop zone is keyboard-usable: Enter opens the file chooser.
    page.focus("#dropzone")
    page.keyboard.press("Enter")
    chooser = tab.wait_chooser()
    assert chooser.is_multiple()
    chooser.set_files([str(empty), str(big), str(text)])
    assert wait_uploads(tab) == "done"
    shown = files_shown(tab)
    assert set(shown) == {"big.bin", "empty.txt", text.name}, shown
    for name, row in shown.items():
        assert row["state"] == "done" and row["status"] == "Uploaded", row
        assert row["value"] == row["max"] > 0, row
        assert row["label"] == f"Upload progress of {name}", row
    assert page.locator("#all-done").is_visible()
    assert page.locator("#all-done").inner_text().strip() == "All files uploaded"
    overall = page.eval_on_selector("#overall-progress", "b => [b.value, b.max]")
    assert overall[0] == overall[1] > 0, overall
    assert page.locator("#overall-status[aria-live=polite]").count() == 1

    for path in (big, empty, text):
        assert ftp_read(server, f"/incoming/{path.name}") == path.read_bytes(), path.name
    assert find_marker(server.data_dir) == []
    events = server.wait_for_event("upload", count=3, protocol="https")
    assert len(events) == 3, server.events("upload")

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "drop-page.png"), full_page=True)
    assert (OUTPUT / "drop-page.png").stat().st_size > 10_000
    if os.environ.get("DROPVAULT_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    # The page keeps no upload URL once its uploads are done.
    assert page.evaluate("() => localStorage.length") == 0
    tab.assert_clean()


def test_drop_upload_resumes_after_the_server_restarts(dropvault, tab, tmp_path):
    """A 40 MiB upload, held back by the browser's network throttling, is
    cut off by SIGKILL of the server past a quarter of the way; the server
    starts again on the same port (localStorage is per origin), the page is
    opened again and the same file picked: the page asks the server where
    the upload stands (HEAD) and sends only the rest, and the file reads
    back byte-exact."""
    port = free_port()
    server = dropvault(http_listen=f"127.0.0.1:{port}")
    _, token = create_link(server)
    url = drop_url(server, token)
    data = payload(40 * MIB)
    big = write_file(tmp_path / "in" / "resume.bin", data)

    cdp = throttle(tab, 8 * MIB)
    open_drop(tab, url)
    pick(tab, big)
    assert wait_until(lambda: progress_of(tab, big.name) > 0.25, timeout=60)
    upload_url = tab.page.evaluate(
        "() => Object.keys(localStorage).map(k => localStorage.getItem(k))[0]")
    assert upload_url and f"/d/{token}/uploads/" in upload_url, upload_url
    # The server itself has a good part of the file, not just the socket.
    assert wait_until(lambda: (tus_head(upload_url) or 0) > 4 * MIB, timeout=60)

    server.kill()
    tab.page.get_by_text("Waiting to resume…").wait_for()
    tab.page.goto("about:blank")  # the page stops; its upload URL stays stored
    server.start()
    assert server.https_port == port
    offset = tus_head(upload_url)
    assert offset is not None and 0 < offset < len(data), offset

    throttle(tab, None, cdp)
    open_drop(tab, url)
    pick(tab, big)
    assert wait_uploads(tab) == "done"
    row = files_shown(tab)[big.name]
    assert row["status"] == "Uploaded" and row["value"] == row["max"], row
    # It continued where the server was, not from the start.
    assert int(row["resumedFrom"]) == offset, row
    assert ftp_read(server, f"/incoming/{big.name}") == data
    assert ftp_names(server, "/incoming") == [big.name]
    tab.assert_clean()


def test_drop_upload_continues_by_itself_when_the_server_is_back(dropvault, tab, tmp_path):
    """The page stays open while the server is killed mid-upload: it says
    "Waiting to resume…", tries again with backoff, and when the server is
    back asks where the upload stands and finishes it from there."""
    port = free_port()
    server = dropvault(http_listen=f"127.0.0.1:{port}")
    _, token = create_link(server)
    data = payload(24 * MIB + 5)
    big = write_file(tmp_path / "in" / "continued.bin", data)
    throttle(tab, 8 * MIB)
    open_drop(tab, drop_url(server, token))
    pick(tab, big)
    assert wait_until(lambda: progress_of(tab, big.name) > 0.25, timeout=60)
    server.kill()
    tab.page.get_by_text("Waiting to resume…").wait_for()
    assert tab.page.locator("body[data-uploads=running]").count() == 1
    server.start()
    assert server.https_port == port
    assert wait_uploads(tab) == "done"
    row = files_shown(tab)[big.name]
    assert row["status"] == "Uploaded" and int(row["resumedFrom"]) > 0, row
    assert tab.page.locator("#all-done").is_visible()
    assert ftp_read(server, f"/incoming/{big.name}") == data
    assert ftp_names(server, "/incoming") == [big.name]
    tab.assert_clean()


def test_drop_page_says_when_the_scan_rejects_a_file(dropvault, clamd, tab, tmp_path):
    """EICAR dropped with a clean file: the page says "Rejected by the
    malware scan" for it and "Uploaded" for the other; the vault holds only
    the clean one, and the rejection is an upload_rejected event."""
    server = dropvault(scan_clamd=clamd.unix)
    _, token = create_link(server)
    eicar = write_file(tmp_path / "in" / "eicar.com", EICAR)
    clean = write_file(tmp_path / "in" / "clean.bin", payload(300_000))
    open_drop(tab, drop_url(server, token))
    pick(tab, eicar, clean)
    assert wait_uploads(tab) == "failed"
    shown = files_shown(tab)
    assert shown["eicar.com"]["state"] == "error", shown
    assert shown["eicar.com"]["status"] == "Rejected by the malware scan", shown
    assert shown["clean.bin"]["status"] == "Uploaded", shown
    assert tab.page.locator("#all-done").is_hidden()
    assert tab.page.get_by_text("Rejected by the malware scan").is_visible()
    assert ftp_names(server, "/incoming") == ["clean.bin"]
    assert ftp_read(server, "/incoming/clean.bin") == clean.read_bytes()
    events = server.wait_for_event("upload_rejected", protocol="https")
    assert events and SIGNATURE in str(events[0]), server.events("upload_rejected")
    tab.assert_clean()


def assert_refused(tab: Tab, url: str) -> None:
    """Opening a link that is no longer valid shows the server's 404 page."""
    response = tab.page.goto(url)
    assert response is not None and response.status == 404, response and response.status
    assert re.search(r"not valid|no longer valid|invalid",
                     tab.page.locator("body").inner_text(), re.I), tab.page.content()


def test_expired_revoked_used_up_and_password_links(dropvault, tab, tmp_path):
    """A revoked link refuses the next file on the open page ("This link is
    no longer valid") and the page itself; an expired one and one whose
    only upload is used up are refused too; a password link shows its form,
    says "Wrong password" for a wrong one and takes files after the right
    one."""
    server = dropvault()
    small = write_file(tmp_path / "in" / "small.txt", b"small file\n")
    other = write_file(tmp_path / "in" / "other.txt", b"another file\n")

    # Revoked while the page is open.
    link_id, token = create_link(server, "--folder", "/revoked")
    open_drop(tab, drop_url(server, token))
    r = run_cli(["link", "revoke", link_id], server.data_dir)
    assert r.returncode == 0, r.stderr
    pick(tab, small)
    assert wait_uploads(tab) == "failed"
    assert files_shown(tab)["small.txt"]["status"] == INVALID
    assert tab.page.get_by_text(INVALID, exact=True).is_visible()
    assert_refused(tab, drop_url(server, token))
    assert ftp_names(server, "/revoked") == []

    # One upload allowed: the second file is refused.
    _, token = create_link(server, "--folder", "/once", "--max-uploads", "1")
    open_drop(tab, drop_url(server, token))
    pick(tab, small)
    assert wait_uploads(tab) == "done"
    pick(tab, other)
    assert wait_uploads(tab) == "failed"
    assert files_shown(tab)["other.txt"]["status"] == INVALID
    assert_refused(tab, drop_url(server, token))
    assert ftp_names(server, "/once") == ["small.txt"]

    # Expired.
    _, token = create_link(server, "--folder", "/expired", "--expires", "1s")
    time.sleep(2)
    assert_refused(tab, drop_url(server, token))

    # Password: wrong, then right.
    _, token = create_link(server, "--folder", "/locked", "--password",
                           stdin=LINK_PASSWORD + "\n")
    open_drop(tab, drop_url(server, token), state="locked")
    page = tab.page
    assert page.locator("#dropzone").is_hidden()
    assert page.get_by_label("Password").get_attribute("type") == "password"
    page.get_by_label("Password").fill("not-" + LINK_PASSWORD)
    page.get_by_role("button", name="Unlock").click()
    page.get_by_text("Wrong password").wait_for()
    assert page.locator("#dropzone").is_hidden()
    page.get_by_label("Password").fill(LINK_PASSWORD)
    page.get_by_role("button", name="Unlock").click()
    page.wait_for_selector("body[data-link=ready]", state="attached")
    assert page.locator("#dropzone").is_visible()
    # A file dragged onto the drop zone.
    dropped = "dropped on the zone ✓\n"
    transfer = page.evaluate_handle(
        "text => { const dt = new DataTransfer();"
        " dt.items.add(new File([text], 'dropped.txt', {type: 'text/plain'}));"
        " return dt; }", dropped)
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    assert wait_uploads(tab) == "done"
    assert ftp_read(server, "/locked/dropped.txt") == dropped.encode()
    pick(tab, small)
    assert wait_uploads(tab) == "done"
    assert ftp_read(server, "/locked/small.txt") == small.read_bytes()
    tab.assert_clean()


# -- the account page ------------------------------------------------------------------

def test_account_page_lists_downloads_and_uploads(dropvault, tab, tmp_path):
    """Logging in with alice's FTP credentials (after a wrong password)
    lists her files; a folder opens, a file uploaded over FTP downloads
    byte-exact, a file uploaded on the page reads back over FTP, "Up" goes
    back, and logging out shows the login form again."""
    server = dropvault()
    stored = payload(300_000)
    with ftp_plain(server) as ftp:
        ftp.mkd("reports")
        stor(ftp, "reports/q3 report #1.bin", stored)
        stor(ftp, "top.txt", b"at the top\n")
    page = tab.page
    assert page.goto(server.https_url + "/").status == 200
    page.wait_for_selector("body[data-session=out]", state="attached")
    page.get_by_label("User name").fill(USER)
    page.get_by_label("Password").fill("wrong-" + PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Wrong user name or password").wait_for()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("body[data-session=in]", state="attached")
    page.wait_for_selector("#file-rows tr[data-name='top.txt']")
    assert page.locator("#session-user").inner_text() == USER

    page.get_by_role("link", name="reports/").click()
    page.wait_for_selector("#files-section[data-path='/reports']", state="attached")
    link = page.get_by_role("link", name="q3 report #1.bin")
    assert link.get_attribute("href") == "/files/reports/q3%20report%20%231.bin"
    with page.expect_download() as info:
        link.click()
    assert pathlib.Path(info.value.path()).read_bytes() == stored

    sent = write_file(tmp_path / "in" / "from the browser.txt", b"uploaded on the page\n" * 100)
    page.set_input_files("#file-input", str(sent))
    assert wait_uploads(tab) == "done"
    page.wait_for_selector("#file-rows tr[data-name='from the browser.txt']")
    assert ftp_read(server, "/reports/from the browser.txt") == sent.read_bytes()

    page.get_by_role("link", name="Up").click()
    page.wait_for_selector("#files-section[data-path='/']", state="attached")
    page.wait_for_selector("#file-rows tr[data-name='reports']")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_selector("body[data-session=out]", state="attached")
    assert page.get_by_label("User name").is_visible()
    # The session is over for the server too.
    page.goto(server.https_url + "/")
    page.wait_for_selector("body[data-session=out]", state="attached")
    assert find_marker(server.data_dir) == []
    tab.assert_clean()


# -- tus-js-client, the tus project's own browser client ---------------------------

TUS_JS = REPO / "tests" / "integration" / "node" / "node_modules" / "tus-js-client" / "dist" / "tus.min.js"
# A page of the test's own, served by Playwright under the server's origin
# (so tus-js-client's requests are same-origin) without the server's CSP,
# which rightly refuses the inline script that drives it.
TUS_JS_PAGE = """<!doctype html><html><body>
<input type="file" id="f"><script src="/__test__/tus.min.js"></script>
<script>
window.runUpload = (endpoint, abortAt) => new Promise((resolve) => {
  const file = document.getElementById("f").files[0];
  const seen = {progress: [], error: null, url: null};
  const upload = new tus.Upload(file, {
    endpoint, chunkSize: Infinity, retryDelays: [0, 500, 1000],
    metadata: {filename: file.name},
    onProgress(sent, total) {
      seen.progress.push(sent);
      if (abortAt && sent >= abortAt * total) { upload.abort(); seen.url = upload.url; resolve(seen); }
    },
    onError(e) { seen.error = String(e); resolve(seen); },
    onSuccess() { seen.url = upload.url; resolve(seen); },
  });
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
});
</script></body></html>"""


@pytest.mark.skipif(not TUS_JS.exists(), reason="tus-js-client is not installed "
                    "(scripts/test installs tests/integration/node's packages)")
def test_tus_js_client_in_the_browser_uploads_and_resumes(dropvault, tab, tmp_path):
    """tus-js-client 4 (what Uppy uploads with), in Chromium, against a drop
    link: an upload aborted past a third of the way is found again in the
    browser's storage by a new tus.Upload, which asks the server where it
    stands and sends only the rest (its PATCH starts past 0); the file
    reads back byte-exact over FTP, and one upload event says https."""
    server = dropvault()
    _, token = create_link(server)
    endpoint = f"{drop_url(server, token)}/uploads"
    data = payload(12 * MIB + 3)
    src = write_file(tmp_path / "in" / "tusjs.bin", data)
    page = tab.page
    page.route(f"{server.https_url}/__test__/page.html",
               lambda route: route.fulfill(status=200, content_type="text/html",
                                           body=TUS_JS_PAGE))
    page.route(f"{server.https_url}/__test__/tus.min.js",
               lambda route: route.fulfill(status=200, content_type="text/javascript",
                                           body=TUS_JS.read_text()))
    patches: list[int] = []
    page.on("request", lambda r: r.method == "PATCH" and patches.append(
        int(r.headers.get("upload-offset", "-1"))))
    cdp = throttle(tab, 4 * MIB)
    page.goto(f"{server.https_url}/__test__/page.html")
    page.set_input_files("#f", str(src))
    first = page.evaluate("([e]) => runUpload(e, 0.34)", [endpoint])
    assert first["error"] is None and first["url"], first
    assert f"/d/{token}/uploads/" in first["url"], first
    throttle(tab, None, cdp)
    second = page.evaluate("([e]) => runUpload(e, 0)", [endpoint])
    assert second["error"] is None and second["url"] == first["url"], second
    assert patches[0] == 0 and patches[-1] > 0, patches
    assert ftp_read(server, f"/incoming/{src.name}") == data
    assert len(server.wait_for_event("upload", protocol="https")) == 1
