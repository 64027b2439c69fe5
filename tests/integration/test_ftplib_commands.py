"""The FTP command set through Python's ftplib (plain FTP, so that each
check is about the command and not about TLS): listings with plaintext
sizes, REST + RETR, EPSV, renames, folders, APPE, STOU, ABOR, active mode,
FEAT, and resuming an interrupted upload with REST + STOR."""

import datetime
import ftplib
import socket

import pytest

from dvclients import (MAGIC, SEGMENT, epsv_port, ftp_plain, interrupted_upload, mlsd,
                       payload, raw, reset_close, retr, sealed_len, stor)

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 77]


@pytest.mark.local_only  # looks into the local storage folder
def test_listings_show_plaintext_sizes(server):
    files = {f"f{size}.bin": payload(size) for size in SIZES}
    with ftp_plain(server) as ftp:
        for name, data in files.items():
            stor(ftp, name, data)
        ftp.mkd("folder")

        facts = mlsd(ftp)
        for name, data in files.items():
            assert facts[name]["type"] == "file"
            assert facts[name]["size"] == str(len(data)), name
            assert ftp.size(name) == len(data)
        assert facts["folder"]["type"] == "dir"

        listing: list[str] = []
        ftp.retrlines("LIST", listing.append)
        for name, data in files.items():
            line = next(l for l in listing if l.endswith(" " + name))
            assert line.split()[4] == str(len(data)), line
        assert sorted(ftp.nlst()) == sorted([*files, "folder"])

        name = f"f{SEGMENT + 1}.bin"
        reply = ftp.sendcmd(f"MLST {name}")
        assert reply.startswith("250")
        fact_line = reply.splitlines()[1]
        assert f"size={SEGMENT + 1};" in fact_line and fact_line.endswith(name)
        assert "type=file;" in fact_line

        # MDTM is the stored file's modification time, in UTC.
        stored = server.user_dir() / name
        mtime = datetime.datetime.fromtimestamp(stored.stat().st_mtime, datetime.timezone.utc)
        assert ftp.sendcmd(f"MDTM {name}") == "213 " + mtime.strftime("%Y%m%d%H%M%S")

        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.size("missing.bin")

    # What is stored is sealed, FORMAT.md's size for each plaintext size.
    for name, data in files.items():
        stored = (server.user_dir() / name).read_bytes()
        assert len(stored) == sealed_len(len(data))
        assert stored[:8] == MAGIC


def test_rest_retr(server):
    data = payload(4 * SEGMENT + 1000)
    with ftp_plain(server) as ftp:
        stor(ftp, "r.bin", data)
        for offset in (0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 5,
                       len(data) - 1, len(data)):
            assert retr(ftp, "r.bin", rest=offset) == data[offset:], offset
        with pytest.raises(ftplib.error_perm, match="^554"):
            retr(ftp, "r.bin", rest=len(data) + 1)
        # A REST is used once: the next RETR is whole again.
        assert retr(ftp, "r.bin") == data


def test_epsv(server):
    data = payload(SEGMENT * 2 + 3)
    with ftp_plain(server) as ftp:
        stor(ftp, "e.bin", data)
        ftp.voidcmd("TYPE I")
        port = epsv_port(ftp.sendcmd("EPSV"))
        with socket.create_connection((server.host, port), timeout=30) as s:
            assert ftp.sendcmd("RETR e.bin").startswith("150")
            got = b""
            while chunk := s.recv(1 << 20):
                got += chunk
        assert ftp.voidresp().startswith("226")
        assert got == data

        assert ftp.sendcmd("EPSV ALL").startswith("200")
        with pytest.raises(ftplib.error_perm, match="^503"):
            ftp.sendcmd("PASV")
        port = epsv_port(ftp.sendcmd("EPSV 1"))
        with socket.create_connection((server.host, port), timeout=30) as s:
            assert ftp.sendcmd("NLST").startswith("150")
            names = b""
            while chunk := s.recv(65536):
                names += chunk
        assert ftp.voidresp().startswith("226")
        assert names.split() == [b"e.bin"]


