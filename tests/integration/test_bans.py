"""Brute-force bans that cannot be dodged (issue 12, item 1): failures
counted per client and account, bans that reach sessions opened before
them, a guess budget that parallel sessions do not multiply, IPv6 clients
counted per prefix, and server-side faults that are not wrong passwords."""

import subprocess
import threading
import uuid

import pytest

from dvclients import PASSWORD, USER, Raw, raw

MALLORY, MALLORY_PW = "mallory", "Mallory-pw-1234"


def attempt(server, user, password, source=None):
    """One login on a fresh connection (from the address `source`, if
    given): the PASS reply, or the greeting's refusal."""
    r = Raw(server.host, server.port, timeout=30, source=source)
    try:
        code, text = r.reply()
        if code != 220:
            return code, text
        r.cmd(f"USER {user}")
        return r.cmd(f"PASS {password}")
    finally:
        r.close()


def test_a_login_as_another_account_does_not_forgive_guesses(dropvault):
    # Before: 4 guesses at alice, one good login as mallory, repeat — the
    # success wiped the address's record and it was never banned.
    server = dropvault(users={USER: PASSWORD, MALLORY: MALLORY_PW}, ftp_ban_after_failures=5)
    replies = []
    for _ in range(3):
        for _ in range(4):
            replies.append(attempt(server, USER, "guess-" + uuid.uuid4().hex[:6]))
        replies.append(attempt(server, MALLORY, MALLORY_PW))
        if replies[-1][0] != 230:
            break
    codes = [c for c, _ in replies]
    # Round one: 4 failures, mallory logs in; round two: the first guess
    # is the fifth failure and bans the address.
    assert codes[:6] == [530, 530, 530, 530, 230, 421], replies
    assert codes[-1] == 421 and "try again later" in replies[-1][1].lower(), replies
    assert len(server.events("banned")) == 1
    assert attempt(server, MALLORY, MALLORY_PW)[0] == 421


def test_a_ban_reaches_sessions_opened_before_it(dropvault):
    # 20 sessions opened before the first failure, each sending a wrong
    # password at once: only the budget's worth of guesses is checked.
    server = dropvault(ftp_ban_after_failures=3, ftp_max_login_failures=10,
                       ftp_max_sessions_per_ip=30)
    sessions = [raw(server) for _ in range(20)]
    spare = raw(server)
    for r in sessions:
        assert r.cmd(f"USER {USER}")[0] == 331
    for r in sessions:
        r.send("PASS wrong-" + uuid.uuid4().hex[:6])
    replies = [r.reply() for r in sessions]
    codes = sorted(c for c, _ in replies)
    assert codes.count(530) == 2 and codes.count(421) == 18, replies
    assert len(server.events("login_failed")) == 3, "more guesses were checked than the budget"
    # A session opened before the ban cannot log in now, not even with the
    # right password.
    assert spare.cmd(f"USER {USER}")[0] == 331
    code, text = spare.cmd(f"PASS {PASSWORD}")
    assert code == 421 and "failed logins" in text, text
    assert spare.closed_by_peer()
    for r in sessions + [spare]:
        r.close()


def test_a_session_is_closed_after_max_login_failures(dropvault):
    server = dropvault(ftp_max_login_failures=2, ftp_ban_after_failures=100)
    r = raw(server)
    r.cmd(f"USER {USER}")
    assert r.cmd("PASS one")[0] == 530
    r.cmd(f"USER {USER}")
    code, text = r.cmd("PASS two")
    assert code == 421, text
    assert r.closed_by_peer()
    # Not a ban: a new session may log in.
    assert attempt(server, USER, PASSWORD)[0] == 230
    assert not server.events("banned")


def test_a_broken_users_file_is_not_a_wrong_password(dropvault):
    server = dropvault(ftp_ban_after_failures=2)
    users = server.data_dir / "users.toml"
    good = users.read_bytes()
    users.write_text("this is [not toml\n")
    try:
        for _ in range(4):
            code, text = attempt(server, USER, PASSWORD)
            assert code == 421 and "try again later" in text.lower(), text
    finally:
        users.write_bytes(good)
    # Nothing was counted: no ban, and the right password works again.
    assert not server.events("banned")
    assert not server.events("login_failed")
    assert attempt(server, USER, PASSWORD)[0] == 230
    refused = server.events("login_refused", user=USER)
    assert len(refused) == 4 and "users.toml" in refused[0]["error"], refused


@pytest.fixture
def v6_addresses():
    """Three IPv6 addresses of one /64 on the loopback interface (root)."""
    prefix = "fd00:d7:%x::" % (uuid.uuid4().int & 0xffff)
    addrs = [prefix + str(i) for i in (1, 2, 3)]
    added = []
    try:
        for a in addrs:
            r = subprocess.run(["ip", "-6", "addr", "add", a + "/128", "dev", "lo", "nodad"],
                               capture_output=True, text=True, timeout=10)
            if r.returncode != 0:
                pytest.skip(f"cannot add IPv6 addresses to lo: {r.stderr.strip()}")
            added.append(a)
        yield addrs
    finally:
        for a in added:
            subprocess.run(["ip", "-6", "addr", "del", a + "/128", "dev", "lo"],
                           capture_output=True, timeout=10)


@pytest.mark.parametrize("prefix", [64, 128])
def test_ipv6_clients_are_counted_per_prefix(dropvault, v6_addresses, prefix):
    server_ip, first, second = v6_addresses
    server = dropvault(ftp_listen=f"[{server_ip}]:0", ftp_implicit_tls_listen="",
                       ftp_ban_after_failures=2, ftp_ban_ipv6_prefix=prefix)
    assert server.host == server_ip
    assert attempt(server, USER, "wrong1", source=first)[0] == 530
    assert attempt(server, USER, "wrong2", source=first)[0] == 421
    # Another address of the same /64 is the same client; with /128 it is
    # not.
    code, text = attempt(server, USER, PASSWORD, source=second)
    if prefix == 64:
        assert code == 421 and "failed logins" in text, text
    else:
        assert code == 230, text


def test_parallel_logins_of_one_client_all_succeed(dropvault):
    # The guess budget makes checks wait, not fail: a client logging in on
    # many connections at once (rclone, lftp mirror) gets in on all.
    server = dropvault(ftp_ban_after_failures=2, ftp_max_sessions_per_ip=30)
    results = []

    def one():
        results.append(attempt(server, USER, PASSWORD)[0])

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [230] * 12, results
