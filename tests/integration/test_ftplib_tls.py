"""Python's ftplib over FTPS: data connections that resume the control
connection's TLS session (TLS 1.3 and 1.2), the refusal of those that do
not, and tls = "required" / "off"."""

import ftplib
import socket
import ssl

import pytest

from dvclients import (PASSWORD, SEGMENT, USER, ResumingFTP_TLS, curl, epsv_port,
                       ftp_plain, ftp_tls, ftp_url, make_certificate, mlsd, payload, raw,
                       retr, stor, tls_context)

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends


class RecordingFTP_TLS(ResumingFTP_TLS):
    """Records, for every protected data connection, whether TLS resumed."""

    reused: list

    def ntransfercmd(self, cmd, rest=None):
        conn, size = super().ntransfercmd(cmd, rest)
        if self._prot_p:
            self.reused.append(conn.session_reused)
        return conn, size


def recording_client(server, version):
    ftp = ftp_tls(server, version=version, cls=RecordingFTP_TLS)
    ftp.reused = []
    return ftp


def refused_transfer(ftp: ftplib.FTP, cmd: str, data: bytes | None = None) -> str:
    """Runs `cmd` expecting the server to refuse its data connection; returns
    the final reply's text (the error's)."""
    got = b""
    try:
        conn = ftp.transfercmd(cmd)
        try:
            if data is not None:
                conn.sendall(data)
            else:
                while chunk := conn.recv(65536):
                    got += chunk
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()
    except (ssl.SSLError, OSError):
        pass
    assert got == b"", "data flowed on a refused data connection"
    with pytest.raises(ftplib.Error) as e:
        ftp.voidresp()
    return str(e.value)


def upload_plain(server, name: str, data: bytes) -> None:
    with ftp_plain(server) as ftp:
        stor(ftp, name, data)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ftplib_tls_session_resumed_for_every_transfer(server, version):
    data = payload(3 * SEGMENT + 4321)
    upload_plain(server, "tls.bin", data)
    ftp = recording_client(server, version)
    assert ftp.sock.version() == f"TLSv{version}"
    assert mlsd(ftp)["tls.bin"]["size"] == str(len(data))
    assert retr(ftp, "tls.bin") == data
    for offset in (1, SEGMENT, 2 * SEGMENT + 7, len(data)):
        assert retr(ftp, "tls.bin", rest=offset) == data[offset:]
    assert ftp.nlst() == ["tls.bin"]
    listing = []
    ftp.retrlines("LIST", listing.append)
    assert any(line.endswith(" tls.bin") and f" {len(data)} " in line for line in listing)
    # EPSV by hand (ftplib only uses it for IPv6): connect, then TLS with the
    # control connection's session.
    ftp.voidcmd("TYPE I")
    port = epsv_port(ftp.sendcmd("EPSV"))
    sock = socket.create_connection((server.host, port), timeout=30)
    assert ftp.sendcmd("RETR tls.bin").startswith("150")
    conn = ftp.context.wrap_socket(sock, server_hostname=server.host, session=ftp.sock.session)
    ftp.reused.append(conn.session_reused)
    got = b""
    while chunk := conn.recv(1 << 20):
        got += chunk
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert got == data
    ftp.quit()
    assert len(ftp.reused) == 9 and all(ftp.reused), ftp.reused


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ftplib_tls_upload(server, version):
    """FTP_TLS.storbinary ends the data connection with unwrap(): it sends
    close_notify and waits for the server's."""
    data = payload(2 * SEGMENT + 99)
    more = payload(SEGMENT + 5)
    ftp = recording_client(server, version)
    stor(ftp, "up.bin", data)
    stor(ftp, "up.bin", more, cmd="APPE")
    assert retr(ftp, "up.bin") == data + more
    ftp.quit()
    assert all(ftp.reused), ftp.reused


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ftplib_tls_without_session_reuse_is_refused(server, version):
    upload_plain(server, "secret.bin", payload(100_000))
    ftp = ftp_tls(server, reuse=False, version=version)
    ftp.voidcmd("TYPE I")
    assert refused_transfer(ftp, "RETR secret.bin").startswith("522")
    assert refused_transfer(ftp, "STOR other.bin", payload(70_000)).startswith("522")
    # The session carries on, and nothing was stored.
    assert ftp.voidcmd("NOOP").startswith("200")
    ftp.prot_c()
    assert sorted(ftp.nlst()) == ["secret.bin"]
    ftp.quit()


