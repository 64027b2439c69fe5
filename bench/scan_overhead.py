#!/usr/bin/env python3
"""What the malware scan costs an upload: the same file uploaded with curl
over plain FTP to a release-built dropvault without a scanner, and with a
real clamd scanning it (INSTREAM over a unix socket, clamd's temporary
folder on /dev/shm, a one-signature database), alternating, in one run.

    bench/scan_overhead.py [--size-mib 512] [--runs 5]

Needs curl and clamd (Debian clamav-daemon), and `cargo build --release -p
dropvault`. Prints each run's MB/s and the medians. Servers bind 127.0.0.1
and are stopped at the end.
"""

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
from clamd import Clamd  # noqa: E402

BIN = REPO / "target" / "release" / "dropvault"
PASSWORD = "bench-Pw-1234"


def serve(work: pathlib.Path, name: str, extra: dict) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPVAULT_")}
    env.update({"DROPVAULT_DATA_DIR": str(work / name), "DROPVAULT_FTP_LISTEN": "127.0.0.1:0",
                "DROPVAULT_FTP_TLS": "off", **extra})
    subprocess.run([BIN, "user", "add", "bench", "--password-stdin"], input=PASSWORD + "\n",
                   text=True, env=env, check=True, capture_output=True)
    proc = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"FTP on [0-9.]+:(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"dropvault did not start: {line!r}")
    return proc, int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"{BIN} missing: cargo build --release -p dropvault")
    size = args.size_mib << 20
    work = pathlib.Path(tempfile.mkdtemp(prefix="dropvault-scanbench-"))
    procs = []
    clamd = None
    try:
        src = work / "upload.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        clamd = Clamd(work / "clamd", stream_max=f"{args.size_mib + 1}M").start()
        servers = {
            "no scan": serve(work, "plain", {}),
            "clamd": serve(work, "clamd", {"DROPVAULT_SCAN_CLAMD": clamd.unix,
                                           "DROPVAULT_SCAN_TIMEOUT_SECS": "600"}),
        }
        procs = [p for p, _ in servers.values()]
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for i in range(args.runs):
            for name, (_, port) in servers.items():
                os.sync()
                start = time.monotonic()
                r = subprocess.run(["curl", "-sS", "-T", str(src),
                                    f"ftp://bench:{PASSWORD}@127.0.0.1:{port}/f{i}.bin"],
                                   capture_output=True, text=True)
                took = time.monotonic() - start
                if r.returncode != 0:
                    raise RuntimeError(f"{name}: curl failed: {r.stderr}")
                rates[name].append(size / took / 1e6)
        for name, values in rates.items():
            print(f"{name:8} runs {' '.join(f'{v:.0f}' for v in values)} MB/s; "
                  f"median {statistics.median(values):.0f} MB/s")
        ratio = statistics.median(rates["clamd"]) / statistics.median(rates["no scan"])
        print(f"clamd / no scan: {ratio:.2f}x")
        return 0
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        if clamd is not None:
            clamd.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
