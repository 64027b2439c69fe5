"""Live reload (issue 16): SIGHUP rereads the TLS certificate and key (FTPS's
and the HTTPS listener's) and the
scan and hook settings from the configuration file; logged-in sessions go
on; a configuration that does not load is refused with a log line and the
running one stays."""

import ftplib
import json
import signal
import ssl

import pytest

from dvclients import (PASSWORD, USER, ftp_plain, ftp_tls, make_certificate, payload, retr,
                       stor, wait_until)


def served_cert(server) -> bytes:
    with ftp_tls(server) as ftp:
        return ftp.sock.getpeercert(binary_form=True)


def https_cert(server) -> bytes:
    """The certificate the HTTPS listener (the web drop) presents."""
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", server.https_port)))


def pem_der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def reload(server, count: int) -> None:
    """SIGHUP, then waits for the server's `count`-th reload to end."""
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(server.events("reloaded")) + len(server.events("reload_refused"))
               >= count)


def test_sighup_rereads_certificate_scan_and_hooks_and_sessions_go_on(dropvault, tmp_path,
                                                                       hook_dir):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key)
    config = tmp_path / "dropvault.toml"
    settings = {"ftp": {"tls_cert": str(cert), "tls_key": str(key)}}
    config.write_text(toml(settings))
    server = dropvault(env={"DROPVAULT_CONFIG": str(config)})
    first = pem_der(cert)
    assert served_cert(server) == first
    assert https_cert(server) == first
    reject = hook_dir / "reject.sh"
    reject.write_text("#!/bin/sh\necho Test.Reload >&2\nexit 3\n")
    reject.chmod(0o755)
    events = hook_dir / "events.jsonl"
    hook = hook_dir / "hook.sh"
    hook.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$DROPVAULT_EVENT\" >> {events}\n")
    hook.chmod(0o755)
    data = payload(50_000)

    with ftp_plain(server) as before:
        stor(before, "before.bin", data)
        assert [e["rate_limited"] for e in server.events("login")] == [False, False]
        # A new certificate and key at the same paths, a scanner that
        # rejects everything, an event hook, bandwidth limits and a quota.
        make_certificate(cert, key)
        settings["scan"] = {"command": [str(reject)]}
        settings["hooks"] = {"command": [str(hook)]}
        settings["limits"] = {"download_rate": "1GiB", "total_upload_rate": "1GiB",
                              "quota_bytes": "100KiB"}
        config.write_text(toml(settings))
        reload(server, 1)
        assert server.events("reloaded"), server.log_text()[-2000:]
        # The session logged in before the reload goes on, with the limits
        # it began with.
        assert retr(before, "before.bin") == data
        assert before.nlst() == ["before.bin"]
    second = pem_der(cert)
    assert second != first
    assert served_cert(server) == second
    assert https_cert(server) == second
    # Sessions that log in after the reload get the new limits.
    assert server.events("login")[-1]["rate_limited"] is True
    with ftp_plain(server) as ftp:
        with pytest.raises(ftplib.error_perm) as err:
            stor(ftp, "after.bin", data)
        assert str(err.value).startswith("550") and "Test.Reload" in str(err.value)
    wait_until(lambda: events.exists() and "upload_rejected" in events.read_text())
    # And the new quota: 50,000 bytes stored, 60,000 more announced.
    with ftp_plain(server) as ftp:
        ftp.sendcmd("ALLO 60000")
        with pytest.raises(ftplib.error_perm) as err:
            stor(ftp, "big.bin", payload(60_000))
        assert str(err.value).startswith("552"), err.value

    # A configuration that does not load: refused, everything stays.
    config.write_text("[ftp\nthis is not TOML\n")
    reload(server, 2)
    assert server.events("reload_refused")
    assert served_cert(server) == second
    with ftp_plain(server) as ftp:
        with pytest.raises(ftplib.error_perm):
            stor(ftp, "still.bin", data)

    # One whose new parts cannot be used (a key file that is not a key):
    # refused as a whole, the scanner is not changed either.
    key.write_text("not a key\n")
    settings["scan"] = {"command": []}
    config.write_text(toml(settings))
    reload(server, 3)
    assert len(server.events("reload_refused")) == 2
    assert served_cert(server) == second
    with ftp_plain(server) as ftp:
        with pytest.raises(ftplib.error_perm):
            stor(ftp, "still.bin", data)
    assert server.running


def toml(settings: dict) -> str:
    """The few TOML tables these tests write (strings and string lists)."""
    out = []
    for section, values in settings.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            out.append(f"{key} = {json.dumps(value)}")
    return "\n".join(out) + "\n"
