"""A real OpenSSH sshd on a loopback port, the reference SFTP server.

`Sshd(workdir)` writes its own host key (ed25519) and sshd_config into
`workdir` and runs `/usr/sbin/sshd -D -e -f CONFIG` on 127.0.0.1, a free
port: no PID file, no PAM, OpenSSH's sftp-server as the sftp subsystem
(starting in each account's home), public-key logins from the keys given
per account and, with `passwords=True`, password logins. It never touches
the system's sshd service or /etc/ssh. `unix_account()` makes a throwaway
Unix account (root only) for it to log in.

It checks the SFTP client helpers of dvclients.py against a server that is
known to be right:

    python3 tests/integration/sshd.py       # as root; prints one line a check
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from procs import die_with_parent, free_port

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
START_TIMEOUT = 30



class Sshd:
    """One sshd process. `keys` maps account name -> public key files
    whose keys may log in as it."""

    def __init__(self, workdir: pathlib.Path, keys: dict[str, list[pathlib.Path]],
                 passwords: bool = False, extra: str = ""):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.host_key = self.dir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dv-test-sshd",
                        "-f", str(self.host_key)], check=True, capture_output=True, timeout=60)
        auth = self.dir / "authorized_keys"
        auth.mkdir(exist_ok=True)
        for user, pubs in keys.items():
            (auth / user).write_text("".join(p.read_text() for p in pubs))
        self.config = self.dir / "sshd_config"
        self.passwords = passwords
        self.extra = extra
        self.log = self.dir / "sshd.log"

    @property
    def host_key_sha256(self) -> str:
        r = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_key}.pub"],
                           capture_output=True, text=True, check=True, timeout=30)
        return r.stdout.split()[1]

    def start(self) -> "Sshd":
        # sshd wants its privilege separation folder; the package makes it
        # only when its service starts, which never happens here.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.port = free_port()
        yes_no = "yes" if self.passwords else "no"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile none
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {self.dir}/authorized_keys/%u
PasswordAuthentication {yes_no}
KbdInteractiveAuthentication no
PermitEmptyPasswords no
StrictModes no
UseDNS no
MaxStartups 1000
LoginGraceTime 60
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp {SFTP_SERVER}
{self.extra}
""")
        self.config.chmod(0o600)
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True, capture_output=True,
                       timeout=30)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                stdout=err, stderr=err, preexec_fn=die_with_parent, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(256).startswith(b"SSH-2.0-"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("sshd did not answer in time")

    def sessions(self) -> list[int]:
        """PIDs of the listener's descendants: one sshd [priv], one sshd
        user process and one sftp-server per session (each session is a
        process session of its own, so not in the listener's group)."""
        if self.proc is None:
            return []
        kids: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = pathlib.Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(name))
        out, todo = [], list(kids.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += kids.get(pid, [])
        return out

    def stop(self) -> None:
        """SIGTERM to the listener and every session process, then SIGKILL
        to what is left."""
        if self.proc is None:
            return
        pids = [*self.sessions(), self.proc.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.2)
            if not any(os.path.exists(f"/proc/{pid}") for pid in pids[:-1]):
                break

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def unix_account(name: str, home: pathlib.Path, password: str | None = None):
    """A Unix account `name` with home `home` (made, owned by it), a login
    shell, and `password` (else locked for passwords); deleted afterwards."""
    subprocess.run(["userdel", name], capture_output=True)
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["useradd", "-M", "-U", "-d", str(home), "-s", "/bin/bash", name],
                   check=True, capture_output=True)
    try:
        if password is not None:
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                           capture_output=True)
        else:
            # An unlocked account with no usable password: '*' (a '!' would
            # lock it for keys too without PAM).
            subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
        shutil.chown(home, name, name)
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


# -- the helpers' self-check ---------------------------------------------------