def test_tls_upload_cut_without_close_notify_is_not_committed(server):
    """A TLS data connection that ends without close_notify may have been
    cut by an attacker: the upload must not be committed; the reply says
    so in the server's words; the sealed part stays for a resume."""
    ftp = ftp_tls(server)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR cut.bin")
    conn.sendall(payload(3 * SEGMENT))
    # Close the TCP connection under TLS: no close_notify.
    raw_sock = socket.socket(fileno=conn.detach())
    raw_sock.close()
    with pytest.raises(ftplib.Error, match="^426") as err:
        ftp.voidresp()
    text = str(err.value)
    assert "close_notify" in text and "not stored" in text, text
    assert "rustls" not in text and "http" not in text, text
    assert "cut.bin" not in mlsd(ftp)
    # What arrived is sealed in staging: SIZE offers it as the resume point
    # (on S3, where what is kept is whole 8 MiB parts, there is none).
    try:
        point = ftp.size("cut.bin")
    except ftplib.error_perm:
        point = 0
    assert point in (0, SEGMENT, 2 * SEGMENT, 3 * SEGMENT)
    ftp.quit()


def test_tls_upload_with_no_data_and_no_close_notify_is_an_empty_file(server):
    """Nothing to cut short: some clients (Node's TLS sockets) end an empty
    upload without close_notify."""
    ftp = ftp_tls(server)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR empty.bin")
    socket.socket(fileno=conn.detach()).close()
    assert ftp.voidresp().startswith("226")
    assert mlsd(ftp)["empty.bin"]["size"] == "0"
    ftp.quit()


def test_upload_data_connection_closed_in_handshake_is_refused_without_a_session(server):
    """A connection that closes during a TLS handshake in which it presented
    no session of this login is no upload of anything: refused, no file."""
    ftp = ftp_tls(server)
    ftp.voidcmd("TYPE I")
    port = epsv_port(ftp.sendcmd("EPSV"))
    s = socket.create_connection((server.host, port), timeout=30)
    assert ftp.sendcmd("STOR nothing.bin").startswith("150")
    # The start of a ClientHello record, then the end.
    s.sendall(bytes.fromhex("160301"))
    s.close()
    with pytest.raises(ftplib.error_perm, match="^522") as err:
        ftp.voidresp()
    assert "rustls" not in str(err.value)
    assert "nothing.bin" not in mlsd(ftp)
    ftp.quit()


def login_tls(server, context: ssl.SSLContext, user: str = USER, password: str = PASSWORD,
              source: str | None = None) -> ResumingFTP_TLS:
    """A second client sharing `context` (so Python lets another
    connection's session be offered), optionally from another loopback
    address."""
    ftp = ResumingFTP_TLS(context=context, timeout=30)
    ftp.connect(server.host, server.port, source_address=(source, 0) if source else None)
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp


