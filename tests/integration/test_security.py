"""Defences seen from outside: login replies that do not reveal users,
bans, session limits, idle timeout, paths that cannot leave the user's
folder, line limits, no FTP bounce, data connections only from the client."""

import ftplib
import os
import socket
import uuid

import pytest

from dvclients import (PASSWORD, USER, epsv_port, ftp_plain, mlsd, payload, raw, retr,
                       stor, wait_until)


def login_attempt(server, user, password):
    r = raw(server)
    first = r.cmd(f"USER {user}")
    second = r.cmd(f"PASS {password}")
    r.close()
    return first, second


def test_unknown_user_and_wrong_password_look_the_same(dropvault):
    server = dropvault(ftp_ban_after_failures=100)
    wrong_pw = "wrong-" + uuid.uuid4().hex
    unknown = login_attempt(server, "nobody-" + uuid.uuid4().hex[:8], wrong_pw)
    wrong = login_attempt(server, USER, wrong_pw)
    invalid = login_attempt(server, "../../etc", wrong_pw)
    assert unknown == wrong == invalid
    assert unknown[0][0] == 331 and unknown[1][0] == 530
    ok = login_attempt(server, USER, PASSWORD)
    assert ok[1][0] == 230
    assert len(server.wait_for_event("login_failed", count=3)) == 3
    # Passwords, right or wrong, never reach the log.
    log = server.log_text()
    assert wrong_pw not in log and PASSWORD not in log


def test_repeated_failed_logins_ban_the_address(dropvault):
    server = dropvault(ftp_ban_after_failures=3)
    r = raw(server)
    for attempt in range(3):
        assert r.cmd(f"USER {USER}")[0] == 331
        code, text = r.cmd("PASS nope")
        if attempt < 2:
            assert code == 530, text
    assert code == 421, text
    assert r.closed_by_peer()
    # New connections from the address are refused, even with the right
    # password.
    s = socket.create_connection((server.host, server.port), timeout=10)
    greeting = s.recv(1024)
    assert greeting.startswith(b"421"), greeting
    s.close()
    with pytest.raises(ftplib.error_temp, match="^421"):
        ftp_plain(server)
    assert server.events("banned")
    assert len(server.events("login_failed")) == 3


@pytest.mark.parametrize("setting", ["ftp_max_sessions_per_ip", "ftp_max_sessions"])
def test_session_limits(dropvault, setting):
    server = dropvault(**{setting: 2})
    first, second = raw(server), raw(server)
    third = socket.create_connection((server.host, server.port), timeout=10)
    greeting = third.recv(1024)
    assert greeting.startswith(b"421"), greeting
    third.close()
    assert first.cmd("QUIT")[0] == 221
    first.close()

    def admitted():
        s = socket.create_connection((server.host, server.port), timeout=10)
        ok = s.recv(1024).startswith(b"220")
        s.close()
        return ok

    assert wait_until(admitted, timeout=10), "a freed session slot was never given back"
    second.close()


def test_idle_timeout_closes_with_421(dropvault):
    server = dropvault(ftp_idle_timeout_secs=2)
    r = raw(server, login=True, timeout=30)
    peer = "%s:%d" % r.sock.getsockname()
    code, text = r.reply()
    assert code == 421, text
    assert r.closed_by_peer()
    assert server.wait_for_event("logout", peer=peer), "idle session's logout was not logged"
    assert server.events("idle_timeout")


def test_paths_cannot_leave_the_users_folder(server):
    home = server.user_dir()
    data_dir = server.data_dir
    escape_name = f"dropvault-escape-{uuid.uuid4().hex[:8]}"
    with ftp_plain(server) as ftp:
        stor(ftp, "mine.bin", payload(100))
        for path in ("../../..", "/../../..", "../" * 20, "./../."):
            ftp.cwd(path)
            assert ftp.pwd() == "/"
        for path in ("../../users.toml", "../users.toml", "../../kek.pem", "/etc/passwd",
                     "../../../../../../../../etc/passwd", "../.staging", "../alice/mine.bin"):
            with pytest.raises(ftplib.error_perm, match="^55"):
                retr(ftp, path)
            with pytest.raises(ftplib.error_perm, match="^55"):
                ftp.size(path)
        for path in ("..\\..\\users.toml", "\\etc\\passwd", "sub\\..\\..\\kek.pem"):
            with pytest.raises(ftplib.error_perm, match="^55"):
                retr(ftp, path)
            with pytest.raises(ftplib.error_perm, match="^55"):
                ftp.cwd(path)
        # Listings of ".." are the user's own root.
        assert sorted(ftp.nlst("../..")) in (["mine.bin"], ["../../mine.bin"], ["/mine.bin"])
        assert set(mlsd(ftp, "/..")) <= {"mine.bin", ".", ".."}

        # Writes that try to climb land inside the root.
        ftp.mkd("../../" + escape_name)
        stor(ftp, f"../../../{escape_name}.bin", payload(50))
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.rename("mine.bin", f"../../../../tmp/{escape_name}")
    assert (home / escape_name).is_dir() and (home / f"{escape_name}.bin").is_file()
    for outside in (data_dir / escape_name, data_dir / "files" / escape_name,
                    data_dir.parent / escape_name, data_dir / f"{escape_name}.bin",
                    data_dir / "files" / f"{escape_name}.bin",
                    data_dir.parent / f"{escape_name}.bin",
                    os.path.join("/tmp", escape_name)):
        assert not os.path.exists(outside), outside

    # A NUL in a path is refused and the session carries on.
    r = raw(server, login=True)
    code, text = r.cmd(b"RETR mine.bin\x00../../users.toml")
    assert 500 <= code < 600, text
    code, text = r.cmd(b"CWD ..\x00..")
    assert 500 <= code < 600, text
    assert r.cmd("NOOP")[0] == 200
    assert '"/"' in r.cmd("PWD")[1]
    r.close()


