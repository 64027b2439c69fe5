"""The Garage harness (garage.py) with a real S3 client, rclone: what the
S3 storage tests rely on. A single node stores what it is given as is (so a
marker search of its data folders would find plaintext), and a three-node
cluster with replication 3 keeps serving reads and writes with one node
down, and takes the node back."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from dvclients import MARKER, find_marker, payload, rclone_s3
from garage import GarageCluster

SCRIPT = pathlib.Path(__file__).with_name("garage.py")

# Three Garage blocks of 1 MiB and a short one.
SIZE = 3 * (1 << 20) + 4099


def rclone_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"rclone exited with {r.returncode}:\n{r.stderr}{r.stdout}"


@pytest.fixture
def plain_garage(tmp_path):
    """A private single-node cluster: the plaintext stored here must not
    reach the shared cluster, whose data folders are searched for it."""
    with GarageCluster(tmp_path / "garage-plain") as cluster:
        yield cluster


def test_single_node_round_trip_and_the_marker_is_found_on_disk(plain_garage, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(payload(SIZE))
    assert find_marker(src.parent) == [src]
    assert [hit for d in plain_garage.data_dirs for hit in find_marker(d)] == []

    key = f"{plain_garage.bucket}/harness/up.bin"
    rclone_ok(rclone_s3(plain_garage, "copyto", str(src), f"g0:{key}", config_dir=tmp_path))
    back = tmp_path / "back.bin"
    rclone_ok(rclone_s3(plain_garage, "copyto", f"g0:{key}", str(back), config_dir=tmp_path))
    assert back.read_bytes() == src.read_bytes()

    # compression_level = "none": the blocks in the data folder hold the
    # bytes as sent, so a search for the marker there means something.
    data_dir = plain_garage.nodes[0].data_dir
    hits = find_marker(data_dir)
    assert hits, f"marker not found under {data_dir}: is Garage compressing blocks?"
    assert all(MARKER in h.read_bytes() for h in hits)


def test_three_nodes_serve_reads_and_writes_with_one_node_killed(garage3, tmp_path):
    # Random bytes without the marker: garage3's folders are searched for it.
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(os.urandom(SIZE))
    second.write_bytes(os.urandom(SIZE))
    bucket = garage3.bucket

    def read_back(node: int, name: str, expected: bytes) -> None:
        out = tmp_path / f"back-{node}-{name}"
        rclone_ok(rclone_s3(garage3, "copyto", f"g{node}:{bucket}/ha/{name}", str(out),
                            config_dir=tmp_path))
        assert out.read_bytes() == expected, f"{name} read through node {node} differs"

    rclone_ok(rclone_s3(garage3, "copyto", str(first), f"g0:{bucket}/ha/first.bin",
                        config_dir=tmp_path))

    garage3.kill_node(2)
    assert not garage3.node_running(2)
    read_back(0, "first.bin", first.read_bytes())
    read_back(1, "first.bin", first.read_bytes())
    rclone_ok(rclone_s3(garage3, "copyto", str(second), f"g1:{bucket}/ha/second.bin",
                        config_dir=tmp_path))
    read_back(0, "second.bin", second.read_bytes())

    # Back on its old data and ports: it serves both files, including the
    # one written while it was down.
    garage3.start_node(2)
    read_back(2, "first.bin", first.read_bytes())
    read_back(2, "second.bin", second.read_bytes())
    listed = rclone_s3(garage3, "lsf", f"g2:{bucket}/ha", config_dir=tmp_path)
    rclone_ok(listed)
    assert sorted(listed.stdout.split()) == ["first.bin", "second.bin"]


def test_shared_cluster_and_prefix_give_a_server_its_settings(garage, s3_prefix, tmp_path):
    env = garage.env(s3_prefix)
    assert env["DROPVAULT_STORAGE_BACKEND"] == "s3"
    assert env["DROPVAULT_STORAGE_S3_ENDPOINT"] == garage.endpoint
    assert env["DROPVAULT_STORAGE_S3_PREFIX"] == s3_prefix and s3_prefix.endswith("/")
    assert env["DROPVAULT_STORAGE_S3_PATH_STYLE"] == "true"
    # The key and bucket in those settings work.
    src = tmp_path / "small.bin"
    src.write_bytes(os.urandom(1000))
    key = f"{env['DROPVAULT_STORAGE_S3_BUCKET']}/{s3_prefix}small.bin"
    rclone_ok(rclone_s3(garage, "copyto", str(src), f"g0:{key}", config_dir=tmp_path))
    listed = rclone_s3(garage, "lsf", f"g0:{garage.bucket}/{s3_prefix}", config_dir=tmp_path)
    rclone_ok(listed)
    assert listed.stdout.split() == ["small.bin"]


def test_stopped_cluster_comes_back_with_its_data(tmp_path):
    """stop_all() then start_all(): the "Garage is down, then back" case."""
    src = tmp_path / "kept.bin"
    src.write_bytes(os.urandom(1 << 20))
    with GarageCluster(tmp_path / "garage-restart") as cluster:
        rclone_ok(rclone_s3(cluster, "copyto", str(src), f"g0:{cluster.bucket}/kept.bin",
                            config_dir=tmp_path))
        endpoint = cluster.endpoint
        cluster.stop_all()
        assert not cluster.node_running(0)
        cluster.start_all()
        assert cluster.endpoint == endpoint
        back = tmp_path / "back.bin"
        rclone_ok(rclone_s3(cluster, "copyto", f"g0:{cluster.bucket}/kept.bin", str(back),
                            config_dir=tmp_path))
        assert back.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("stop", ["eof", "sigterm"])
def test_serve_prints_one_json_line_and_stops_on_eof_or_sigterm(tmp_path, stop):
    """The command line the Rust tests use."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "serve", "--dir", str(tmp_path / "g")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"no JSON line; stderr:\n{proc.stderr.read()}"
        info = json.loads(line)
        assert set(info) == {"endpoint", "endpoints", "region", "bucket", "access_key_id",
                             "secret_access_key", "data_dirs"}
        assert info["endpoint"].startswith("http://127.0.0.1:")
        assert info["endpoints"] == [info["endpoint"]]
        assert (info["region"], info["bucket"]) == ("garage", "dropvault")
        assert len(info["data_dirs"]) == 2
        port = int(info["endpoint"].rsplit(":", 1)[1])
        assert port_open(port)
        if stop == "eof":
            proc.stdin.close()
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert proc.stdout.read() == "", "more than one line on stdout"
        assert not port_open(port), "Garage still listens after serve exited"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_gives_up_with_an_error_when_the_cluster_is_not_up_in_time(tmp_path):
    # A stand-in for a Garage that hangs: it never answers, as server or as CLI.
    pids = tmp_path / "pids"
    hung = tmp_path / "hung-garage"
    hung.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 600\n")
    hung.chmod(0o755)
    env = dict(os.environ, DROPVAULT_GARAGE=str(hung))
    r = subprocess.run([sys.executable, str(SCRIPT), "serve", "--dir", str(tmp_path / "g"),
                        "--timeout", "2"], stdin=subprocess.PIPE, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    assert "did not answer" in r.stderr and "in time" in r.stderr, r.stderr
    # The "server" it started was stopped on the way out.
    server_pid = int(pids.read_text().split()[0])
    assert not pathlib.Path(f"/proc/{server_pid}").exists() or \
        "zombie" in pathlib.Path(f"/proc/{server_pid}/status").read_text()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