def retr_with_session(ftp: ftplib.FTP_TLS, name: str, session: ssl.SSLSession) -> bytes | None:
    """RETR over a data connection that presents `session`; the data, or
    None after the server refused the connection with 522."""
    port = epsv_port(ftp.sendcmd("EPSV"))
    source = ftp.source_address
    s = socket.create_connection((ftp.host, port), timeout=30, source_address=source)
    assert ftp.sendcmd(f"RETR {name}").startswith("150")
    got = b""
    reused = False
    try:
        conn = ftp.context.wrap_socket(s, server_hostname=ftp.host, session=session)
        reused = conn.session_reused
        while chunk := conn.recv(65536):
            got += chunk
        conn.close()
    except (ssl.SSLError, OSError):
        pass
    try:
        reply = ftp.voidresp()
    except ftplib.error_perm as e:
        assert str(e).startswith("522"), e
        assert got == b"", "data flowed on a refused data connection"
        return None
    assert reply.startswith("226") and reused, (reply, reused)
    return got


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_session_of_a_sibling_control_connection_of_the_same_login_is_accepted(server, version):
    """Clients share one TLS session cache among their connections (rclone,
    OpenSSL-based clients): a data connection may present a session another
    control connection of the same user at the same address was issued."""
    data = payload(10_000)
    upload_plain(server, "a.bin", data)
    a = ftp_tls(server, version=version)
    b = login_tls(server, a.context)
    assert retr_with_session(b, "a.bin", a.sock.session) == data
    # Reusable: TLS 1.3 tickets are not single-use here.
    assert retr_with_session(b, "a.bin", a.sock.session) == data
    # Still usable after the control connection it came from has ended.
    session = a.sock.session
    a.quit()
    assert retr_with_session(b, "a.bin", session) == data
    b.quit()


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_session_of_another_users_control_connection_is_refused(dropvault, version):
    server = dropvault(users={USER: PASSWORD, "bob": "bob-Pw-4410"})
    upload_plain(server, "a.bin", payload(10_000))
    with ftp_plain(server, "bob", "bob-Pw-4410") as ftp:
        stor(ftp, "b.bin", payload(10_000))
    alice = ftp_tls(server, version=version)
    bob = login_tls(server, alice.context, "bob", "bob-Pw-4410")
    # Bob's data connection presents Alice's session: refused.
    assert retr_with_session(bob, "b.bin", alice.sock.session) is None
    # And Alice's presents Bob's.
    assert retr_with_session(alice, "a.bin", bob.sock.session) is None
    assert bob.voidcmd("NOOP").startswith("200")
    bob.quit()
    alice.quit()


def test_session_of_another_addresses_control_connection_is_refused(server):
    """Same user, same client TLS cache, but the session was issued to a
    control connection from 127.0.0.1 and the data connection belongs to one
    from 127.0.0.2."""
    data = payload(10_000)
    upload_plain(server, "a.bin", data)
    near = ftp_tls(server)
    far = login_tls(server, near.context, source="127.0.0.2")
    assert far.sock.getsockname()[0] == "127.0.0.2"
    assert retr_with_session(far, "a.bin", near.sock.session) is None
    # Its own session works.
    assert retr_with_session(far, "a.bin", far.sock.session) == data
    far.quit()
    near.quit()


def test_session_from_before_a_restart_is_refused(server):
    data = payload(10_000)
    upload_plain(server, "a.bin", data)
    before = ftp_tls(server)
    session = before.sock.session
    assert retr(before, "a.bin") == data
    before.close()
    server.restart()
    after = login_tls(server, before.context)
    assert retr_with_session(after, "a.bin", session) is None
    assert retr(after, "a.bin") == data
    after.quit()


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_session_from_a_refused_data_handshake_is_not_resumable(server, version):
    """A full handshake on the data port is refused; the session it created
    must not let a second connection in as a "resumption"."""
    data = payload(10_000)
    upload_plain(server, "a.bin", data)
    ftp = ftp_tls(server, version=version)
    ftp.voidcmd("TYPE I")
    stranger = tls_context(version)
    sessions = []
    for attempt in range(2):
        port = epsv_port(ftp.sendcmd("EPSV"))
        s = socket.create_connection((server.host, port), timeout=30)
        assert ftp.sendcmd("RETR a.bin").startswith("150")
        got = b""
        conn = None
        try:
            conn = stranger.wrap_socket(s, server_hostname=server.host,
                                        session=sessions[-1] if sessions else None)
            while chunk := conn.recv(65536):
                got += chunk
        except (ssl.SSLError, OSError):
            pass
        if conn is not None and conn.session is not None:
            sessions.append(conn.session)
        assert got == b"", f"attempt {attempt}: data flowed"
        with pytest.raises(ftplib.error_perm, match="^522"):
            ftp.voidresp()
    assert sessions, "the stranger got no session to offer"
    # The real client still transfers.
    assert retr(ftp, "a.bin") == data
    ftp.quit()


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ftplib_tls_session_reuse_optional(dropvault, version):
    server = dropvault(ftp_tls_session_reuse="optional")
    data = payload(2 * SEGMENT + 1)
    upload_plain(server, "fresh.bin", data)
    ftp = ftp_tls(server, reuse=False, version=version)
    assert retr(ftp, "fresh.bin") == data
    assert retr(ftp, "fresh.bin", rest=SEGMENT + 1) == data[SEGMENT + 1:]
    ftp.quit()


