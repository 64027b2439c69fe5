"""Several dropvault nodes on one bucket (docs/SCALING.md), against real
Garage clusters: a file uploaded through one node is read through another;
an upload cut on one node is resumed on another with `curl -C -` and with
SFTP `reput`; new users' first logins race on two nodes and lose no file;
a node of a three-node Garage cluster dies mid-run and nothing is lost or
half committed; Garage stopped gives clean refusals and service comes back
with it. Each node has its own data folder with the same users and the
same key-encryption key (copied, as an operator deploys them), or the same
OpenBao transit key."""

import concurrent.futures
import ftplib
import hashlib
import io
import threading
import time

import pytest

from dvclients import (PASSWORD, USER, curl, find_marker, ftp_plain, ftp_url, paramiko_sftp,
                       payload, rclone_s3, reset_close, reset_ftp, retr, run_cli, sftp_batch,
                       ssh_keygen, stor, wait_until)
from garage import GarageCluster
from test_transit import transit

MIB = 1024 * 1024
AUTH = ("--user", f"{USER}:{PASSWORD}")


def nodes(dropvault, env: dict[str, str], count: int = 2, **settings) -> list:
    """`count` servers storing under the same bucket and prefix."""
    return [dropvault(env=env, **settings) for _ in range(count)]


def cut_ftp_upload(server, name: str, data: bytes, send: int) -> None:
    """STOR of `data` through `server` that stops after `send` bytes with
    both connections reset, as a client that crashed; returns once the
    server has ended the session (and stored what it keeps)."""
    ftp = ftp_plain(server)
    ftp.voidcmd("TYPE I")
    peer = "%s:%d" % ftp.sock.getsockname()[:2]
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(data[:send])
    time.sleep(0.5)
    reset_close(conn)
    reset_ftp(ftp)
    assert server.wait_for_event("logout", peer=peer, timeout=60), "cut session never ended"


def size(server, name: str) -> int:
    with ftp_plain(server) as ftp:
        return ftp.size(name)


def test_a_file_uploaded_through_one_node_is_read_through_another(dropvault, garage, s3_prefix,
                                                                   tmp_path):
    a, b = nodes(dropvault, garage.env(s3_prefix))
    data = payload(3 * MIB + 77)
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    r = curl(*AUTH, "-T", str(src), ftp_url(a, "/from-a.bin"))
    assert r.returncode == 0, r.stderr
    with ftp_plain(b) as ftp:
        assert retr(ftp, "from-a.bin") == data
        ftp.mkd("made-on-b")
    # SFTP the other way round.
    client, sftp = paramiko_sftp(b.host, b.sftp_port, USER, PASSWORD)
    try:
        sftp.putfo(io.BytesIO(data[::-1]), "made-on-b/from-b.bin")
    finally:
        client.close()
    client, sftp = paramiko_sftp(a.host, a.sftp_port, USER, PASSWORD)
    try:
        assert sorted(sftp.listdir("/")) == ["from-a.bin", "made-on-b"]
        with sftp.open("made-on-b/from-b.bin", "rb") as f:
            f.prefetch()
            assert f.read() == data[::-1]
    finally:
        client.close()


