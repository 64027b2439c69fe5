"""What the SSH front end refuses (issue 13): no shell, exec, port or agent
forwarding; bans shared with FTP; a cap on authentication requests per
connection; a login timeout for connections that never log in; keys not
on file; RSA keys."""

from __future__ import annotations

import socket
import subprocess
import uuid

import pytest

from dvclients import (PASSWORD, USER, Raw, paramiko_connect, paramiko_sftp, run_cli,
                       ssh_keygen, ssh_options, wait_until)


def add_key(server, key, user: str = USER) -> subprocess.CompletedProcess:
    return run_cli(["user", "key", "add", user, "--file", f"{key}.pub"], server.data_dir)


@pytest.fixture
def keyed(dropvault, tmp_path):
    server = dropvault()
    key = ssh_keygen(tmp_path / "ssh")
    r = add_key(server, key)
    assert r.returncode == 0, r.stderr
    return server, key


def ssh(server, key, *args: str, timeout: int = 60, stdin: str = "") -> subprocess.CompletedProcess:
    cmd = ["ssh", *ssh_options(key.parent / "known_hosts", key), "-p", str(server.sftp_port),
           *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


def test_exec_is_refused(keyed):
    server, key = keyed
    r = ssh(server, key, f"{USER}@{server.host}", "echo", "hi")
    assert r.returncode != 0
    assert "hi" not in r.stdout
    assert r.stdout == ""


def test_a_shell_is_refused(keyed):
    server, key = keyed
    # No command: ssh asks for a shell (with -tt, a pty first).
    for extra in (["-T"], ["-tt"]):
        r = ssh(server, key, *extra, f"{USER}@{server.host}", stdin="echo hi\nexit\n")
        assert r.returncode != 0, extra
        assert "hi" not in r.stdout, extra


def test_port_forwarding_is_refused(keyed):
    server, key = keyed
    # Forward a local port to the server's own FTP port: a forwarded
    # connection would get its 220 greeting.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    cmd = ["ssh", *ssh_options(key.parent / "known_hosts", key), "-p", str(server.sftp_port),
           "-N", "-o", "ExitOnForwardFailure=yes",
           "-L", f"127.0.0.1:{local}:127.0.0.1:{server.port}", f"{USER}@{server.host}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=5).close()
                return True
            except OSError:
                return proc.poll() is not None

        assert wait_until(listening, timeout=30), "ssh never listened on the local port"
        if proc.poll() is None:
            with socket.create_connection(("127.0.0.1", local), timeout=30) as c:
                c.settimeout(30)
                got = b""
                try:
                    while True:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                except (ConnectionResetError, socket.timeout):
                    pass
            assert b"220" not in got, got
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # And the same with a remote forward: refused at once.
    r = ssh(server, key, "-N", "-o", "ExitOnForwardFailure=yes",
            "-R", f"127.0.0.1:0:127.0.0.1:{server.port}", f"{USER}@{server.host}")
    assert r.returncode != 0


def _channel_request(chan, kind: str) -> bool:
    """Sends a channel request with want-reply set; True if the server
    accepted it."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_REQUEST

    m = paramiko.Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string(kind)
    m.add_boolean(True)
    chan._event_pending()
    chan.transport._send_user_message(m)
    try:
        chan._wait_for_event()
    except paramiko.SSHException:
        return False
    return True


def test_agent_forwarding_and_the_like_are_refused_by_paramiko(server):
    import paramiko

    # One session channel per connection: each request on a fresh one.
    def each(check) -> None:
        client = paramiko_connect(server.host, server.sftp_port, USER, PASSWORD)
        try:
            check(client.get_transport())
        finally:
            client.close()

    def agent(t) -> None:
        assert not _channel_request(t.open_session(timeout=30), "auth-agent-req@openssh.com")

    def x11(t) -> None:
        with pytest.raises(paramiko.SSHException):
            t.open_session(timeout=30).request_x11(auth_protocol="MIT-MAGIC-COOKIE-1",
                                                   auth_cookie="00" * 16)

    def exec_(t) -> None:
        with pytest.raises(paramiko.SSHException):
            t.open_session(timeout=30).exec_command("echo hi")

    def shell(t) -> None:
        with pytest.raises(paramiko.SSHException):
            t.open_session(timeout=30).invoke_shell()

    def other_subsystem(t) -> None:
        with pytest.raises(paramiko.SSHException):
            t.open_session(timeout=30).invoke_subsystem("netconf")

    def direct_tcpip(t) -> None:
        with pytest.raises(paramiko.SSHException):
            t.open_channel("direct-tcpip", ("127.0.0.1", server.port), ("127.0.0.1", 4000),
                           timeout=30)

    def tcpip_forward(t) -> None:
        with pytest.raises(paramiko.SSHException):
            t.request_port_forward("127.0.0.1", 0)

    for check in (agent, x11, exec_, shell, other_subsystem, direct_tcpip, tcpip_forward):
        each(check)
    # After all that, SFTP on a fresh connection works.
    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD)
    try:
        assert sftp.listdir(".") == []
    finally:
        client.close()


def test_agent_forwarding_is_refused_to_openssh(keyed, tmp_path):
    server, key = keyed
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, timeout=30,
                           check=True).stdout
    env_vars = dict(part.split("=", 1) for part in
                    (seg.strip() for seg in agent.replace("\n", ";").split(";")) if "=" in part)
    import os

    env = dict(os.environ, **{k: v for k, v in env_vars.items()
                              if k in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")})
    try:
        cmd = ["ssh", *ssh_options(key.parent / "known_hosts", key), "-o",
               "ForwardAgent=yes", "-o", f"IdentityAgent={env['SSH_AUTH_SOCK']}", "-v",
               "-p", str(server.sftp_port), f"{USER}@{server.host}", "echo", "hi"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        assert r.returncode != 0 and "hi" not in r.stdout
        assert "Requesting authentication agent forwarding" in r.stderr, r.stderr
    finally:
        subprocess.run(["ssh-agent", "-k"], env=env, capture_output=True, timeout=30)


def sftp_wrong_password(server) -> None:
    import paramiko

    with pytest.raises(paramiko.AuthenticationException):
        client = paramiko_connect(server.host, server.sftp_port, USER,
                                  "wrong-" + uuid.uuid4().hex[:6])
        client.close()


def test_sftp_and_ftp_failures_count_toward_one_ban(dropvault):
    server = dropvault(ftp_ban_after_failures=3)
    sftp_wrong_password(server)
    sftp_wrong_password(server)
    assert len(server.wait_for_event("login_failed", protocol="sftp", count=2)) == 2
    r = Raw(server.host, server.port, timeout=30)
    assert r.reply()[0] == 220
    r.cmd(f"USER {USER}")
    code, text = r.cmd("PASS wrong-ftp")
    r.close()
    assert code in (530, 421), text
    assert server.wait_for_event("banned"), "three failures did not ban"
    # Banned on FTP: refused at the greeting.
    r = Raw(server.host, server.port, timeout=30)
    code, text = r.reply()
    r.close()
    assert code == 421, text
    # Banned on SFTP: the connection is closed before any SSH banner, and
    # the right password does not help.
    with socket.create_connection((server.host, server.sftp_port), timeout=30) as s:
        s.settimeout(30)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    assert not got.startswith(b"SSH-"), got
    import paramiko
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        paramiko_connect(server.host, server.sftp_port, USER, PASSWORD, timeout=30).close()


def test_sftp_failures_alone_ban_and_reach_ftp(dropvault):
    server = dropvault(ftp_ban_after_failures=2)
    sftp_wrong_password(server)
    # The second failure bans: it ends the connection at once.
    import paramiko
    with pytest.raises((paramiko.AuthenticationException, paramiko.SSHException, EOFError)):
        paramiko_connect(server.host, server.sftp_port, USER, "wrong-again").close()
    assert server.wait_for_event("banned", protocol="sftp")
    r = Raw(server.host, server.port, timeout=30)
    code, text = r.reply()
    r.close()
    assert code == 421, text


def test_max_auth_attempts_caps_one_connection(dropvault):
    import paramiko

    server = dropvault(sftp_max_auth_attempts=2, ftp_ban_after_failures=100)
    sock = socket.create_connection((server.host, server.sftp_port), timeout=30)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=30)
        refused = 0
        ended = False
        for i in range(4):
            password = PASSWORD if i == 2 else "wrong-" + str(i)
            try:
                transport.auth_password(USER, password)
            except paramiko.AuthenticationException:
                refused += 1
                continue
            except (paramiko.SSHException, EOFError, OSError):
                ended = True
                break
            pytest.fail(f"attempt {i + 1} logged in past the cap of 2")
        assert refused <= 2, refused
        assert ended or not transport.is_active()
        assert not transport.is_authenticated()
    finally:
        transport.close()
    assert len(server.events("login_failed", protocol="sftp")) <= 2
    assert not server.events("login", protocol="sftp")


def test_openssh_gives_up_after_max_auth_attempts(dropvault, tmp_path):
    # OpenSSH asks for a password up to NumberOfPasswordPrompts times on
    # one connection; the server's cap ends it first.
    server = dropvault(sftp_max_auth_attempts=2, ftp_ban_after_failures=100)
    known = tmp_path / "known_hosts"
    opts = ssh_options(known, batch=False)
    opts = [o.replace("NumberOfPasswordPrompts=1", "NumberOfPasswordPrompts=5") for o in opts]
    askpass = tmp_path / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho wrong-password\n")
    askpass.chmod(0o755)
    import os
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
               DISPLAY=":0")
    r = subprocess.run(["sftp", *opts, "-P", str(server.sftp_port), f"{USER}@{server.host}"],
                       input="ls\n", capture_output=True, text=True, timeout=60, env=env,
                       start_new_session=True)
    assert r.returncode != 0
    failed = server.wait_for_event("login_failed", protocol="sftp", count=2)
    assert len(failed) == 2, failed


def test_a_connection_that_never_logs_in_is_closed(dropvault):
    server = dropvault(sftp_login_timeout_secs=2)
    with socket.create_connection((server.host, server.sftp_port), timeout=30) as s:
        s.sendall(b"SSH-2.0-dropvault-test\r\n")
        s.settimeout(30)
        got = b""
        closed = False
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                got += chunk
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            pass
    assert got.startswith(b"SSH-2.0-"), got
    assert closed, "the server kept a silent connection open"


def test_a_key_not_on_file_is_refused_but_a_password_works(keyed, tmp_path):
    server, key = keyed
    stranger = ssh_keygen(tmp_path / "other", name="id_other")
    import paramiko
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_connect(server.host, server.sftp_port, USER, key=stranger).close()
    assert server.wait_for_event("login_key_refused", protocol="sftp")
    # The key on file works, and a password with the stranger key offered
    # first still logs in.
    paramiko_connect(server.host, server.sftp_port, USER, key=key).close()
    client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD, key=stranger)
    try:
        assert sftp.listdir(".") == []
    finally:
        client.close()
    # Another user's key does not log in as alice.
    r = run_cli(["user", "add", "bob", "--password-stdin"], server.data_dir,
                stdin="Bob-pw-998877\n")
    assert r.returncode == 0, r.stderr
    bobs = ssh_keygen(tmp_path / "bob", name="id_bob")
    assert add_key(server, bobs, "bob").returncode == 0
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_connect(server.host, server.sftp_port, USER, key=bobs).close()
    paramiko_connect(server.host, server.sftp_port, "bob", key=bobs).close()


def test_an_rsa_key_cannot_be_added(server, tmp_path):
    rsa = ssh_keygen(tmp_path / "rsa", name="id_rsa", kind="rsa")
    r = add_key(server, rsa)
    assert r.returncode != 0
    r = run_cli(["user", "key", "list", USER], server.data_dir)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout
    # And it does not log in.
    import paramiko
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_connect(server.host, server.sftp_port, USER, key=rsa).close()
