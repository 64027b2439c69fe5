"""The `transit` key provider against a real OpenBao (`bao server`, Raft
storage, started by tests/integration/openbao.py): first login, restart,
key rotation (lazy and `keys rotate`), min_decryption_version, outages and
sealing, recovery without the service, AppRole with renewal, TLS with a CA
file, and the service's own errors in the operator's log."""

from __future__ import annotations

import base64
import ftplib
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from dvclients import PASSWORD, USER, ftp_plain, key_files, payload, retr, run_cli, stor
from openbao import OpenBao
from test_keys_cli import openssl_recovery_pair

PASSWORDS = {"alice": "alice-Pw-7731", "bob": "bob-Pw-8842", "carol": "carol-Pw-9953"}


def transit(bao: OpenBao, key: str, **extra) -> dict:
    """Server settings for the transit provider with the root token."""
    settings = {
        "kms_provider": "transit",
        "kms_transit_address": bao.addr,
        "kms_transit_key": key,
        "kms_transit_token": bao.root_token,
    }
    settings.update(extra)
    return settings


def env_of(settings: dict) -> dict[str, str]:
    """The same settings as environment variables, for `dropvault` commands."""
    return {"DROPVAULT_" + k.upper(): str(v) for k, v in settings.items() if v is not None}


def login(server, user: str) -> ftplib.FTP:
    return ftp_plain(server, user=user, password=PASSWORDS[user])


def refused_login(server, user: str) -> str:
    """The reply to a login the key service stops: 530 when it refuses the
    key for good, 421 when it is unavailable."""
    with pytest.raises((ftplib.error_perm, ftplib.error_temp)) as err:
        login(server, user)
    return str(err.value)


