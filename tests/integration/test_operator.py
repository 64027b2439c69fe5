"""What an operator sees and runs around the server: a TLS certificate
people can check (its fingerprint as FileZilla and OpenSSL show it, at
every start and from `dropvault tls fingerprint`; a year's validity,
renewed on start near its end with the same key), and read-only commands
that are read-only (`verify`, `decrypt`, `keys status`, `quarantine list`,
`tls fingerprint`), while the running server expires old staging files."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import ssl
import subprocess

from dvclients import USER, ftp_plain, ftp_tls, payload, run_cli, stor

FINGERPRINT = re.compile(r"TLS certificate SHA-256 fingerprint ([0-9A-F:]{95})")


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True,
                          check=True).stdout


def openssl_fingerprint(cert) -> str:
    out = openssl("x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256")
    return out.strip().split("=", 1)[1]


def load(cert):
    from cryptography import x509
    return x509.load_pem_x509_certificate(cert.read_bytes())


def printed_fingerprints(server) -> list[str]:
    return [m.group(1) for line in server.stdout_lines if (m := FINGERPRINT.search(line))]


def test_generated_certificate_names_dropvault_and_its_fingerprint_is_shown(dropvault, tmp_path):
    server = dropvault(users={USER: "alice-Pw-7731"}, data_dir=tmp_path / "fresh",
                       prepare=False)
    cert_path = server.data_dir / "tls-cert.pem"
    shown = printed_fingerprints(server)
    assert shown == [openssl_fingerprint(cert_path)], server.stdout_lines
    # The same from the command, in OpenSSL's form.
    r = run_cli(["tls", "fingerprint"], server.data_dir)
    assert r.returncode == 0, r.stderr
    assert f"SHA256 Fingerprint={shown[0]}" in r.stdout
    # What clients get is that certificate.
    with ftp_tls(server) as ftp:
        der = ftp.sock.getpeercert(binary_form=True)
    digest = hashlib.sha256(der).hexdigest().upper()
    assert ":".join(digest[i:i + 2] for i in range(0, 64, 2)) == shown[0]
    cert = load(cert_path)
    subject = cert.subject.rfc4514_string()
    host = open("/proc/sys/kernel/hostname").read().strip()
    assert "O=dropvault" in subject and f"CN={host}" in subject, subject
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 360 <= days <= 370, days
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.timezone.utc)
    # Printed again at every start; unchanged while it has time left.
    server.restart()
    assert printed_fingerprints(server) == shown * 2


def replace_certificate(data_dir, subject_org: str | None, days_left: int, common_name: str):
    """Signs a new certificate for the existing tls-key.pem, as an earlier
    version or an earlier start would have left it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key = serialization.load_pem_private_key((data_dir / "tls-key.pem").read_bytes(), None)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if subject_org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject_org))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=300))
            .not_valid_after(now + datetime.timedelta(days=days_left))
            .sign(key, hashes.SHA256()))
    (data_dir / "tls-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_certificate_is_renewed_on_start_near_its_end_with_the_same_key(server):
    data_dir = server.data_dir
    key_before = (data_dir / "tls-key.pem").read_bytes()
    for org, days_left, cn in (("dropvault", 5, "old-host"),
                               (None, 800_000, "rcgen self signed cert")):
        server.stop()
        old = replace_certificate(data_dir, org, days_left, cn)
        server.start()
        new = load(data_dir / "tls-cert.pem")
        assert new.serial_number != old.serial_number, cn
        assert "O=dropvault" in new.subject.rfc4514_string()
        assert 360 <= (new.not_valid_after_utc - datetime.datetime.now(
            datetime.timezone.utc)).days <= 366, cn
        assert new.public_key() == old.public_key()
        assert (data_dir / "tls-key.pem").read_bytes() == key_before
        assert printed_fingerprints(server)[-1] == openssl_fingerprint(data_dir / "tls-cert.pem")
        with ftp_tls(server) as ftp:
            ftp.voidcmd("NOOP")
    # A certificate that is not dropvault's own is never touched, even in
    # the data folder's place.
    server.stop()
    foreign = replace_certificate(data_dir, "Example Corp", 5, "files.example.com")
    server.start()
    assert load(data_dir / "tls-cert.pem").serial_number == foreign.serial_number


def test_configured_certificate_fingerprint_is_shown(dropvault, tmp_path):
    from dvclients import make_certificate
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key)
    before = cert.read_bytes()
    server = dropvault(ftp_tls_cert=str(cert), ftp_tls_key=str(key))
    assert printed_fingerprints(server) == [openssl_fingerprint(cert)]
    r = run_cli(["tls", "fingerprint"], server.data_dir,
                extra_env={"DROPVAULT_FTP_TLS_CERT": str(cert),
                           "DROPVAULT_FTP_TLS_KEY": str(key)})
    assert r.returncode == 0 and openssl_fingerprint(cert) in r.stdout, r.stderr
    assert cert.read_bytes() == before


def snapshot(root) -> dict[str, tuple]:
    """Every file and folder under `root` with its size, mode and times."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mode, st.st_mtime_ns,
                                                st.st_ctime_ns)
    return out


def test_read_only_commands_change_nothing_and_the_server_expires_staging(server, tmp_path):
    data = payload(100_000)
    with ftp_plain(server) as ftp:
        stor(ftp, "kept.bin", data)
    server.stop()
    staging = server.data_dir / "files" / ".staging"
    old = staging / "0123456789abcdef0123456789abcdef-feedfacefeedfacefeedfacefeedface.part"
    old.write_bytes(b"\x89DRPVLT\n" + os.urandom(200))
    week_ago = datetime.datetime.now().timestamp() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    before = snapshot(server.data_dir)
    out = tmp_path / "out.bin"
    for args in (["verify"], ["verify", "--user", USER],
                 ["decrypt", "--user", USER, "/kept.bin", "-o", str(out)],
                 ["keys", "status"], ["quarantine", "list"], ["tls", "fingerprint"]):
        r = run_cli(args, server.data_dir)
        assert r.returncode == 0, (args, r.stderr)
        assert snapshot(server.data_dir) == before, args
    assert out.read_bytes() == data
    # On a data folder that is not there, they create nothing either.
    missing = tmp_path / "nowhere"
    for args in (["verify"], ["keys", "status"], ["quarantine", "list"],
                 ["tls", "fingerprint"]):
        run_cli(args, missing)
        assert not missing.exists(), args
    # The running server removes the week-old staging file, and only it.
    server.start()
    expired = server.wait_for_event("staging_expired")
    assert expired and expired[0]["files"] == 1
    assert not old.exists()
    with ftp_plain(server) as ftp:
        assert ftp.size("kept.bin") == len(data)
