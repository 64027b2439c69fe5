#!/usr/bin/env python3
"""How long a correct login takes while other sessions loop wrong
passwords (issue 12, item 2): N attacker threads each log in again and
again with a wrong password (reconnecting when the server closes the
session), while a prober from another address logs in correctly once a
second and times USER/PASS. Bans are set out of reach so the attackers keep
the password checks busy for the whole run.

    bench/login_storm.py [--bin target/release/dropvault] [--attackers 10]
                         [--seconds 30] [--backend file|pam|both]

The `file` backend checks argon2id hashes (19 MiB, a core's work each);
each of the prober's logins is a different user's first (no remembered
password, a new data key), so each costs an argon2id check too. `pam` checks a system account made for the run through /etc/pam.d/dropvault
(pam_unix, with its failure delay), and needs root. Prints the prober's
login times (median, 90th percentile, max) and the attackers' attempts per
second, per backend. Servers bind 127.0.0.1 and stop at the end.
"""

import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
PASSWORD = "storm-Pw-" + uuid.uuid4().hex[:8]
PAM_FILE = pathlib.Path("/etc/pam.d/dropvault")


def serve(binary: pathlib.Path, work: pathlib.Path, backend: str, users: list[str]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPVAULT_")}
    env.update({
        "DROPVAULT_DATA_DIR": str(work / backend), "DROPVAULT_FTP_LISTEN": "127.0.0.1:0",
        "DROPVAULT_FTP_TLS": "off", "DROPVAULT_FTP_BAN_AFTER_FAILURES": "100000000",
        "DROPVAULT_FTP_MAX_SESSIONS_PER_IP": "200", "DROPVAULT_AUTH_BACKEND": backend,
        "DROPVAULT_LOG_FORMAT": "json",
    })
    if backend == "file":
        for user in users:
            subprocess.run([binary, "user", "add", user, "--password-stdin"],
                           input=PASSWORD + "\n", text=True, env=env, check=True,
                           capture_output=True)
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for _ in range(20):
        line = proc.stdout.readline()
        m = re.search(r"FTP on [0-9.]+:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError("dropvault did not start")


def reply(f) -> str:
    line = f.readline()
    while len(line) >= 4 and line[3:4] == "-":
        line = f.readline()
    if not line:
        raise EOFError
    return line


def attacker(port: int, user: str, stop: threading.Event, count: list[int]) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                f = s.makefile("r", encoding="utf-8", newline="\r\n")
                if not reply(f).startswith("220"):
                    time.sleep(0.1)
                    continue
                while not stop.is_set():
                    s.sendall(f"USER {user}\r\nPASS wrong-{uuid.uuid4().hex[:6]}\r\n".encode())
                    reply(f)
                    r = reply(f)
                    count[0] += 1
                    if not r.startswith("530"):
                        break
        except (OSError, EOFError):
            time.sleep(0.05)


def probe(port: int, user: str) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=60,
                                  source_address=("127.0.0.2", 0)) as s:
        f = s.makefile("r", encoding="utf-8", newline="\r\n")
        assert reply(f).startswith("220")
        start = time.monotonic()
        s.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        reply(f)
        r = reply(f)
        took = time.monotonic() - start
        assert r.startswith("230"), r
        s.sendall(b"QUIT\r\n")
        return took


def storm(binary, work, backend, user, attackers, seconds):
    # The file backend: a fresh user for every probe (a first login each);
    # PAM remembers nothing, so one account serves.
    probes = [f"{user}p{i}" for i in range(int(seconds) + 8)] if backend == "file" else []
    proc, port = serve(binary, work, backend, [user] + probes)
    prober = iter(probes) if probes else None

    def next_user():
        return next(prober) if prober else user

    stop = threading.Event()
    counts = [[0] for _ in range(attackers)]
    try:
        quiet = [probe(port, next_user()) for _ in range(3)]
        threads = [threading.Thread(target=attacker, args=(port, user, stop, c), daemon=True)
                   for c in counts]
        for t in threads:
            t.start()
        time.sleep(2)
        before = sum(c[0] for c in counts)
        start = time.monotonic()
        times = []
        while time.monotonic() - start < seconds:
            times.append(probe(port, next_user()))
            time.sleep(1)
        rate = (sum(c[0] for c in counts) - before) / (time.monotonic() - start)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
    times.sort()
    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
    print(f"{backend:5} quiet {statistics.median(quiet):.3f} s | under {attackers} attackers: "
          f"median {statistics.median(times):.3f} s, p90 {p90:.3f} s, max {times[-1]:.3f} s "
          f"({len(times)} logins); attackers {rate:.1f} wrong passwords/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=pathlib.Path, default=REPO / "target" / "release" / "dropvault")
    ap.add_argument("--attackers", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--backend", choices=["file", "pam", "both"], default="both")
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"{args.bin} missing: cargo build --release -p dropvault")
    work = pathlib.Path(tempfile.mkdtemp(prefix="dropvault-loginstorm-"))
    made_user = installed_pam = False
    user = "dvstorm" + uuid.uuid4().hex[:6]
    try:
        if args.backend in ("file", "both"):
            storm(args.bin, work, "file", user, args.attackers, args.seconds)
        if args.backend in ("pam", "both"):
            if os.geteuid() != 0:
                sys.exit("the pam backend needs root (useradd, /etc/shadow)")
            if not PAM_FILE.exists():
                shutil.copyfile(REPO / "packaging" / "pam.d" / "dropvault", PAM_FILE)
                installed_pam = True
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", user], check=True)
            made_user = True
            subprocess.run(["chpasswd"], input=f"{user}:{PASSWORD}\n", text=True, check=True)
            storm(args.bin, work, "pam", user, args.attackers, args.seconds)
    finally:
        if made_user:
            subprocess.run(["userdel", user])
        if installed_pam:
            PAM_FILE.unlink()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