@pytest.mark.parametrize("key_type", ["rsa-4096", "aes256-gcm96"])
def test_keys_survive_restart_rotation_and_a_raised_min_decryption_version(
        dropvault, bao, key_type):
    key = f"dv-rotate-{key_type}"
    bao.create_key(key, key_type)
    settings = transit(bao, key, kms_transit_version_cache_secs="1")
    env = env_of(settings)
    server = dropvault(users=PASSWORDS, **settings)
    data = {u: payload(70_000 + i) for i, u in enumerate(PASSWORDS)}
    for user in PASSWORDS:
        with login(server, user) as ftp:
            stor(ftp, f"{user}.bin", data[user])
    files = key_files(server)
    assert set(files) == set(PASSWORDS)
    for kf in files.values():
        assert kf["provider"] == "transit" and kf["key_name"] == f"transit/{key}"
        assert kf["key_version"] == 1 and kf["wrapped_key"].startswith("vault:v1:"), kf

    # A restarted server unwraps through the service again.
    server.restart()
    for user in PASSWORDS:
        with login(server, user) as ftp:
            assert retr(ftp, f"{user}.bin") == data[user]

    # Rotate the transit key twice: key files stay at version 1 for now.
    bao.rotate(key)
    assert bao.rotate(key) == 3
    r = run_cli(["keys", "status"], server.data_dir, extra_env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"key: transit/{key} ({key_type})" in r.stdout, r.stdout
    assert "latest version: 3" in r.stdout and f"transit:transit/{key} version 1: 3" in r.stdout
    assert "3 key file(s) behind version 3" in r.stdout, r.stdout

    # Lazy: alice's next login re-wraps her key file to version 3 (the
    # server caches the version for 1 s here, 30 s by default).
    time.sleep(1.5)
    with login(server, "alice") as ftp:
        assert retr(ftp, "alice.bin") == data["alice"]
    files = key_files(server)
    assert files["alice"]["wrapped_key"].startswith("vault:v3:"), files["alice"]
    assert files["bob"]["key_version"] == 1

    # `keys rotate` re-wraps the rest in one batch.
    r = run_cli(["keys", "rotate"], server.data_dir, extra_env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 key files: 2 re-wrapped to version 3" in r.stdout, r.stdout
    assert "1 already current, 0 failed" in r.stdout, r.stdout
    rotated = key_files(server)
    assert all(kf["wrapped_key"].startswith("vault:v3:") for kf in rotated.values()), rotated
    # Same data keys, new wraps.
    assert all(rotated[u]["key_id"] == files[u]["key_id"] for u in PASSWORDS)

    # Versions 1 and 2 can no longer decrypt: everyone still logs in.
    bao.set_min_decryption_version(key, 3)
    for user in PASSWORDS:
        with login(server, user) as ftp:
            assert retr(ftp, f"{user}.bin") == data[user]
            stor(ftp, "after.bin", b"after")
    r = run_cli(["keys", "status"], server.data_dir, extra_env=env)
    assert "oldest decryptable version: 3" in r.stdout and "behind" not in r.stdout, r.stdout

    # An old (version 1) key file put back is refused by the service; the
    # user gets a clear reply, the operator the service's words.
    carol_path = next(p for p in (server.data_dir / "keys").glob("*.json")
                      if json.loads(p.read_text())["user"] == "carol")
    assert files["carol"]["key_version"] == 1
    carol_path.write_text(json.dumps(files["carol"]))
    reply = refused_login(server, "carol")
    assert reply.startswith("530") and "key service" in reply, reply
    refusals = server.wait_for_event("login_refused", user="carol")
    assert refusals and "disallowed by policy (too old)" in refusals[-1]["error"], refusals
    assert refusals[-1]["transient"] is False


def test_an_outage_refuses_new_logins_but_not_running_sessions(dropvault, bao, tmp_path):
    key = "dv-outage"
    bao.create_key(key, "aes256-gcm96")
    private, public = openssl_recovery_pair(tmp_path)
    settings = transit(bao, key, kms_recovery_public_key=str(public))
    env = env_of(settings)
    server = dropvault(users=PASSWORDS, **settings)
    first = payload(100_000)
    with login(server, "carol") as ftp:
        stor(ftp, "carol.bin", b"carol's")
    session = login(server, "alice")
    stor(session, "first.bin", first)

    bao.stop()
    try:
        # The logged-in session keeps its key: uploads and downloads go on.
        second = payload(300_000)
        stor(session, "second.bin", second)
        assert retr(session, "first.bin") == first
        assert retr(session, "second.bin") == second
        # A new login needs the service: refused, clearly.
        # More refusals than a ban takes: an outage is not a guess.
        for _ in range(6):
            reply = refused_login(server, "bob")
            assert reply.startswith("421") and "key service is unavailable" in reply, reply
            assert "try again later" in reply.lower(), reply
        refusals = server.wait_for_event("login_refused", user="bob")
        assert refusals and "unreachable" in refusals[-1]["error"], refusals
        assert refusals[-1]["transient"] is True

        # Recovery without the service, byte-exact.
        out = tmp_path / "recovered.bin"
        r = run_cli(["decrypt", "--user", USER, "/second.bin", "-o", str(out),
                     "--recovery-key", str(private)], server.data_dir, extra_env=env)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == second
        # The live provider cannot, and says why.
        r = run_cli(["decrypt", "--user", USER, "/second.bin", "-o", str(tmp_path / "no.bin")],
                    server.data_dir, extra_env=env)
        assert r.returncode != 0 and "unreachable" in r.stderr, r.stderr
        r = run_cli(["keys", "status"], server.data_dir, extra_env=env)
        assert r.returncode == 1 and "key files: 2" in r.stdout, r.stdout
    finally:
        bao.start()

    with login(server, "bob") as ftp:
        stor(ftp, "bob.bin", b"bob's")
    assert retr(session, "second.bin") == second
    session.quit()

    # A sealed service answers 503 "Vault is sealed": that reaches the log.
    bao.seal()
    try:
        reply = refused_login(server, "carol")
        assert reply.startswith("421"), reply
        refusals = server.wait_for_event("login_refused", user="carol")
        assert refusals and "Vault is sealed" in refusals[-1]["error"], refusals
    finally:
        bao.unseal()
    with login(server, "carol") as ftp:
        assert retr(ftp, "carol.bin") == b"carol's"


def test_approle_logs_in_renews_and_logs_in_again(dropvault, bao, tmp_path):
    key = "dv-approle"
    bao.create_key(key, "rsa-4096")
    role_id, secret_id = bao.approle("dropvault-test", key, token_ttl="4s", token_max_ttl="8s")
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id + "\n")
    secret_file.chmod(0o600)
    settings = transit(bao, key, kms_transit_token=None, kms_transit_role_id=role_id,
                       kms_transit_secret_id_file=str(secret_file))
    server = dropvault(users=PASSWORDS, **settings)
    users = list(PASSWORDS)
    # First login: AppRole login. After half the TTL: renewal. After the
    # maximum TTL: the token is dead, a new AppRole login.
    for user, pause in zip(users, (0, 3, 6)):
        time.sleep(pause)
        with login(server, user) as ftp:
            stor(ftp, "a.bin", user.encode())
    for user in users:
        with login(server, user) as ftp:
            assert retr(ftp, "a.bin") == user.encode()
    logins = [r for r in server.events() if "logged in to the key service" in r.get("message", "")]
    assert len(logins) >= 2, server.log_text()[-3000:]
    # The policy allows nothing else: the token is not root.
    assert all(kf["wrapped_key"].startswith("vault:v1:") for kf in key_files(server).values())


def test_service_errors_reach_the_log_verbatim(dropvault, bao):
    bao.create_key("dv-errors", "aes256-gcm96")
    server = dropvault(**transit(bao, "dv-errors", kms_transit_token="not-a-token"))
    reply = refused_login(server, USER)
    assert reply.startswith("530") and "key service" in reply, reply
    refusals = server.wait_for_event("login_refused", user=USER)
    assert refusals and "answered 403" in refusals[-1]["error"], refusals
    assert "permission denied" in refusals[-1]["error"], refusals
    assert not list((server.data_dir / "keys").glob("*.json"))

    # A mistyped key name is an error, not a quietly created new key.
    server2 = dropvault(**transit(bao, "dv-no-such-key"))
    reply = refused_login(server2, USER)
    assert reply.startswith("530"), reply
    refusals = server2.wait_for_event("login_refused", user=USER)
    assert refusals and "not found" in refusals[-1]["error"], refusals
    status, _ = bao.request("GET", "transit/keys/dv-no-such-key")
    assert status == 404


def test_transit_over_https_with_a_ca_file(dropvault, tmp_path, monkeypatch):
    tls = tmp_path / "tls"
    tls.mkdir()
    ca_key, ca, key, csr, cert = (tls / n for n in ("ca.key", "ca.pem", "bao.key", "bao.csr",
                                                     "bao.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj",
        "/CN=dropvault test CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = tls / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    key.chmod(0o644)  # the OpenBao process runs as this user anyway

    with OpenBao(tmp_path / "bao-tls", tls=(cert, key, ca)) as bao:
        bao.start()
        assert bao.addr.startswith("https://")
        bao.create_key("dv-tls", "aes256-gcm96")
        # The token from BAO_TOKEN, as the bao CLI would take it.
        monkeypatch.setenv("BAO_TOKEN", bao.root_token)
        server = dropvault(**transit(bao, "dv-tls", kms_transit_ca_cert=str(ca),
                                     kms_transit_token=None))
        with ftp_plain(server) as ftp:
            stor(ftp, "tls.bin", b"over https")
        with ftp_plain(server) as ftp:
            assert retr(ftp, "tls.bin") == b"over https"
        # Without the CA file the certificate is not trusted.
        other = dropvault(**transit(bao, "dv-tls"))
        reply = refused_login(other, USER)
        assert reply.startswith("421"), reply
        refusals = other.wait_for_event("login_refused", user=USER)
        assert refusals and "unreachable" in refusals[-1]["error"], refusals


def test_a_pinned_key_version_is_the_one_used(dropvault, bao):
    key = "dv-pinned"
    bao.create_key(key, "aes256-gcm96")
    bao.rotate(key)
    assert bao.rotate(key) == 3
    # The original's "secret version": new wraps use version 2, not 3.
    settings = transit(bao, key, kms_transit_key_version="2")
    server = dropvault(**settings)
    with ftp_plain(server) as ftp:
        stor(ftp, "p.bin", b"pinned")
    (kf,) = key_files(server).values()
    assert kf["key_version"] == 2 and kf["wrapped_key"].startswith("vault:v2:"), kf
    r = run_cli(["keys", "status"], server.data_dir, extra_env=env_of(settings))
    assert "latest version: 3; new wraps use version 2" in r.stdout, r.stdout
    assert "behind" not in r.stdout, r.stdout
    with ftp_plain(server) as ftp:
        assert retr(ftp, "p.bin") == b"pinned"


def wire_bytes(log: str) -> bytes:
    """The bytes of any HTTP wire dump in the log: ureq-proto writes them at
    trace as rows of 16 bytes in hex, `4745 5420 ... GET /v1/...`."""
    out = bytearray()
    for line in log.splitlines():
        try:
            message = json.loads(line).get("message", "")
        except ValueError:
            continue
        m = re.match(r"((?:[0-9a-f-]{4} ){8}) ", message)
        if m:
            out += bytes.fromhex(m[1].replace(" ", "").replace("-", ""))
    return bytes(out)


def test_trace_logging_keeps_the_token_and_data_keys_out_of_the_log(dropvault, bao):
    key = "dv-trace"
    bao.create_key(key)
    server = dropvault(env={"RUST_LOG": "trace"}, **transit(bao, key))
    data = payload(10_000)
    with ftp_plain(server) as ftp:  # first login: encrypt sends the key
        stor(ftp, "a.bin", data)
    server.restart()
    with ftp_plain(server) as ftp:  # the next one: decrypt's answer has it
        assert retr(ftp, "a.bin") == data
    log = server.log_text()
    # Verbose logging was on, ureq's own records included.
    assert '"level":"DEBUG"' in log and '"target":"ureq::' in log
    [kf] = key_files(server).values()
    envelope = bao.decrypt(key, kf["wrapped_key"])
    secrets = {
        "token": bao.root_token.encode(),
        "wrapped plaintext": base64.b64encode(envelope),
        "data key (base64)": base64.b64encode(envelope[-32:]),
        "data key (hex)": envelope[-32:].hex().encode(),
    }
    wire = wire_bytes(log)
    for what, secret in secrets.items():
        assert secret not in log.encode(), f"{what} in the log"
        assert secret not in wire, f"{what} in the log's wire dump"


def test_proxy_variables_do_not_apply_to_the_key_service(dropvault, bao):
    """A proxy in the environment that nobody configured for dropvault
    sees nothing: transit requests go straight to the service. The proxy
    configured with kms.transit_proxy is used."""
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(8)
    seen: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = proxy.accept()
            except OSError:
                return
            conn.settimeout(5)
            head = b""
            try:
                # The request head, which may come in several pieces.
                while b"\r\n\r\n" not in head:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    head += piece
            except OSError:
                pass
            seen.append(head)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    url = "http://127.0.0.1:%d" % proxy.getsockname()[1]
    env = {name: url for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                                  "ALL_PROXY", "all_proxy")}
    key = "dv-proxy"
    bao.create_key(key)
    try:
        server = dropvault(env=env, **transit(bao, key, kms_transit_timeout_secs="5"))
        with ftp_plain(server) as ftp:
            stor(ftp, "a.bin", payload(1000))
        assert seen == []
        # Configured, the proxy is used: this one answers nothing useful,
        # so the key service is unreachable through it (421, try later).
        through = dropvault(**transit(bao, key, kms_transit_timeout_secs="5",
                                      kms_transit_proxy=url))
        reply = refused_login(through, USER)
        assert reply.startswith("421"), reply
        assert seen and bao.addr.split("//")[1].encode() in seen[0], seen
    finally:
        proxy.close()