def self_check() -> int:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import dvclients as c

    if os.geteuid() != 0:
        print("needs root (a throwaway Unix account for sshd to log in)", file=sys.stderr)
        return 2
    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""),
              flush=True)

    work = pathlib.Path(tempfile.mkdtemp(prefix="dv-sshd-check-"))
    work.chmod(0o755)
    user = f"dvsshchk{os.getpid()}"
    password = "Pw-" + secrets.token_urlsafe(12)
    data = c.payload(3 * c.SEGMENT + 1234)
    src = work / "src.bin"
    src.write_bytes(data)
    src.chmod(0o644)
    try:
        key = c.ssh_keygen(work / "client")
        ecdsa = c.ssh_keygen(work / "client", "id_ecdsa", kind="ecdsa")
        check("ssh_keygen makes an ed25519 pair", key.exists() and
              (key.parent / "id_ed25519.pub").read_text().startswith("ssh-ed25519 "))
        home = work / "home"
        with unix_account(user, home, password):
            sshd = Sshd(work / "sshd", {user: [pathlib.Path(f"{key}.pub"),
                                               pathlib.Path(f"{ecdsa}.pub")]},
                        passwords=True).start()
            try:
                host, port = sshd.host, sshd.port
                fp = sshd.host_key_sha256

                r = c.sftp_batch(host, port, user, key, [f"put {src} up.bin", "ls -l", "pwd"])
                check("sftp_batch put + ls", r.returncode == 0 and "up.bin" in r.stdout,
                      r.stderr)
                check("sftp_batch stored the bytes",
                      (home / "up.bin").exists() and (home / "up.bin").read_bytes() == data)
                kh = key.parent / "known_hosts"
                check("sftp_batch accepted the host key into its known_hosts",
                      kh.exists() and c.key_fingerprint(kh) == fp)
                out = work / "down.bin"
                r = c.sftp_batch(host, port, user, ecdsa, [f"get up.bin {out}"])
                check("sftp_batch get (ecdsa key, known host)",
                      r.returncode == 0 and out.read_bytes() == data, r.stderr)
                r = c.sftp_batch(host, port, user, key, ["get no-such-file /dev/null"])
                check("sftp_batch fails on a failed command", r.returncode != 0)
                stranger = c.ssh_keygen(work / "stranger")
                r = c.sftp_batch(host, port, user, stranger, ["ls"])
                check("sftp_batch fails with a key the server refuses",
                      r.returncode != 0 and "Permission denied" in r.stderr, r.stderr)
                bad_kh = work / "bad_known_hosts"
                bad_kh.write_text(f"[{host}]:{port} " +
                                  (pathlib.Path(f"{stranger}.pub").read_text()))
                r = c.sftp_batch(host, port, user, key, ["ls"], known_hosts=bad_kh)
                check("sftp_batch refuses a changed host key", r.returncode != 0)

                client, sftp = c.paramiko_sftp(host, port, user, password=password)
                try:
                    server_fp = c.host_key_sha256(client.get_transport().get_remote_server_key())
                    check("paramiko password login; host_key_sha256 matches ssh-keygen",
                          server_fp == fp, f"{server_fp} != {fp}")
                    with sftp.open("pm.bin", "wb") as f:
                        f.write(data)
                    check("paramiko write + stat", sftp.stat("pm.bin").st_size == len(data))
                    with sftp.open("pm.bin", "rb") as f:
                        check("paramiko read", f.read() == data)
                finally:
                    client.close()
                client, sftp = c.paramiko_sftp(host, port, user, key=key)
                try:
                    check("paramiko key login", "pm.bin" in sftp.listdir("."))
                finally:
                    client.close()
                try:
                    c.paramiko_connect(host, port, user, password="wrong-" + password).close()
                    check("paramiko wrong password refused", False)
                except Exception as e:  # noqa: BLE001 - the kind is what is checked
                    import paramiko
                    check("paramiko wrong password refused",
                          isinstance(e, paramiko.AuthenticationException), repr(e))

                r = c.curl_sftp(host, port, f"{home}/curl.bin", "-T", str(src),
                                user=user, password=password, host_sha256=fp)
                check("curl_sftp upload (password, pinned host key)",
                      r.returncode == 0 and (home / "curl.bin").read_bytes() == data, r.stderr)
                out = work / "curl-down.bin"
                r = c.curl_sftp(host, port, f"{home}/curl.bin", "-o", str(out), user=user,
                                password=None, key=key)
                check("curl_sftp download (ed25519 key, -k)",
                      r.returncode == 0 and out.read_bytes() == data, r.stderr)
                r = c.curl_sftp(host, port, f"{home}/", user=user, password=password,
                                host_sha256=fp)
                check("curl_sftp listing", r.returncode == 0 and "curl.bin" in r.stdout, r.stderr)
                r = c.curl_sftp(host, port, f"{home}/", user=user, password=password,
                                host_sha256="SHA256:" + "A" * 43)
                check("curl_sftp refuses a wrong host key", r.returncode != 0)
                r = c.curl_sftp(host, port, f"{home}/", "-Q", f"rm {home}/curl.bin", user=user,
                                password=password)
                check("curl_sftp quote command (rm)",
                      r.returncode == 0 and not (home / "curl.bin").exists(), r.stderr)

                mirror = work / "tree"
                (mirror / "sub").mkdir(parents=True)
                (mirror / "a.bin").write_bytes(data)
                (mirror / "sub" / "b.bin").write_bytes(data[:1000])
                r = c.lftp_sftp(host, port, f"mirror -R {mirror} lftp-tree; ls lftp-tree",
                                user=user, password=password)
                check("lftp_sftp mirror -R (password)",
                      r.returncode == 0 and (home / "lftp-tree" / "sub" / "b.bin").read_bytes()
                      == data[:1000], r.stderr)
                back = work / "lftp-back"
                r = c.lftp_sftp(host, port, f"mirror lftp-tree {back}", user=user, password=None,
                                key=key)
                check("lftp_sftp mirror back (key)",
                      r.returncode == 0 and (back / "a.bin").read_bytes() == data, r.stderr)
                r = c.lftp_sftp(host, port, "ls", user=user, password="wrong-" + password)
                check("lftp_sftp wrong password fails", r.returncode != 0)

                conf = work / "rclone"
                remote = c.rclone_sftp_remote(host, port, user, password)
                r = c.rclone_sftp(remote, "copy", str(mirror), remote + f"{home}/rc",
                                  config_dir=conf)
                check("rclone_sftp copy up (password)",
                      r.returncode == 0 and (home / "rc" / "a.bin").read_bytes() == data,
                      r.stderr[-500:])
                remote = c.rclone_sftp_remote(host, port, user, password=None, key=key,
                                              known_hosts=kh)
                r = c.rclone_sftp(remote, "lsf", "-R", remote + f"{home}/rc", config_dir=conf)
                check("rclone_sftp lsf (key, known host)",
                      r.returncode == 0 and "sub/b.bin" in r.stdout.split(), r.stderr[-500:])
                r = c.rclone_sftp(remote, "copy", remote + f"{home}/rc", str(work / "rc-back"),
                                  config_dir=conf)
                check("rclone_sftp copy back",
                      r.returncode == 0 and (work / "rc-back" / "a.bin").read_bytes() == data,
                      r.stderr[-500:])
            finally:
                sshd.stop()
                log = sshd.log_text()
        check("sshd logged the logins", "Accepted publickey" in log and "Accepted password" in log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = sum(1 for _, ok, _ in results if not ok)
    print(f"SFTP helper checks against OpenSSH: {len(results) - bad} ok, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(self_check())