@pytest.mark.local_only  # looks into the local storage folder
def test_folders_renames_deletes(server):
    a, b = payload(70_000), payload(1000)
    with ftp_plain(server) as ftp:
        assert ftp.mkd("docs") == "/docs"
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.mkd("docs")
        ftp.cwd("docs")
        assert ftp.pwd() == "/docs"
        stor(ftp, "a.bin", a)
        ftp.mkd("inner")
        ftp.cwd("inner")
        assert ftp.pwd() == "/docs/inner"
        ftp.sendcmd("CDUP")
        assert ftp.pwd() == "/docs"
        ftp.cwd("/")

        ftp.rename("docs/a.bin", "top.bin")
        assert retr(ftp, "top.bin") == a
        assert "a.bin" not in mlsd(ftp, "docs")
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.sendcmd("RNFR nothing-here")
        with pytest.raises(ftplib.error_perm, match="^503"):
            ftp.sendcmd("RNTO x")
        # Renaming over an existing file replaces it.
        stor(ftp, "other.bin", b)
        ftp.rename("other.bin", "top.bin")
        assert retr(ftp, "top.bin") == b

        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.rmd("docs")  # not empty
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.rename("docs", "docs/inner/docs")  # into itself
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.rename("top.bin", "no-such-folder/top.bin")
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.delete("docs")  # a folder
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.rmd("top.bin")  # a file
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.cwd("top.bin")
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.size("docs")
        ftp.rename("docs", "papers")
        assert mlsd(ftp, "papers")["inner"]["type"] == "dir"
        ftp.rmd("papers/inner")
        ftp.rmd("papers")

        ftp.delete("top.bin")
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.delete("top.bin")
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.cwd("papers")
        assert ftp.nlst() == []

        # The X-prefixed aliases older clients send.
        assert ftp.sendcmd("XMKD xdir").startswith("257")
        assert ftp.sendcmd("XCWD xdir").startswith("250")
        assert '"/xdir"' in ftp.sendcmd("XPWD")
        assert ftp.sendcmd("XCUP").startswith(("200", "250"))
        assert ftp.sendcmd("XRMD xdir").startswith("250")
    assert sorted(p.name for p in server.user_dir().iterdir()) == []
    for event in ("mkdir", "rename", "delete"):
        assert server.events(event), f"no {event} event logged"


@pytest.mark.local_only  # looks into the local storage folder
def test_names_with_spaces_and_utf8(server):
    names = ["with space.bin", "ünïcødé €.bin", "日本語.txt", "-dash", "a;b=c.bin"]
    files = {name: payload(1000 + i) for i, name in enumerate(names)}
    with ftp_plain(server) as ftp:
        ftp.mkd("folder with space")
        for name, data in files.items():
            stor(ftp, "folder with space/" + name, data)
        assert sorted(mlsd(ftp, "folder with space")) == sorted(names)
        ftp.cwd("folder with space")
        for name, data in files.items():
            assert retr(ftp, name) == data
            assert ftp.size(name) == len(data)
    for name in names:
        assert (server.user_dir() / "folder with space" / name).is_file()


@pytest.mark.local_only  # looks into the local storage folder
def test_appe(server):
    first, second, third = payload(SEGMENT + 10), payload(2 * SEGMENT), payload(5)
    with ftp_plain(server) as ftp:
        stor(ftp, "log.bin", first)
        stor(ftp, "log.bin", second, cmd="APPE")
        assert retr(ftp, "log.bin") == first + second
        assert ftp.size("log.bin") == len(first) + len(second)
        stor(ftp, "new.bin", third, cmd="APPE")
        assert retr(ftp, "new.bin") == third
    stored = server.user_dir() / "log.bin"
    assert stored.stat().st_size == sealed_len(len(first) + len(second))


def test_stou(server):
    data = payload(12_345)
    with ftp_plain(server) as ftp:
        ftp.mkd("in")
        ftp.cwd("in")
        ftp.voidcmd("TYPE I")
        port = epsv_port(ftp.sendcmd("EPSV"))
        with socket.create_connection((server.host, port), timeout=30) as conn:
            preliminary = ftp.sendcmd("STOU")
            assert preliminary.startswith(("150", "125")), preliminary
            conn.sendall(data)
        final = ftp.voidresp()
        names = ftp.nlst()
        assert len(names) == 1
        name = names[0]
        assert retr(ftp, name) == data
        # A second STOU never overwrites the first.
        stor(ftp, "", payload(10), cmd="STOU")
        assert len(ftp.nlst()) == 2
        assert retr(ftp, name) == data
    # RFC 1123 4.1.2.9: the reply tells the client the name the server chose
    # ("150 FILE: name"), or the client cannot find its file.
    assert name in preliminary or name in final, (
        f"STOU replies do not name the new file {name!r}: {preliminary!r}, {final!r}")


def test_abor_during_download(server):
    data = payload(24 * 1024 * 1024)
    with ftp_plain(server) as ftp:
        stor(ftp, "big.bin", data)
    r = raw(server, login=True)
    r.cmd("TYPE I")
    code, text = r.cmd("EPSV")
    assert code == 229
    data_sock = socket.create_connection((server.host, epsv_port(text)), timeout=30)
    code, text = r.cmd("RETR big.bin")
    assert code == 150, text
    got = data_sock.recv(65536)
    assert got
    code, text = r.cmd("ABOR")
    assert code == 426, text
    code, text = r.reply()
    assert code == 226, text
    data_sock.close()
    # The session carries on and the file is intact.
    assert r.cmd("NOOP")[0] == 200
    r.close()
    with ftp_plain(server) as ftp:
        assert retr(ftp, "big.bin") == data
    assert server.events("transfer_aborted")


