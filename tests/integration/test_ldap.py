"""LDAP accounts (issue 15): the real binary with `auth.backend = "ldap"`
against a real OpenLDAP slapd (the `slapd` fixture, slapd.py). FTP and
SFTP logins over ldaps:// and StartTLS, SSH keys from sshPublicKey,
refusals that look like any wrong password, a directory that goes away
("try again later", no ban) and comes back, and one vault for `Alice` and
`alice`."""

from __future__ import annotations

import ftplib
import io
import json

import paramiko
import pytest

from dvclients import ftp_tls, paramiko_connect, paramiko_sftp, payload, retr, stor
from slapd import GROUP_DN, PEOPLE_DN, SERVICE_DN, SERVICE_PASSWORD, USERS, Slapd
from test_bans import attempt


def pw(name: str) -> str:
    return USERS[name][0]


def ldap_settings(slapd: Slapd, tls: str = "ldaps", **extra) -> dict[str, str]:
    """Server settings for the directory: over ldaps:// or StartTLS, the
    test CA, the service account, members of the group only, no cache."""
    url, starttls = ((slapd.ldaps_url, "false") if tls == "ldaps"
                     else (slapd.ldap_url, "true"))
    settings = {
        "auth_backend": "ldap",
        "auth_ldap_url": url,
        "auth_ldap_starttls": starttls,
        "auth_ldap_ca_file": str(slapd.ca_file),
        "auth_ldap_bind_dn": SERVICE_DN,
        "auth_ldap_bind_password": SERVICE_PASSWORD,
        "auth_ldap_base_dn": PEOPLE_DN,
        "auth_ldap_require_group": GROUP_DN,
        "auth_ldap_timeout_secs": "5",
        "auth_ldap_cache_secs": "0",
    }
    settings.update(extra)
    return settings


def refused_over_sftp(server, user: str, password: str | None = None, key=None) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_connect(server.host, server.sftp_port, user, password=password, key=key).close()


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_ftp_and_sftp_logins_over_the_directory(dropvault, slapd, tls):
    server = dropvault(users={}, **ldap_settings(slapd, tls))
    data = payload(50_000)
    ftp = ftp_tls(server, user="alice", password=pw("alice"))
    try:
        stor(ftp, "over-ftp.bin", data)
    finally:
        ftp.quit()
    client, sftp = paramiko_sftp(server.host, server.sftp_port, "alice", password=pw("alice"))
    try:
        with sftp.open("over-ftp.bin", "rb") as f:
            assert f.read() == data
        sftp.putfo(io.BytesIO(data), "over-sftp.bin")
    finally:
        client.close()
    # alice's key from her entry's sshPublicKey.
    client, sftp = paramiko_sftp(server.host, server.sftp_port, "alice", key=slapd.alice_key)
    try:
        assert sorted(sftp.listdir(".")) == ["over-ftp.bin", "over-sftp.bin"]
    finally:
        client.close()
    client, sftp = paramiko_sftp(server.host, server.sftp_port, "bob", password=pw("bob"))
    try:
        assert sftp.listdir(".") == []
    finally:
        client.close()


def test_wrong_empty_unknown_and_outside_the_group_are_refused_alike(dropvault, slapd):
    server = dropvault(users={}, ftp_ban_after_failures=50, ftp_max_login_failures=50,
                       **ldap_settings(slapd))
    replies = {
        "wrong password": attempt(server, "alice", "wrong-" + pw("alice")),
        "empty password": attempt(server, "alice", ""),
        "unknown user": attempt(server, "dave", "dave-pw"),
        "not in the group": attempt(server, "carol", pw("carol")),
        "filter injection": attempt(server, "*", pw("alice")),
    }
    texts = {text for _, text in replies.values()}
    assert all(code == 530 for code, _ in replies.values()), replies
    assert len(texts) == 1, f"refusals must not say why: {replies}"
    assert attempt(server, "alice", pw("alice"))[0] == 230

    refused_over_sftp(server, "alice", password="wrong")
    refused_over_sftp(server, "carol", password=pw("carol"))
    refused_over_sftp(server, "bob", key=slapd.alice_key)
    refused_over_sftp(server, "alice", key=slapd.other_key)


def test_directory_down_is_try_again_later_and_never_a_ban(dropvault, slapd):
    server = dropvault(users={}, ftp_ban_after_failures=2, **ldap_settings(slapd))
    assert attempt(server, "alice", pw("alice"))[0] == 230
    slapd.stop()
    for password in [pw("alice"), "wrong", pw("alice"), "wrong", pw("alice")]:
        code, text = attempt(server, "alice", password)
        assert code == 421 and "try again later" in text.lower(), (code, text)
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        paramiko_connect(server.host, server.sftp_port, "alice", password=pw("alice")).close()
    assert not server.events("banned")
    slapd.start()
    assert attempt(server, "alice", pw("alice"))[0] == 230
    client, sftp = paramiko_sftp(server.host, server.sftp_port, "alice", key=slapd.alice_key)
    client.close()
    assert not server.events("banned")


def test_cached_login_goes_on_while_the_directory_is_down(dropvault, slapd):
    server = dropvault(users={}, **ldap_settings(slapd, auth_ldap_cache_secs="600"))
    assert attempt(server, "alice", pw("alice"))[0] == 230
    slapd.stop()
    assert attempt(server, "alice", pw("alice"))[0] == 230
    assert attempt(server, "alice", "wrong")[0] == 421
    assert attempt(server, "bob", pw("bob"))[0] == 421


def test_alice_and_ALICE_share_one_vault(dropvault, slapd):
    server = dropvault(users={}, **ldap_settings(slapd, tls="starttls"))
    data = payload(30_000)
    ftp = ftp_tls(server, user="Alice", password=pw("alice"))
    try:
        stor(ftp, "from-Alice.bin", data)
    finally:
        ftp.quit()
    ftp = ftp_tls(server, user="ALICE", password=pw("alice"))
    try:
        assert retr(ftp, "from-Alice.bin") == data
    finally:
        ftp.quit()
    client, sftp = paramiko_sftp(server.host, server.sftp_port, "alice", password=pw("alice"))
    try:
        with sftp.open("from-Alice.bin", "rb") as f:
            assert f.read() == data
    finally:
        client.close()
    folders = sorted(p.name for p in server.user_dir("alice").parent.iterdir()
                     if not p.name.startswith("."))
    assert folders == ["alice"], folders
    owners = [json.loads(p.read_text())["user"] for p in (server.data_dir / "keys").glob("*.json")]
    assert owners == ["alice"], owners
    with pytest.raises(ftplib.error_perm):
        ftp_tls(server, user="Alice", password="wrong")
