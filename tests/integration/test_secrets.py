"""The server's secrets stay the server's: hooks run as an unprivileged
account without its environment and cannot read its key, users file, TLS
key, configuration or /proc/<server>/environ; the server cannot be dumped
(also when it is not root); a user name cannot forge log fields; an
http:// key service must be loopback unless allowed."""

from __future__ import annotations

import ftplib
import json
import os
import pathlib
import pwd
import queue
import re
import resource
import shutil
import stat
import subprocess
import threading
import time
import types

import pytest

from dvclients import BIN, PASSWORD, USER, base_env, ftp_plain, payload, run_cli, stor

NOBODY = pwd.getpwnam("nobody")
# dropvault_core::secret::SECRET_ENV: what no hook may see.
SECRET_ENV = ("DROPVAULT_KMS_TRANSIT_TOKEN", "VAULT_TOKEN", "BAO_TOKEN", "DROPVAULT_KMS_PKCS11_PIN",
              "DROPVAULT_AUTH_LDAP_BIND_PASSWORD", "DROPVAULT_STORAGE_S3_SECRET_ACCESS_KEY",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DROPVAULT_HOOKS_WEBHOOK_SECRET")
READY = re.compile(r"dropvault: FTP on (?P<host>[0-9.]+):(?P<port>\d+)")


def probe_script(folder: pathlib.Path, targets: list[str]) -> pathlib.Path:
    """A hook (argv: its kind) that counts its standard input, then tries
    to read each of `targets` (and the server's /proc/PID/environ) and
    writes what it got to folder/probe-KIND.txt."""
    script = folder / "probe.sh"
    paths = " ".join(f"'{t}'" for t in targets)
    script.write_text(f"""#!/bin/sh
out={folder}/probe-$1.txt
{{
echo "bytes=$(wc -c | tr -d ' ')"
echo "uid=$(id -u)"
echo "groups=$(id -G)"
echo "cwd=$(pwd)"
echo "ppid=$PPID"
for f in {paths} /proc/$PPID/environ; do
    if cat "$f" > /dev/null 2>&1; then
        echo "READ $f"; cat "$f" | tr '\\000' '\\n'; echo
    else
        echo "DENIED $f"
    fi
done
echo "ENV:"
env
}} > "$out.tmp" 2>&1
mv "$out.tmp" "$out"
""")
    script.chmod(0o755)
    return script


def probe(folder: pathlib.Path, kind: str) -> dict:
    """What the probe of `kind` wrote: fields, READ/DENIED paths, its env."""
    path = folder / f"probe-{kind}.txt"
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = path.read_text()
    head, _, env = text.partition("ENV:\n")
    fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line
                  and not line.startswith(("READ ", "DENIED ")))
    return {
        "text": text,
        "fields": fields,
        "read": [line[5:] for line in head.splitlines() if line.startswith("READ ")],
        "denied": [line[7:] for line in head.splitlines() if line.startswith("DENIED ")],
        "env": dict(line.split("=", 1) for line in env.splitlines() if "=" in line),
    }


