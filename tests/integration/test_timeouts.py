"""No transfer or session hangs forever (issue 12, item 4): stalled data
connections end their session and free the upload for a resume, logins
have a deadline, unused passive ports close, sockets use TCP keepalive, and
the open-file limit is raised at start."""

import os
import pathlib
import resource
import socket
import subprocess
import time

import pytest

from dvclients import SEGMENT, epsv_port, ftp_plain, payload, raw, retr, stor, wait_until


def stalled_upload(server, name, data):
    """Logs in, starts STOR, sends `data` and then nothing, keeping the data
    connection open; returns (control, data socket, passive port)."""
    r = raw(server, login=True)
    assert r.cmd("TYPE I")[0] == 200
    code, text = r.cmd("EPSV")
    port = epsv_port(text)
    d = socket.create_connection((server.host, port), timeout=30)
    code, text = r.cmd(f"STOR {name}")
    assert code == 150, text
    d.sendall(data)
    return r, d, port


def test_a_stalled_upload_ends_its_session_and_can_be_resumed(dropvault):
    server = dropvault(ftp_data_timeout_secs=2)
    # More than the 1 MiB the server may hold in memory, so part of it is
    # sealed into staging before the stall.
    data = payload(42 * SEGMENT + 1000)
    sent = 40 * SEGMENT + SEGMENT // 2
    r, d, _ = stalled_upload(server, "big.bin", data[:sent])
    # Nothing more comes; the socket stays open. The server gives up.
    code, text = r.reply()
    assert code == 421 and "No data moved" in text, text
    assert r.closed_by_peer()
    # Another session finds the resume point and completes the file.
    with ftp_plain(server) as ftp:
        size = int(ftp.sendcmd("SIZE big.bin").split()[1])
        assert 0 < size <= sent and size % SEGMENT == 0, size
        stor(ftp, "big.bin", data[size:], rest=size)
        assert retr(ftp, "big.bin") == data
    d.close()
    r.close()


def sockets_of(port: int) -> list[str]:
    """`ss` lines (with timers) of established TCP sockets on local `port`."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_control_and_data_connections_use_tcp_keepalive(dropvault):
    server = dropvault(ftp_data_timeout_secs=60)
    r, d, port = stalled_upload(server, "ka.bin", payload(1000))
    # ss shows one timer per socket: keepalive's once nothing is in flight.
    for local_port in (server.port, port):
        assert wait_until(lambda: any("timer:(keepalive" in line
                                      for line in sockets_of(local_port))), \
            sockets_of(local_port)
    d.close()
    assert r.reply()[0] in (226, 426)
    r.close()


def test_a_session_must_log_in_in_time(dropvault):
    server = dropvault(ftp_login_timeout_secs=2)
    early = raw(server)
    logged_in = raw(server, login=True)
    # NOOPs do not extend the deadline.
    replies = []
    for _ in range(40):
        code, text = early.cmd("NOOP")
        replies.append(code)
        if code != 200:
            break
        time.sleep(0.5)
    assert code == 421 and "Login timeout" in text, replies
    assert early.closed_by_peer()
    # A session that logged in is not held to it.
    assert logged_in.cmd("NOOP")[0] == 200
    early.close()
    logged_in.close()


def test_an_unused_passive_port_closes(dropvault):
    server = dropvault(ftp_data_timeout_secs=2)
    r = raw(server, login=True)
    port = epsv_port(r.cmd("EPSV")[1])
    time.sleep(4)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, port), timeout=10).close()
    code, text = r.cmd("LIST")
    assert code == 503, text
    r.close()


def open_file_limit(pid: int) -> tuple[str, str]:
    for line in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-file limit in /proc/PID/limits")


def test_the_open_file_limit_is_raised_to_the_hard_limit(dropvault):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = dropvault(nofile=(256, hard))
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert open_file_limit(server.proc.pid) == (want, want)
    assert "open-file limit is too low" not in server.log_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering and restoring a hard limit needs root")
def test_a_hard_limit_too_low_for_max_sessions_is_reported(dropvault):
    server = dropvault(nofile=(200, 200), ftp_max_sessions=500)
    assert open_file_limit(server.proc.pid) == ("200", "200")
    warnings = [e for e in server.events() if "open-file limit is too low" in e.get("message", "")]
    assert warnings and warnings[0]["needed"] == 500 * 4 + 64, warnings