def test_abor_with_ftplib_abort(server):
    """ftplib's abort() sends ABOR as TCP urgent data (MSG_OOB), as RFC 959's
    Synch asks; the server must still see the command."""
    data = payload(24 * 1024 * 1024)
    with ftp_plain(server) as ftp:
        stor(ftp, "big.bin", data)
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd("RETR big.bin")
        assert conn.recv(65536)
        ftp.sock.settimeout(8)
        resp = ftp.abort()
        assert resp[:3] in ("426", "225", "226"), resp
        conn.close()
        if resp.startswith("426"):
            assert ftp.getresp().startswith("226")
        assert ftp.voidcmd("NOOP").startswith("200")


def test_abor_during_upload_commits_nothing(server):
    r = raw(server, login=True)
    r.cmd("TYPE I")
    code, text = r.cmd("EPSV")
    data_sock = socket.create_connection((server.host, epsv_port(text)), timeout=30)
    code, text = r.cmd("STOR partial.bin")
    assert code == 150, text
    data_sock.sendall(payload(3 * SEGMENT))
    code, text = r.cmd("ABOR")
    assert code == 426, text
    assert r.reply()[0] == 226
    reset_close(data_sock)
    assert r.cmd("NOOP")[0] == 200
    r.close()
    with ftp_plain(server) as ftp:
        assert "partial.bin" not in mlsd(ftp)


def test_feat_tells_the_truth(dropvault):
    server = dropvault()
    with ftp_plain(server) as ftp:
        feat = ftp.sendcmd("FEAT")
        lines = [l.strip() for l in feat.splitlines()[1:-1]]
        for f in ("AUTH TLS", "PBSZ", "PROT", "UTF8", "SIZE", "MDTM", "MFMT", "REST STREAM",
                  "EPSV", "PASV", "EPRT"):
            assert f in lines, f"{f} missing from FEAT: {lines}"
        assert any(l.startswith("MLST ") for l in lines)
        # Each advertised feature answers.
        assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
        stor(ftp, "x.bin", payload(1000))
        assert ftp.sendcmd("SIZE x.bin") == "213 1000"
        assert ftp.sendcmd("MDTM x.bin").startswith("213 ")
        assert ftp.sendcmd("MFMT 20200101000000 x.bin").startswith("213 ")
        assert ftp.sendcmd("REST 10").startswith("350")
        assert ftp.sendcmd("REST 0").startswith("350")
        assert ftp.sendcmd("MLST x.bin").startswith("250")
        assert ftp.sendcmd("EPSV").startswith("229")
        assert ftp.sendcmd("PASV").startswith("227")
        assert ftp.sendcmd("SYST").startswith("215")
        with pytest.raises(ftplib.error_perm, match="^502"):
            ftp.sendcmd("SITE CHMOD 777 x.bin")
        with pytest.raises(ftplib.error_perm, match="^502"):
            ftp.sendcmd("FROB")

    off = dropvault(ftp_active_mode="false", ftp_tls="off")
    with ftp_plain(off) as ftp:
        lines = [l.strip() for l in ftp.sendcmd("FEAT").splitlines()[1:-1]]
        for f in ("EPRT", "AUTH TLS", "PBSZ", "PROT"):
            assert f not in lines, f"{f} advertised but off: {lines}"
        with pytest.raises(ftplib.error_perm, match="^502"):
            ftp.sendcmd("PORT 127,0,0,1,100,100")
        with pytest.raises(ftplib.error_perm, match="^502"):
            ftp.sendcmd("EPRT |1|127.0.0.1|25700|")