def test_an_upload_cut_on_one_node_is_resumed_on_another(dropvault, garage, s3_prefix, tmp_path):
    a, b = nodes(dropvault, garage.env(s3_prefix))
    data = payload(26 * MIB + 5)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    # FTP: cut on A after 19 MiB; B reports where to go on (the end of the
    # last whole 8 MiB part A stored) and `curl -C -` sends the rest there.
    cut_ftp_upload(a, "ftp.bin", data, 19 * MIB)
    point = size(b, "ftp.bin")
    assert 8 * MIB <= point <= 19 * MIB and point % 65536 == 0, point
    r = curl(*AUTH, "-C", "-", "-T", str(src), ftp_url(b, "/ftp.bin"))
    assert r.returncode == 0, r.stderr
    with ftp_plain(a) as ftp:
        assert retr(ftp, "ftp.bin") == data
    # SFTP: cut on B after 19 MiB (paramiko, no CLOSE), then OpenSSH's
    # `reput` on A (it stats the file and sends the rest from its size).
    client, sftp = paramiko_sftp(b.host, b.sftp_port, USER, PASSWORD)
    f = sftp.open("sftp.bin", "wb")
    f.set_pipelined(True)
    for i in range(0, 19 * MIB, 32768):
        f.write(data[i:i + 32768])
    f.flush()
    client.get_transport().sock.close()
    client.close()
    assert b.wait_for_event("logout", protocol="sftp", timeout=60)
    client, sftp = paramiko_sftp(a.host, a.sftp_port, USER, PASSWORD)
    try:
        point = sftp.stat("sftp.bin").st_size
    finally:
        client.close()
    assert 8 * MIB <= point <= 19 * MIB, point
    key = ssh_keygen(tmp_path / "ssh")
    r = run_cli(["user", "key", "add", USER, "--file", f"{key}.pub"], a.data_dir)
    assert r.returncode == 0, r.stderr
    r = sftp_batch(a.host, a.sftp_port, USER, key, [f"reput {src} sftp.bin"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with ftp_plain(b) as ftp:
        assert retr(ftp, "sftp.bin") == data


def test_twenty_first_logins_split_across_two_nodes_lose_no_file(dropvault, garage, s3_prefix,
                                                                  bao):  # noqa: F811
    users = {f"new{i:02d}": f"pw-{i:02d}-{s3_prefix[:6]}" for i in range(20)}
    bao.create_key("dv-nodes", "aes256-gcm96")
    settings = transit(bao, "dv-nodes")
    a, b = nodes(dropvault, garage.env(s3_prefix), users=users, **settings)
    start = threading.Barrier(40)

    def first_login(server, user: str, password: str, tag: str) -> bytes:
        data = payload(70_000 + len(tag)) + f"{user}-{tag}".encode()
        ftp = ftplib.FTP()
        ftp.connect(server.host, server.port, timeout=60)
        start.wait(timeout=60)
        ftp.login(user, password)
        stor(ftp, f"{tag}.bin", data)
        ftp.quit()
        return data

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        jobs = {(user, tag): pool.submit(first_login, node, user, pw, tag)
                for user, pw in users.items() for node, tag in ((a, "a"), (b, "b"))}
        sent = {k: f.result(timeout=120) for k, f in jobs.items()}
    # Every file of every user reads back through both nodes (fresh logins,
    # which unwrap whatever keys the race left).
    for user, pw in users.items():
        for node in (a, b):
            with ftp_plain(node, user=user, password=pw) as ftp:
                for tag in ("a", "b"):
                    assert retr(ftp, f"{tag}.bin") == sent[(user, tag)], (user, tag, node)
    r = run_cli(["verify"], a.data_dir, extra_env={
        "DROPVAULT_" + k.upper(): str(v) for k, v in settings.items()})
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_storage_node_killed_mid_run_loses_nothing(dropvault, garage3, tmp_path):
    server = dropvault(env=garage3.env("killed/"))
    uploaded: dict[str, bytes] = {}
    errors: list[str] = []
    stop = threading.Event()

    def uploader(n: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"w{n}-{i}.bin"
            data = payload(5 * MIB + 1000 * n + i)
            try:
                with ftp_plain(server, timeout=120) as ftp:
                    stor(ftp, name, data)
                uploaded[name] = data
            except (ftplib.Error, OSError) as e:
                errors.append(f"{name}: {e}")
            i += 1

    workers = [threading.Thread(target=uploader, args=(n,)) for n in range(3)]
    for w in workers:
        w.start()
    assert wait_until(lambda: len(uploaded) >= 3, timeout=120), errors
    garage3.kill_node(2)
    before = len(uploaded)
    assert wait_until(lambda: len(uploaded) >= before + 6, timeout=180), errors
    stop.set()
    for w in workers:
        w.join(timeout=300)
    # With two of three replicas, transfers went on: nothing failed.
    assert errors == [], errors
    garage3.start_node(2)
    # Every file reads back whole; nothing but them is listed (no half
    # commit), and nothing is left in staging.
    with ftp_plain(server) as ftp:
        assert sorted(ftp.nlst()) == sorted(uploaded)
        for name, data in uploaded.items():
            assert retr(ftp, name) == data, name


def test_garage_stopped_gives_clean_refusals_and_service_comes_back(dropvault, tmp_path):
    cluster = GarageCluster(tmp_path / "garage-down", nodes=1, replication=1)
    cluster.start()
    try:
        server = dropvault(env=cluster.env("down/"), storage_s3_timeout_secs="5")
        kept = payload(2 * MIB)
        with ftp_plain(server) as ftp:
            stor(ftp, "kept.bin", kept)
        ftp = ftp_plain(server, timeout=120)
        client, sftp = paramiko_sftp(server.host, server.sftp_port, USER, PASSWORD, timeout=120)
        cluster.stop_all()
        try:
            # FTP: 451 for an upload, a download and a listing; the
            # session stays usable.
            for action in (lambda: stor(ftp, "new.bin", payload(MIB)),
                           lambda: retr(ftp, "kept.bin"),
                           lambda: ftp.nlst()):
                with pytest.raises(ftplib.error_temp, match="^451"):
                    action()
            # SFTP: a failure status, not a dropped connection.
            with pytest.raises(IOError):
                sftp.putfo(io.BytesIO(payload(MIB)), "new-sftp.bin")
        finally:
            cluster.start_all()
        # Back: the kept file is whole, the refused ones never appeared, and
        # new uploads work in the same sessions.
        assert retr(ftp, "kept.bin") == kept
        assert sorted(ftp.nlst()) == ["kept.bin"]
        stor(ftp, "after.bin", payload(3 * MIB))
        ftp.quit()
        sftp.putfo(io.BytesIO(payload(MIB + 1)), "after-sftp.bin")
        assert sorted(sftp.listdir("/")) == ["after-sftp.bin", "after.bin", "kept.bin"]
        client.close()
    finally:
        cluster.close()
    leaks = [p for d in cluster.data_dirs for p in find_marker(d)]
    assert leaks == [], leaks


def test_operator_commands_work_on_s3(dropvault, garage, s3_prefix, tmp_path):
    server = dropvault(env=garage.env(s3_prefix), users={USER: PASSWORD, "bob": "bob-pw-1"})
    data = payload(300_000)
    with ftp_plain(server) as ftp:
        ftp.mkd("in")
        stor(ftp, "in/a.bin", data)
    # import: a folder of plaintext files sealed into bob's vault.
    src = tmp_path / "to-import"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.bin").write_bytes(payload(90_000))
    r = run_cli(["import", "--user", "bob", str(src)], server.data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    with ftp_plain(server, user="bob", password="bob-pw-1") as ftp:
        assert retr(ftp, "sub/x.bin") == (src / "sub" / "x.bin").read_bytes()
    # verify reads every stored file of every user.
    r = run_cli(["verify"], server.data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    # decrypt one file out.
    out = tmp_path / "out.bin"
    r = run_cli(["decrypt", "--user", USER, "/in/a.bin", "-o", str(out)], server.data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes() == data
    out.unlink()
    # user delete --shred: bob's key and files are gone from the bucket.
    def stored() -> list[str]:
        r = rclone_s3(garage, "lsf", "-R", f"g0:{garage.bucket}/{s3_prefix}",
                      config_dir=tmp_path / "rclone")
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    bob_key = ".keys/" + hashlib.sha256(b"bob").hexdigest() + "/"
    assert any(k.startswith("bob/") for k in stored())
    assert any(k.startswith(bob_key) for k in stored())
    server.stop()
    r = run_cli(["user", "delete", "bob", "--shred"], server.data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    left = stored()
    assert not any(k.startswith(("bob/", bob_key)) for k in left), left
    assert any(k.startswith("alice/") for k in left), left
    server.start()
    with ftp_plain(server) as ftp:
        assert retr(ftp, "in/a.bin") == data