def test_symlinks_do_not_lead_out(server):
    home = server.user_dir()
    with ftp_plain(server) as ftp:
        stor(ftp, "real.bin", payload(10))
    users_before = (server.data_dir / "users.toml").read_bytes()
    os.symlink(server.data_dir, home / "dirlink")
    os.symlink(server.data_dir / "users.toml", home / "filelink")
    with ftp_plain(server) as ftp:
        names = set(ftp.nlst())
        assert "dirlink" not in names and "filelink" not in names
        for path in ("dirlink/users.toml", "filelink", "dirlink/kek.pem"):
            with pytest.raises(ftplib.error_perm, match="^55"):
                retr(ftp, path)
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.cwd("dirlink")
        with pytest.raises(ftplib.error_perm, match="^55"):
            stor(ftp, "filelink", payload(20))
        with pytest.raises(ftplib.error_perm, match="^55"):
            stor(ftp, "dirlink/planted.bin", payload(20))
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.delete("filelink")
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.rename("filelink", "stolen")
    assert (server.data_dir / "users.toml").read_bytes() == users_before
    assert not (server.data_dir / "planted.bin").exists()
    assert os.path.islink(home / "filelink")


def test_users_cannot_see_each_other(dropvault):
    server = dropvault(users={USER: PASSWORD, "bob": "bob-Pw-1234"})
    secret = payload(5000)
    with ftp_plain(server) as ftp:
        stor(ftp, "secret.bin", secret)
    with ftp_plain(server, user="bob", password="bob-Pw-1234") as ftp:
        assert ftp.nlst() == []
        for path in ("../alice/secret.bin", "/alice/secret.bin", "../../files/alice/secret.bin",
                     "secret.bin"):
            with pytest.raises(ftplib.error_perm, match="^55"):
                retr(ftp, path)
        with pytest.raises(ftplib.error_perm, match="^55"):
            ftp.cwd("../alice")
        stor(ftp, "secret.bin", payload(10))
    with ftp_plain(server) as ftp:
        assert retr(ftp, "secret.bin") == secret


def test_overlong_command_line(server):
    r = raw(server, login=True)
    # 4094 bytes and CRLF fit the 4 KiB limit: parsed, and unknown.
    code, text = r.cmd(b"XYZW " + b"a" * 4089)
    assert code == 502, text
    code, text = r.cmd(b"NOOP " + b"A" * (4097 - 5))
    assert code == 500, text
    assert r.cmd("NOOP")[0] == 200
    code, text = r.cmd(b"STOR " + b"B" * 200_000)
    assert code == 500, text
    assert r.cmd("NOOP")[0] == 200
    assert '"/"' in r.cmd("PWD")[1]
    r.close()


def test_port_and_eprt_only_to_the_client(server):
    r = raw(server, login=True)
    for cmd in ("PORT 10,1,2,3,78,32", "PORT 127,0,0,1,0,80", "PORT 127,0,0,1,3,255",
                "EPRT |1|10.1.2.3|20000|", "EPRT |1|127.0.0.1|25|",
                "EPRT |2|::1|20000|"):
        code, text = r.cmd(cmd)
        assert 500 <= code < 600, f"{cmd}: {text}"
    # None of them set up a data connection.
    code, text = r.cmd("NLST")
    if code == 150:
        code, text = r.reply()
    assert code in (425, 503), text
    assert server.events("port_refused")
    r.close()


def test_data_connection_only_from_the_client_address(server):
    data = payload(20_000)
    with ftp_plain(server) as ftp:
        stor(ftp, "d.bin", data)
    r = raw(server, login=True)
    r.cmd("TYPE I")
    code, text = r.cmd("EPSV")
    port = epsv_port(text)
    stranger = socket.socket()
    stranger.settimeout(20)
    stranger.bind(("127.0.0.2", 0))
    stranger.connect((server.host, port))
    code, text = r.cmd("RETR d.bin")
    assert code == 150, text
    assert server.wait_for_event("data_connection_refused")
    try:
        leaked = stranger.recv(65536)
    except ConnectionResetError:
        leaked = b""
    assert leaked == b""
    stranger.close()
    with socket.create_connection((server.host, port), timeout=20) as s:
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert r.reply()[0] == 226
    assert got == data
    r.close()