def test_tls_required(dropvault, tmp_path):
    server = dropvault(ftp_tls="required")
    # Before AUTH TLS: no login at all.
    r = raw(server)
    code, text = r.cmd(f"USER {USER}")
    assert code == 530, text
    code, text = r.cmd(f"PASS {PASSWORD}")
    assert code == 530, text
    r.close()
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp_plain(server)

    data = payload(150_000)
    src = tmp_path / "req.bin"
    src.write_bytes(data)
    r = curl("--ssl-reqd", "-k", "-u", f"{USER}:{PASSWORD}", "-T", str(src),
             ftp_url(server, "/req.bin"))
    assert r.returncode == 0, r.stderr
    with ftp_tls(server) as ftp:
        assert retr(ftp, "req.bin") == data

    # Logged in over TLS, but data in the clear: refused.
    ftp = ResumingFTP_TLS(context=tls_context(), timeout=30)
    ftp.connect(server.host, server.port)
    ftp.auth()
    ftp.login(USER, PASSWORD)
    with pytest.raises(ftplib.error_perm, match="^521"):
        retr(ftp, "req.bin")
    with pytest.raises(ftplib.error_perm, match="^521"):
        stor(ftp, "clear.bin", payload(1000))
    with pytest.raises(ftplib.error_perm, match="^521"):
        ftp.nlst()
    ftp.voidcmd("PBSZ 0")
    with pytest.raises(ftplib.error_perm, match="^534"):
        ftp.voidcmd("PROT C")
    ftp.voidcmd("PROT P")
    ftp._prot_p = True
    assert retr(ftp, "req.bin") == data
    assert ftp.nlst() == ["req.bin"]
    ftp.quit()

    # Implicit FTPS needs no AUTH TLS.
    out = tmp_path / "implicit.bin"
    r = curl("-k", "-u", f"{USER}:{PASSWORD}", "-o", str(out),
             ftp_url(server, "/req.bin", "ftps", implicit=True))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


def test_tls_off(dropvault):
    server = dropvault(ftp_tls="off")
    assert server.implicit_port is None
    r = raw(server)
    code, feat = r.cmd("FEAT")
    assert code == 211
    assert "AUTH TLS" not in feat and "PROT" not in feat and "PBSZ" not in feat
    code, text = r.cmd("AUTH TLS")
    assert code == 534, text
    r.login()
    code, _ = r.cmd("NOOP")
    assert code == 200
    r.close()


def test_configured_certificate_is_served(dropvault, tmp_path):
    """tls_cert / tls_key: the server presents the configured certificate,
    and a client that trusts only it verifies the connection."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key)
    server = dropvault(ftp_tls_cert=str(cert), ftp_tls_key=str(key))
    data = payload(10_000)
    upload_plain(server, "c.bin", data)
    with ftp_tls(server) as ftp:
        der = ftp.sock.getpeercert(binary_form=True)
        assert retr(ftp, "c.bin") == data
    assert der == ssl.PEM_cert_to_DER_cert(cert.read_text())
    out = tmp_path / "verified.bin"
    r = curl("--ssl-reqd", "--cacert", str(cert), "-u", f"{USER}:{PASSWORD}", "-o", str(out),
             ftp_url(server, "/c.bin"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
