"""Operator commands on stored files with the `local` key provider:
`verify`, `decrypt` (live key and recovery key), `user delete --shred`,
`import`, `keys status|rotate`. The same commands against OpenBao transit
are in test_transit.py."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess

from dvclients import BIN, MARKER, USER, base_env, ftp_plain, payload, retr, run_cli, stor


def openssl_recovery_pair(tmp_path, bits: int = 3072):
    """A recovery key pair made by OpenSSL, as an operator would: PKCS#8
    private key, SubjectPublicKeyInfo public key."""
    private = tmp_path / "recovery.pem"
    public = tmp_path / "recovery.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    f"rsa_keygen_bits:{bits}", "-out", str(private)], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)],
                   check=True, capture_output=True)
    return private, public


def test_verify_reports_the_one_damaged_file(dropvault):
    server = dropvault(users={USER: "alice-Pw-7731", "bob": "bob-Pw-8842"})
    files = {"a.bin": payload(1000), "big.bin": payload(300_000), "c.bin": payload(70_000)}
    with ftp_plain(server) as ftp:
        ftp.mkd("sub")
        for name, data in files.items():
            stor(ftp, f"sub/{name}" if name == "c.bin" else name, data)
    with ftp_plain(server, user="bob", password="bob-Pw-8842") as ftp:
        stor(ftp, "bobs.bin", payload(5000))
    server.stop()

    r = run_cli(["verify"], server.data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 ok, 0 failed" in r.stdout

    # One byte flipped inside the second segment of one file.
    damaged = server.user_dir() / "big.bin"
    raw = bytearray(damaged.read_bytes())
    raw[96 + 65536 + 16 + 100] ^= 0x01
    damaged.write_bytes(bytes(raw))

    r = run_cli(["verify"], server.data_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED alice:/big.bin: "), lines
    for ok in ("ok alice:/a.bin", "ok alice:/sub/c.bin", "ok bob:/bobs.bin"):
        assert ok in lines, lines
    assert "3 ok, 1 failed" in lines[-1]

    # One user only: bob's files are fine.
    r = run_cli(["verify", "--user", "bob"], server.data_dir)
    assert r.returncode == 0 and "1 ok, 0 failed" in r.stdout, r.stdout + r.stderr

    # On a terminal: a progress bar on standard error, failures still listed.
    leader, follower = pty.openpty()
    env = base_env()
    env["DROPVAULT_DATA_DIR"] = str(server.data_dir)
    proc = subprocess.run([BIN, "verify"], stdout=subprocess.PIPE, stderr=follower, env=env,
                          timeout=60, text=True)
    os.close(follower)
    tty = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(leader)
    assert proc.returncode == 1
    assert b"verify [" in tty and b"files" in tty, tty[-500:]
    assert "FAILED alice:/big.bin" in proc.stdout
    assert "ok alice:/a.bin" not in proc.stdout  # the bar shows progress instead


def test_decrypt_with_the_live_key_then_the_recovery_key_and_shredding(dropvault, tmp_path):
    private, public = openssl_recovery_pair(tmp_path)
    server = dropvault(kms_recovery_public_key=str(public))
    data = payload(200_000)
    with ftp_plain(server) as ftp:
        ftp.mkd("in")
        stor(ftp, "in/report.bin", data)
    data_dir = server.data_dir
    env = {"DROPVAULT_KMS_RECOVERY_PUBLIC_KEY": str(public)}

    out = tmp_path / "out" / "report.bin"
    out.parent.mkdir()
    r = run_cli(["decrypt", "--user", USER, "/in/report.bin", "-o", str(out)], data_dir,
                extra_env=env)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    # No overwrite without --force; with it, the same bytes again.
    r = run_cli(["decrypt", "--user", USER, "/in/report.bin", "-o", str(out)], data_dir,
                extra_env=env)
    assert r.returncode != 0 and "exists" in r.stderr
    cli_env = base_env() | {"DROPVAULT_DATA_DIR": str(data_dir)} | env
    r = subprocess.run([BIN, "decrypt", "--user", USER, "in/report.bin", "-o", "-"],
                       capture_output=True, env=cli_env, timeout=60)
    assert r.returncode == 0 and r.stdout == data, r.stderr

    server.stop()
    # The KEK is gone (the key service is lost): only the recovery key helps.
    shutil.move(data_dir / "kek.pem", tmp_path / "kek.pem.away")
    out2 = tmp_path / "out" / "recovered.bin"
    r = run_cli(["decrypt", "--user", USER, "/in/report.bin", "-o", str(out2),
                 "--recovery-key", str(private)], data_dir, extra_env=env)
    assert r.returncode == 0, r.stderr
    assert out2.read_bytes() == data
    # Without it, the command says the KEK is missing and makes no new one.
    r = run_cli(["decrypt", "--user", USER, "/in/report.bin", "-o", str(tmp_path / "y")],
                data_dir, extra_env=env)
    assert r.returncode != 0 and "kek.pem" in r.stderr, r.stderr
    assert not (data_dir / "kek.pem").exists()
    # The wrong recovery key does not open it.
    other_private, _ = openssl_recovery_pair(tmp_path / "out", bits=3072)
    r = run_cli(["decrypt", "--user", USER, "/in/report.bin", "-o", str(tmp_path / "x"),
                 "--recovery-key", str(other_private)], data_dir, extra_env=env)
    assert r.returncode != 0 and "recovery key" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    shutil.move(tmp_path / "kek.pem.away", data_dir / "kek.pem")

    # Shred: key file first, then the files; a saved copy of the ciphertext
    # is useless afterwards, with either key.
    saved = tmp_path / "saved-ciphertext.bin"
    shutil.copy2(server.user_dir() / "in" / "report.bin", saved)
    key_files = list((data_dir / "keys").glob("*.json"))
    assert len(key_files) == 1
    r = run_cli(["user", "delete", USER, "--shred"], data_dir, extra_env=env)
    assert r.returncode == 0, r.stderr
    assert "key file destroyed" in r.stdout and "1 files removed" in r.stdout, r.stdout
    assert not key_files[0].exists()
    assert not server.user_dir().exists()
    assert run_cli(["user", "list"], data_dir).stdout.split() == []

    (server.user_dir() / "in").mkdir(parents=True)
    shutil.copy2(saved, server.user_dir() / "in" / "report.bin")
    for extra in ([], ["--recovery-key", str(private)]):
        r = run_cli(["decrypt", "--user", USER, "/in/report.bin", "-o",
                     str(tmp_path / "after-shred.bin"), *extra], data_dir, extra_env=env)
        assert r.returncode != 0, r.stdout
        assert "no key file" in r.stderr, r.stderr
        assert not (tmp_path / "after-shred.bin").exists()
    r = run_cli(["verify"], data_dir, extra_env=env)
    assert r.returncode == 1 and "FAILED alice:/in/report.bin: no key" in r.stdout, r.stdout


def test_shred_refuses_an_unknown_user(server):
    r = run_cli(["user", "delete", "nobody", "--shred"], server.data_dir)
    assert r.returncode != 0 and "no user" in r.stderr
    # alice is untouched.
    with ftp_plain(server) as ftp:
        stor(ftp, "kept.bin", b"kept")
        assert retr(ftp, "kept.bin") == b"kept"


def test_import_seals_a_plaintext_tree_and_reports_what_it_skipped(dropvault, tmp_path):
    server = dropvault()
    src = tmp_path / "legacy"
    (src / "reports" / "2025").mkdir(parents=True)
    tree = {
        "top.txt": payload(100),
        "reports/q1.bin": payload(150_000),
        "reports/2025/q2.bin": payload(65536),
        "empty.txt": b"",
    }
    for rel, data in tree.items():
        (src / rel).write_bytes(data)
    os.symlink("/etc/passwd", src / "link-to-passwd")
    os.mkfifo(src / "a-fifo")
    with ftp_plain(server) as ftp:
        ftp.mkd("old")
        stor(ftp, "old/top.txt", b"already here")

    r = run_cli(["import", "--user", USER, str(src), "--dest", "/old"], server.data_dir)
    assert r.returncode == 1, r.stdout + r.stderr  # something was skipped
    out = r.stdout
    assert f"skipped {src / 'link-to-passwd'}: symbolic link" in out, out
    assert f"skipped {src / 'a-fifo'}: special file" in out, out
    assert f"skipped {src / 'top.txt'}: already in the vault" in out, out
    assert "imported 3 files" in out and "skipped 3" in out, out

    with ftp_plain(server) as ftp:
        assert retr(ftp, "old/top.txt") == b"already here"
        for rel, data in tree.items():
            if rel != "top.txt":
                assert retr(ftp, f"old/{rel}") == data, rel
    stored = server.user_dir() / "old" / "reports" / "q1.bin"
    assert MARKER not in stored.read_bytes()

    r = run_cli(["verify", "--user", USER], server.data_dir)
    assert r.returncode == 0, r.stdout

    # A clean tree imports with exit status 0.
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "one.bin").write_bytes(payload(10))
    r = run_cli(["import", "--user", USER, str(clean)], server.data_dir)
    assert r.returncode == 0 and "imported 1 files" in r.stdout, r.stdout + r.stderr
    with ftp_plain(server) as ftp:
        assert retr(ftp, "one.bin") == (clean / "one.bin").read_bytes()


def test_keys_status_and_rotate_with_the_local_provider(server):
    with ftp_plain(server) as ftp:
        stor(ftp, "x.bin", b"x")
    r = run_cli(["keys", "status"], server.data_dir)
    assert r.returncode == 0, r.stderr
    assert "provider: local" in r.stdout
    assert "key files: 1" in r.stdout and "version 1: 1" in r.stdout, r.stdout
    r = run_cli(["keys", "rotate"], server.data_dir)
    assert r.returncode == 0, r.stderr
    assert "1 key files: 0 re-wrapped" in r.stdout and "1 already current" in r.stdout, r.stdout


def test_recovery_keygen_makes_a_pair_the_server_accepts(dropvault, tmp_path):
    private, public = tmp_path / "r.pem", tmp_path / "r.pub.pem"
    r = run_cli(["keys", "recovery-keygen", str(private), str(public), "--bits", "3072"],
                tmp_path / "unused")
    assert r.returncode == 0, r.stderr
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    # OpenSSL reads both halves.
    subprocess.run(["openssl", "pkey", "-in", str(private), "-noout"], check=True)
    subprocess.run(["openssl", "pkey", "-pubin", "-in", str(public), "-noout"], check=True)
    server = dropvault(kms_recovery_public_key=str(public))
    data = payload(5000)
    with ftp_plain(server) as ftp:
        stor(ftp, "r.bin", data)
    r = run_cli(["decrypt", "--user", USER, "/r.bin", "-o", str(tmp_path / "r.out"),
                 "--recovery-key", str(private)], server.data_dir)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.out").read_bytes() == data


def test_import_refuses_an_unknown_user(server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(payload(10))
    r = run_cli(["import", "--user", "alcie", str(src)], server.data_dir)
    assert r.returncode != 0 and "no user" in r.stderr, r.stdout + r.stderr
    assert not (server.data_dir / "files" / "alcie").exists()
    assert len(list((server.data_dir / "keys").glob("*.json"))) == 0