def test_hooks_run_unprivileged_and_cannot_read_the_servers_secrets(dropvault, hook_dir):
    data = hook_dir / "data"  # traversable up to here: only modes protect it
    etc = hook_dir / "etc"
    etc.mkdir(mode=0o755)
    config = etc / "dropvault.toml"
    config.write_text('# CONFIG-FILE-SECRET-5521\n[hooks]\nretries = 3\n')
    config.chmod(0o600)
    targets = [str(data / "kek.pem"), str(data / "users.toml"), str(data / "tls-key.pem"),
               str(config)]
    script = probe_script(hook_dir, targets)
    # Every provider's secrets, set in the server's environment (unused by
    # this server's local key and users file, but there).
    secrets = {name: f"{name.lower()}-for-no-hook" for name in SECRET_ENV}
    secrets["DROPVAULT_KMS_TRANSIT_SECRET_ID_FILE"] = "/approle-secret-id-for-no-hook"
    secrets["DROPVAULT_KMS_PKCS11_PIN_FILE"] = "/pkcs11-pin-for-no-hook"
    del secrets["DROPVAULT_HOOKS_WEBHOOK_SECRET"]  # set below, as the fixture does
    server = dropvault(data_dir=data, env=secrets, config=str(config),
                       hooks_webhook_secret="env-webhook-secret-for-no-hook",
                       scan_command=json.dumps([str(script), "scan"]),
                       hooks_command=json.dumps([str(script), "event"]))
    body = payload(123_456)
    with ftp_plain(server) as ftp:
        stor(ftp, "probe.bin", body)
        assert ftp.nlst() == ["probe.bin"]
    # What the server keeps is its own alone, whatever the account.
    for name in ("kek.pem", "users.toml", "tls-key.pem"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    for folder in (data, data / "keys", data / "files"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    for kind in ("scan", "event"):
        got = probe(hook_dir, kind)
        f = got["fields"]
        assert f["uid"] == str(NOBODY.pw_uid), got["text"]
        assert f["groups"] == str(NOBODY.pw_gid), got["text"]  # no root group kept
        assert f["cwd"] == "/", got["text"]
        assert f["ppid"] == str(server.proc.pid), got["text"]
        assert got["read"] == [], got["text"]
        assert got["denied"] == targets + [f"/proc/{server.proc.pid}/environ"], got["text"]
        assert "CONFIG-FILE-SECRET" not in got["text"] and "PRIVATE KEY" not in got["text"]
        env = got["env"]
        assert [k for k in env if k.startswith("DROPVAULT_")] == ["DROPVAULT_EVENT"], env
        assert not any("for-no-hook" in v for v in env.values()), env
        assert not set(env) & set(SECRET_ENV), env
        assert "for-no-hook" not in got["text"], got["text"]
        assert env["HOME"] == NOBODY.pw_dir and env["USER"] == "nobody", env
    # The scan hook got the whole plaintext on standard input.
    assert probe(hook_dir, "scan")["fields"]["bytes"] == str(len(body))


def test_an_unknown_run_as_account_is_refused_at_start(tmp_path):
    r = run_cli(["serve"], tmp_path / "data",
                extra_env={"DROPVAULT_FTP_LISTEN": "127.0.0.1:0",
                           "DROPVAULT_HOOKS_RUN_AS": "no-such-user-4711"})
    assert r.returncode == 2, r
    assert "hooks.run_as" in r.stderr and "no-such-user-4711" in r.stderr, r.stderr


def test_a_server_that_is_not_root_cannot_be_dumped_and_runs_hooks_as_itself(
        hook_dir, kek_template, passive_ports):
    data = hook_dir / "data"
    data.mkdir(mode=0o700)
    for name in ("kek.pem", "tls-cert.pem", "tls-key.pem"):
        shutil.copy2(kek_template / name, data / name)
    r = run_cli(["user", "add", USER, "--password-stdin"], data, stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    # A copy of the binary that nobody can reach: the build folder may be
    # under root's home (scripts/test builds in ~/.cache), mode 0700.
    binary = hook_dir / "dropvault"
    shutil.copy2(BIN, binary)
    binary.chmod(0o755)
    script = probe_script(hook_dir, [])
    for path in [data, *data.rglob("*")]:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)

    def as_nobody() -> None:
        # Core dumps allowed, as a careless service manager might leave them.
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    env = base_env()
    env.update({
        "DROPVAULT_DATA_DIR": str(data), "DROPVAULT_FTP_LISTEN": "127.0.0.1:0",
        "DROPVAULT_ADMIN_LISTEN": "",
        "DROPVAULT_FTP_PASSIVE_PORTS": passive_ports(), "DROPVAULT_LOG_FORMAT": "json",
        "DROPVAULT_SCAN_COMMAND": json.dumps([str(script), "scan"]),
    })
    log = hook_dir / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(binary), "serve"], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, preexec_fn=as_nobody)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(raw.decode()) for raw in proc.stdout],
                         daemon=True).start()
        deadline = time.monotonic() + 60
        m = None
        while m is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                m = READY.search(lines.get(timeout=0.2))
            except queue.Empty:
                pass
        assert m, log.read_text()
        server = types.SimpleNamespace(host=m["host"], port=int(m["port"]))
        with ftp_plain(server) as ftp:
            stor(ftp, "a.bin", payload(5000))
            assert ftp.nlst() == ["a.bin"]
        status = pathlib.Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{NOBODY.pw_uid}\s", status, re.M), status
        limits = pathlib.Path(f"/proc/{proc.pid}/limits").read_text()
        assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.M), limits
        # Not dumpable: the kernel gives its /proc files to root.
        assert os.stat(f"/proc/{proc.pid}/environ").st_uid == 0
        got = probe(hook_dir, "scan")
        assert got["fields"]["uid"] == str(NOBODY.pw_uid), got["text"]
        # The same user, and still no /proc/<server>/environ.
        assert got["read"] == [] and got["denied"] == [f"/proc/{proc.pid}/environ"], got["text"]
        records = [json.loads(line) for line in log.read_text().splitlines()
                   if line.startswith("{")]
        assert any("own user" in r.get("message", "") for r in records), log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


FORGED = "x peer=10.0.0.9:1"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_user_name_cannot_forge_log_fields(dropvault, fmt):
    server = dropvault(log_format=fmt)
    with pytest.raises(ftplib.error_perm):
        ftp_plain(server, user=FORGED, password="wrong")
    deadline = time.monotonic() + 20
    while "login_failed" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = [line for line in server.log_text().splitlines() if "login_failed" in line]
    if fmt == "json":
        record = json.loads(line)
        assert record["user"] == FORGED and record["peer"].startswith("127.0.0.1:"), record
    else:
        assert 'user="x peer=10.0.0.9:1"' in line, line
        # Read as key=value pairs, the line has one peer: the real one.
        pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
        peers = [v for k, v in pairs if k == "peer"]
        assert len(peers) == 1 and peers[0].startswith("127.0.0.1:"), line
        # A log that is a file, not a terminal, holds no colour escapes.
        assert "\x1b[" not in server.log_text()


def test_http_transit_only_to_loopback_unless_allowed(tmp_path):
    env = {"DROPVAULT_KMS_PROVIDER": "transit", "DROPVAULT_KMS_TRANSIT_TOKEN": "s.t",
           "DROPVAULT_KMS_TRANSIT_ADDRESS": "http://192.0.2.1:8200",
           "DROPVAULT_KMS_TRANSIT_TIMEOUT_SECS": "2"}
    refused = run_cli(["keys", "status"], tmp_path / "d", extra_env=env)
    assert refused.returncode != 0 and "transit_allow_http" in refused.stderr, refused.stderr
    env["DROPVAULT_KMS_TRANSIT_ALLOW_HTTP"] = "true"
    allowed = run_cli(["keys", "status"], tmp_path / "d", extra_env=env)
    # Allowed: it tries, and the (unroutable) service does not answer.
    assert allowed.returncode != 0 and "transit_allow_http" not in allowed.stderr, allowed.stderr
