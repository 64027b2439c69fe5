"""The `pkcs11` key provider against a real SoftHSM2 token (made by
softhsm.py, shared with the Rust tests): FTP upload and download across a
restart, a wrong PIN at start, the token taken away and put back while the
server runs, rotation to a new key pair with `dropvault keys rotate`,
`keys status`, and no plaintext at rest.

The server reads `[kms.pkcs11]` from DROPVAULT_KMS_PKCS11_* and SoftHSM2
its configuration from SOFTHSM2_CONF, set in the server's environment."""

from __future__ import annotations

import ftplib
import time

import pytest

import softhsm
from dvclients import find_marker, ftp_plain, key_files, payload, retr, run_cli, stor

PASSWORDS = {"alice": "alice-Pw-7731", "bob": "bob-Pw-8842", "carol": "carol-Pw-9953"}
KEK = "dropvault-kek"
KEK2 = "dropvault-kek-2"
# How long a server may take to find a token that came back (it tries
# again at most once a second).
RECOVERY_WAIT = 30


@pytest.fixture
def hsm(tmp_path) -> dict:
    """A fresh token `dropvault` with two RSA-3072 key pairs."""
    return softhsm.init(tmp_path / "softhsm", "dropvault", [KEK, KEK2])


def pkcs11(hsm: dict, key: str = KEK, **extra) -> dict:
    """Server settings for the pkcs11 provider."""
    settings = {
        "kms_provider": "pkcs11",
        "kms_pkcs11_module": hsm["module"],
        "kms_pkcs11_token_label": hsm["token_label"],
        "kms_pkcs11_key_label": key,
        "kms_pkcs11_pin": hsm["pin"],
    }
    settings.update(extra)
    return settings


def cli_env(hsm: dict, settings: dict) -> dict[str, str]:
    """The same settings for `dropvault` commands, with SoftHSM's config."""
    env = {"DROPVAULT_" + k.upper(): str(v) for k, v in settings.items() if v is not None}
    env["SOFTHSM2_CONF"] = hsm["conf"]
    return env


def start(dropvault, hsm: dict, key: str = KEK):
    return dropvault(users=PASSWORDS, env={"SOFTHSM2_CONF": hsm["conf"]}, **pkcs11(hsm, key))


def login(server, user: str) -> ftplib.FTP:
    return ftp_plain(server, user=user, password=PASSWORDS[user])


def test_upload_and_download_across_a_restart_with_nothing_plain_at_rest(dropvault, hsm):
    server = start(dropvault, hsm)
    data = {u: payload(80_000 + i) for i, u in enumerate(PASSWORDS)}
    for user in PASSWORDS:
        with login(server, user) as ftp:
            stor(ftp, f"{user}.bin", data[user])
    for kf in key_files(server).values():
        assert kf["provider"] == "pkcs11" and kf["key_name"] == KEK, kf
        assert kf["wrapped_key"].startswith("rsa-oaep-sha1:"), kf

    server.restart()
    for user in PASSWORDS:
        with login(server, user) as ftp:
            assert retr(ftp, f"{user}.bin") == data[user]
    assert find_marker(server.data_dir) == []


def test_a_wrong_pin_stops_the_server_with_a_clear_message(dropvault, hsm, tmp_path):
    data_dir = tmp_path / "wrong-pin"
    server = dropvault(users=PASSWORDS, data_dir=data_dir, env={"SOFTHSM2_CONF": hsm["conf"]},
                       **pkcs11(hsm))
    server.stop()
    settings = pkcs11(hsm, kms_pkcs11_pin="wrong-pin-4242")
    env = cli_env(hsm, settings)
    env.update({"DROPVAULT_FTP_LISTEN": "127.0.0.1:0",
                "DROPVAULT_FTP_IMPLICIT_TLS_LISTEN": "127.0.0.1:0",
                "DROPVAULT_SFTP_LISTEN": "127.0.0.1:0"})
    r = run_cli(["serve"], data_dir, extra_env=env)
    assert r.returncode != 0, r.stdout + r.stderr
    assert 'PIN rejected by token "dropvault"' in r.stderr, r.stderr
    assert "wrong-pin-4242" not in r.stdout + r.stderr


def refused_login(server, user: str) -> str:
    with pytest.raises((ftplib.error_perm, ftplib.error_temp)) as err:
        login(server, user)
    return str(err.value)


def test_a_lost_token_refuses_new_logins_but_not_running_sessions(dropvault, hsm):
    server = start(dropvault, hsm)
    with login(server, "bob") as ftp:
        stor(ftp, "bob.bin", b"bob's")
    session = login(server, "alice")
    first = payload(100_000)
    stor(session, "first.bin", first)

    softhsm.remove(hsm)
    try:
        # The logged-in session keeps its key: uploads and downloads go on.
        second = payload(300_000)
        stor(session, "second.bin", second)
        assert retr(session, "first.bin") == first
        assert retr(session, "second.bin") == second
        # A login that needs the token: "try again later".
        reply = refused_login(server, "bob")
        assert reply.startswith("421") and "key service is unavailable" in reply, reply
        assert "try again later" in reply.lower(), reply
        refusals = server.wait_for_event("login_refused", user="bob")
        assert refusals and refusals[-1]["transient"] is True, refusals
    finally:
        softhsm.restore(hsm)

    deadline = time.monotonic() + RECOVERY_WAIT
    while True:
        try:
            ftp = login(server, "bob")
            break
        except ftplib.error_temp:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with ftp:
        assert retr(ftp, "bob.bin") == b"bob's"
    assert retr(session, "second.bin") == second
    session.quit()


def test_rotate_to_a_new_key_pair_and_status(dropvault, hsm):
    server = start(dropvault, hsm)
    data = {u: payload(60_000 + i) for i, u in enumerate(PASSWORDS)}
    for user in PASSWORDS:
        with login(server, user) as ftp:
            stor(ftp, f"{user}.bin", data[user])
    before = key_files(server)

    # The operator made KEK2 in the token (the fixture did), points the
    # server at it and restarts it: a login re-wraps that user's key file.
    server.settings["kms_pkcs11_key_label"] = KEK2
    server.restart()
    with login(server, "alice") as ftp:
        assert retr(ftp, "alice.bin") == data["alice"]
    assert key_files(server)["alice"]["key_name"] == KEK2

    env = cli_env(hsm, pkcs11(hsm, KEK2))
    r = run_cli(["keys", "rotate"], server.data_dir, extra_env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 key files: 2 re-wrapped" in r.stdout and "1 already current, 0 failed" in r.stdout, \
        r.stdout
    after = key_files(server)
    assert all(kf["key_name"] == KEK2 for kf in after.values()), after
    assert all(after[u]["key_id"] == before[u]["key_id"] for u in PASSWORDS)

    r = run_cli(["keys", "status"], server.data_dir, extra_env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "provider: pkcs11" in r.stdout, r.stdout
    assert f"key: {KEK2} (rsa-3072)" in r.stdout, r.stdout
    assert "token: dropvault" in r.stdout, r.stdout
    assert "mechanism: RSA-OAEP SHA-1" in r.stdout, r.stdout

    # The old key pair is no longer needed.
    softhsm.delete_key(hsm, KEK)
    server.restart()
    for user in PASSWORDS:
        with login(server, user) as ftp:
            assert retr(ftp, f"{user}.bin") == data[user]
    assert find_marker(server.data_dir) == []