def test_mfmt_and_mdtm_set_the_modification_time(server):
    data = payload(5000)
    with ftp_plain(server) as ftp:
        stor(ftp, "report 2024.pdf", data)
        ftp.mkd("dir")
        # MFMT answers with the time now stored (draft-somers-ftp-mfxx).
        assert (ftp.sendcmd("MFMT 20210304050607 report 2024.pdf")
                == "213 Modify=20210304050607; report 2024.pdf")
        assert ftp.sendcmd("MDTM report 2024.pdf") == "213 20210304050607"
        assert mlsd(ftp)["report 2024.pdf"]["modify"] == "20210304050607"
        listing = []
        ftp.retrlines("LIST", listing.append)
        line = next(l for l in listing if l.endswith(" report 2024.pdf"))
        assert " Mar  4  2021 " in line, line
        # Fractions of a second are kept as far as MDTM shows whole seconds.
        assert ftp.sendcmd("MFMT 19991231235959.750 report 2024.pdf").startswith(
            "213 Modify=19991231235959;")
        # Folders too.
        assert ftp.sendcmd("MFMT 20200202020202 dir").startswith("213 ")
        assert mlsd(ftp)["dir"]["modify"] == "20200202020202"
        # The set-time form of MDTM.
        assert ftp.sendcmd("MDTM 20220101010101 report 2024.pdf").startswith("213 ")
        assert ftp.sendcmd("MDTM report 2024.pdf") == "213 20220101010101"
        # ... unless the whole argument is a file's name.
        stor(ftp, "20230101000000 x", b"")
        assert ftp.sendcmd("MDTM 20230101000000 x").startswith("213 2")
        # The file's content is untouched.
        assert retr(ftp, "report 2024.pdf") == data
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.sendcmd("MFMT 20210304050607 missing.bin")
        for bad in ("MFMT 20211304050607 report 2024.pdf", "MFMT 2021030405060 x",
                    "MFMT 20210304050607"):
            with pytest.raises(ftplib.error_perm, match="^501"):
                ftp.sendcmd(bad)
        # Paths stay inside the user's folder: this is /etc/passwd there.
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.sendcmd("MFMT 20210304050607 ../../etc/passwd")
    # Kept across a restart: it is the stored file's own time.
    server.restart()
    with ftp_plain(server) as ftp:
        assert ftp.sendcmd("MDTM report 2024.pdf") == "213 20220101010101"


def test_active_mode(server):
    data = payload(2 * SEGMENT + 5)
    with ftp_plain(server) as ftp:
        ftp.set_pasv(False)  # PORT to our own address
        stor(ftp, "active.bin", data)
        assert retr(ftp, "active.bin") == data
        # EPRT, by hand.
        ftp.voidcmd("TYPE I")
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            assert ftp.sendcmd(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
            assert ftp.sendcmd("RETR active.bin").startswith("150")
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                got = b""
                while chunk := conn.recv(1 << 20):
                    got += chunk
        assert ftp.voidresp().startswith("226")
        assert got == data


def test_concurrent_upload_to_one_name_is_refused(server):
    first = ftp_plain(server)
    first.voidcmd("TYPE I")
    conn = first.transfercmd("STOR same.bin")
    conn.sendall(payload(SEGMENT))
    with ftp_plain(server) as second:
        with pytest.raises(ftplib.error_temp, match="^450"):
            stor(second, "same.bin", payload(10))
    data = payload(SEGMENT)
    conn.sendall(data)
    conn.close()
    assert first.voidresp().startswith("226")
    first.quit()
    with ftp_plain(server) as ftp:
        assert ftp.size("same.bin") == 2 * SEGMENT


@pytest.mark.local_only  # looks into the local storage folder
def test_resume_interrupted_upload_with_rest_stor(server):
    data = payload(48 * SEGMENT + 4242)
    point = interrupted_upload(server, "resume.bin", data)
    with ftp_plain(server) as ftp:
        assert "resume.bin" not in mlsd(ftp)
        stor(ftp, "resume.bin", data[point:], rest=point)
        assert retr(ftp, "resume.bin") == data
    # A REST + STOR at another offset re-seals what is kept.
    with ftp_plain(server) as ftp:
        stor(ftp, "resume.bin", b"TAIL" + payload(100), rest=1000)
        got = retr(ftp, "resume.bin")
        assert got[:1000] == data[:1000] and got[1000:1004] == b"TAIL"
        assert len(got) == 1000 + 4 + 100


def test_two_sessions_of_one_user(server):
    data = payload(100_000)
    a = ftp_plain(server)
    b = ftp_plain(server)
    stor(a, "shared.bin", data)
    assert retr(b, "shared.bin") == data
    a.quit()
    # The other session still holds the user's key.
    assert retr(b, "shared.bin") == data
    stor(b, "second.bin", data[:10])
    b.quit()


def test_misc_commands(server):
    r = raw(server)
    assert r.cmd("SYST")[0] == 215
    assert r.cmd("NOOP")[0] == 200
    code, text = r.cmd("HELP")
    assert code == 214 and "RETR" in text
    assert r.cmd("PWD")[0] == 530  # not logged in yet
    r.login()
    for cmd, want in [("TYPE A", 200), ("TYPE I", 200), ("MODE S", 200), ("STRU F", 200),
                      ("ALLO 1000", 202), ("STAT", 211), ("NOOP", 200), ("BOGUS", 502)]:
        code, text = r.cmd(cmd)
        assert code == want, f"{cmd}: {text}"
    code, text = r.cmd("QUIT")
    assert code == 221
    assert r.closed_by_peer()
