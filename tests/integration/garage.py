"""Real Garage S3 clusters on loopback, for the S3 storage tests.

`GarageCluster(base_dir, nodes=N, replication=R)` runs N `garage server`
processes on 127.0.0.1, each with its own config, metadata and data folders
under `base_dir/nodeI/`, its own RPC and S3 ports and one random rpc_secret
shared by the cluster. `start()` connects the nodes, gives each a role
(zone dcI, 1 GB) in a layout with `replication_factor = R`, applies it,
creates one access key and the bucket "dropvault", allows the key on it and
waits until a signed HeadBucket answers 200 on every node. Blocks are stored
uncompressed (compression_level = "none"), so a search of `data_dirs` for a
plaintext marker finds any plaintext a client stored.

Nodes can be killed (SIGKILL), stopped (SIGTERM) and started again on the
same config, ports and data. Every node gets SIGTERM when the process that
started it dies, and any still running at interpreter exit is stopped.
Each start's output goes to `base_dir/nodeI/garage-N.log`.

The cluster is set up through the `garage` CLI (`node id`, and `json-api`
for the admin calls, whose answers are JSON rather than tables meant for
people), which talks to the nodes over RPC; no admin HTTP API is opened.

For tests in other languages there is a command line:

    python3 tests/integration/garage.py serve --dir DIR [--nodes N] [--replication R]

prints one JSON line {"endpoint", "endpoints", "region", "bucket",
"access_key_id", "secret_access_key", "data_dirs"} when the cluster is
ready, then runs until its stdin reaches EOF or it gets SIGTERM/SIGINT,
stops the cluster and exits 0. It exits 1 with a message on stderr when the
cluster does not come up within --timeout seconds (default 60).

The garage binary is $DROPVAULT_GARAGE, else
~/.cache/dropvault/garage-2.5.0/bin/garage (where scripts/test installs
it), else `garage` on PATH.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import pathlib
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref

from procs import die_with_parent

START_TIMEOUT = 60
STOP_TIMEOUT = 15
CLI_TIMEOUT = 20
HTTP_TIMEOUT = 10

REGION = "garage"
BUCKET = "dropvault"
KEY_NAME = "dropvault-test"
CAPACITY = 1_000_000_000  # 1 GB per node: far more than any test stores.


# Every cluster, so that none outlives the interpreter.
_INSTANCES: "weakref.WeakSet[GarageCluster]" = weakref.WeakSet()

# urllib without any proxy from the environment: the nodes are on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Nodes listen on ports from 12000-19999: below the kernel's ephemeral
# ports (32768+), so that no outgoing connection and no port-0 listener of
# a test takes a killed node's port before the node comes back on it, and
# below the passive ranges of conftest (20000-31999).
_PORT_LOW, _PORT_HIGH = 12000, 20000
# Ports handed out by this process: two nodes never get the same one.
_PORTS_GIVEN: set[int] = set()


def _free_port() -> int:
    for _ in range(1000):
        port = random.randrange(_PORT_LOW, _PORT_HIGH)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise GarageError(f"no free port in {_PORT_LOW}-{_PORT_HIGH - 1}")


def _clean_env() -> dict[str, str]:
    """The caller's environment without GARAGE_ settings (the CLI reads
    GARAGE_RPC_HOST, GARAGE_RPC_SECRET, GARAGE_CONFIG_FILE...) and without
    RUST_LOG (meant for dropvault, not for Garage)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GARAGE_") and k != "RUST_LOG"}
    env["RUST_LOG"] = "warn,garage=info"
    env["NO_COLOR"] = "1"  # plain logs in the log files and error messages
    return env


def garage_binary() -> str:
    """Path of the garage binary: $DROPVAULT_GARAGE, the copy scripts/test
    installs under ~/.cache/dropvault, or `garage` on PATH."""
    explicit = os.environ.get("DROPVAULT_GARAGE")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise RuntimeError(f"DROPVAULT_GARAGE={explicit} is not an executable file")
    cached = pathlib.Path.home() / ".cache/dropvault/garage-2.5.0/bin/garage"
    if os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which("garage")
    if found:
        return found
    raise RuntimeError(
        f"Garage was not found (looked at $DROPVAULT_GARAGE, {cached} and PATH); "
        "scripts/test builds it (cargo install --locked garage@2.5.0 --no-default-features "
        "--features bundled-libs,lmdb --root ~/.cache/dropvault/garage-2.5.0)")


class GarageError(RuntimeError):
    """The cluster did not do what was asked (a CLI call failed, a node
    exited, a wait ran out of time)."""


# -- AWS Signature V4, just enough for HeadBucket --------------------------

def _sign_v4(method: str, host: str, path: str, region: str, access_key_id: str,
             secret_access_key: str) -> dict[str, str]:
    """Headers that sign a body-less request for path `path` (already
    URI-encoded, no query) with SigV4 for service s3."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, path, "",
        "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
        signed, payload_hash,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_access_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
        "Authorization": (f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
                          f"SignedHeaders={signed}, Signature={signature}"),
    }


class _Node:
    def __init__(self, index: int, root: pathlib.Path):
        self.index = index
        self.root = root
        self.config_path = root / "garage.toml"
        self.meta_dir = root / "meta"
        self.data_dir = root / "data"
        self.rpc_port = 0
        self.s3_port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_files: list[pathlib.Path] = []
        self.node_id = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files if p.exists())


class GarageCluster:
    """N Garage nodes on loopback forming one cluster with one bucket and
    one key allowed on it."""

    def __init__(self, base_dir: pathlib.Path | str, nodes: int = 1, replication: int = 1):
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        if not 1 <= replication <= nodes:
            raise ValueError(f"replication {replication} needs 1..{nodes} nodes")
        self.base_dir = pathlib.Path(base_dir)
        self.replication = replication
        self.binary = garage_binary()
        self.nodes = [_Node(i, self.base_dir / f"node{i}") for i in range(nodes)]
        self.region = REGION
        self.bucket = BUCKET
        self.bucket_id = ""
        self.access_key_id = ""
        self._secret_access_key = ""
        self._rpc_secret = secrets.token_hex(32)
        self._configured = False
        self._closed = False
        # When the operation under way (start, start_node...) gives up:
        # CLI calls and HTTP requests are cut short to end by then.
        self._deadline: float | None = None
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        # The secret access key and the rpc_secret stay out of reprs.
        ports = ",".join(str(n.s3_port) for n in self.nodes)
        return f"<GarageCluster {len(self.nodes)} nodes, s3 ports {ports}, {self.base_dir}>"

    # -- what clients need ------------------------------------------------

    @property
    def endpoint(self) -> str:
        """S3 endpoint of node 0."""
        return self.endpoints[0]

    @property
    def endpoints(self) -> list[str]:
        """S3 endpoint of every node, in node order."""
        if not self._configured:
            raise RuntimeError("the cluster was never started")
        return [n.endpoint for n in self.nodes]

    @property
    def secret_access_key(self) -> str:
        if not self._secret_access_key:
            raise RuntimeError("the cluster was never started")
        return self._secret_access_key

    @property
    def data_dirs(self) -> list[pathlib.Path]:
        """Every node's metadata and data folders: all Garage stores."""
        return [d for n in self.nodes for d in (n.meta_dir, n.data_dir)]

    def env(self, prefix: str = "") -> dict[str, str]:
        """The DROPVAULT_STORAGE_* settings that make a dropvault server
        store under `prefix` in this cluster's bucket (through node 0)."""
        return {
            "DROPVAULT_STORAGE_BACKEND": "s3",
            "DROPVAULT_STORAGE_S3_ENDPOINT": self.endpoint,
            "DROPVAULT_STORAGE_S3_REGION": self.region,
            "DROPVAULT_STORAGE_S3_BUCKET": self.bucket,
            "DROPVAULT_STORAGE_S3_ACCESS_KEY_ID": self.access_key_id,
            "DROPVAULT_STORAGE_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "DROPVAULT_STORAGE_S3_PATH_STYLE": "true",
            "DROPVAULT_STORAGE_S3_PREFIX": prefix,
        }

    def info(self) -> dict:
        """What `serve` prints: endpoints, region, bucket, key, data folders."""
        return {
            "endpoint": self.endpoint,
            "endpoints": self.endpoints,
            "region": self.region,
            "bucket": self.bucket,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "data_dirs": [str(d) for d in self.data_dirs],
        }

    # -- whole cluster ------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> "GarageCluster":
        """Writes the configs, starts every node and sets the cluster up
        (first call), or starts every stopped node again (later calls).
        Returns when a signed HeadBucket answers 200 on every node."""
        if self._configured:
            return self.start_all(timeout)
        if self._closed:
            raise RuntimeError("the cluster was closed")
        try:
            with self._until(timeout) as deadline:
                for node in self.nodes:
                    self._write_config(node)
                for node in self.nodes:
                    self._spawn(node)
                for node in self.nodes:
                    self._wait_rpc(node, deadline)
                    node.node_id = self._cli(node, "node", "id", "--quiet").strip()
                self._connect(deadline)
                self._apply_layout(deadline)
                self._wait_healthy(deadline)
                self._create_key_and_bucket(deadline)
                self._configured = True
                self._wait_bucket(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops every node (SIGTERM, then SIGKILL after a while)."""
        for node in self.nodes:
            self._terminate(node)

    def stop_all(self) -> None:
        """Garage is gone: every node stopped, data kept for start_all()."""
        self.stop()

    def start_all(self, timeout: float = START_TIMEOUT) -> "GarageCluster":
        """Garage is back: every stopped node started on its old config and
        data; returns when the cluster is healthy and serves the bucket on
        every node."""
        if not self._configured:
            raise RuntimeError("start() sets the cluster up first")
        with self._until(timeout) as deadline:
            spawned = [n for n in self.nodes if not n.running]
            for node in spawned:
                self._spawn(node)
            for node in self.nodes:
                self._wait_rpc(node, deadline)
            if len(spawned) < len(self.nodes):
                for node in spawned:
                    self._reconnect(node)
            self._wait_healthy(deadline)
            self._wait_bucket(deadline)
        return self

    def close(self) -> None:
        self.stop()
        self._closed = True

    def __enter__(self) -> "GarageCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- single nodes -------------------------------------------------------

    def kill_node(self, i: int) -> None:
        """SIGKILL node i, as a crash or a pulled plug would."""
        node = self.nodes[i]
        if node.running:
            assert node.proc is not None
            node.proc.kill()
            node.proc.wait(timeout=10)

    def stop_node(self, i: int) -> None:
        """SIGTERM node i (SIGKILL if it does not exit in time)."""
        self._terminate(self.nodes[i])

    def start_node(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Starts node i again on its config and data. Returns when it
        answers; when every node is running, only once the cluster is
        healthy and serves the bucket on every node."""
        if not self._configured:
            raise RuntimeError("start() sets the cluster up first")
        node = self.nodes[i]
        if node.running:
            raise RuntimeError(f"node {i} is already running")
        with self._until(timeout) as deadline:
            self._spawn(node)
            self._wait_rpc(node, deadline)
            self._reconnect(node)
            if all(n.running for n in self.nodes):
                self._wait_healthy(deadline)
                self._wait_bucket(deadline)

    def node_running(self, i: int) -> bool:
        return self.nodes[i].running

    def log_text(self) -> str:
        return "".join(f"--- node {n.index}\n{n.log_text()}" for n in self.nodes)

    # -- internals ----------------------------------------------------------

    @contextlib.contextmanager
    def _until(self, timeout: float):
        """The deadline of one operation, which also bounds every CLI call
        and HTTP request made for it."""
        self._deadline = time.monotonic() + timeout
        try:
            yield self._deadline
        finally:
            self._deadline = None

    def _write_config(self, node: _Node) -> None:
        node.rpc_port = _free_port()
        node.s3_port = _free_port()
        for d in (node.root, node.meta_dir, node.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        text = f"""\
metadata_dir = "{node.meta_dir}"
data_dir = "{node.data_dir}"
db_engine = "lmdb"
replication_factor = {self.replication}
compression_level = "none"

rpc_bind_addr = "{node.rpc_addr}"
rpc_public_addr = "{node.rpc_addr}"
rpc_secret = "{self._rpc_secret}"

[s3_api]
s3_region = "{self.region}"
api_bind_addr = "127.0.0.1:{node.s3_port}"
"""
        # The file holds the rpc_secret: readable by its owner only.
        fd = os.open(node.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _spawn(self, node: _Node) -> None:
        if self._closed:
            raise RuntimeError("the cluster was closed")
        node.starts += 1
        log = node.root / f"garage-{node.starts}.log"
        node.log_files.append(log)
        with open(log, "wb") as out:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.config_path), "server"],
                env=_clean_env(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent, cwd=node.root,
            )

    def _terminate(self, node: _Node, timeout: float = STOP_TIMEOUT) -> None:
        proc = node.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _run_cli(self, node: _Node, *args: str, payload: dict | list | None = None
                 ) -> subprocess.CompletedProcess:
        cmd = [self.binary, "-c", str(node.config_path), *args]
        if payload is not None:
            cmd.append(json.dumps(payload))
        return subprocess.run(cmd, env=_clean_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              timeout=self._timeout(CLI_TIMEOUT))

    def _timeout(self, longest: float) -> float:
        if self._deadline is None:
            return longest
        return min(longest, max(0.5, self._deadline - time.monotonic()))

    def _cli(self, node: _Node, *args: str, payload: dict | list | None = None) -> str:
        """Runs `garage -c NODE_CONFIG ARGS [PAYLOAD]` and returns stdout."""
        r = self._run_cli(node, *args, payload=payload)
        if r.returncode != 0:
            raise GarageError(f"garage {' '.join(args[:2])} on node {node.index} exited with "
                              f"{r.returncode}: {r.stderr.strip()[-2000:]}")
        return r.stdout

    def _api(self, node: _Node, endpoint: str, payload: dict | list | None = None):
        """One admin API call through `garage json-api`; its JSON answer."""
        out = self._cli(node, "json-api", endpoint, payload=payload)
        try:
            return json.loads(out)
        except ValueError as err:
            raise GarageError(f"json-api {endpoint}: not JSON: {out[:500]!r}") from err

    def _retry(self, what: str, deadline: float, call):
        """`call()` until it returns without raising GarageError: right
        after a layout change, table calls fail until quorums form."""
        while True:
            self._check_alive()
            try:
                return call()
            except (GarageError, subprocess.TimeoutExpired) as err:
                if time.monotonic() > deadline:
                    raise GarageError(f"{what}: no success in time; last error: {err}\n"
                                      f"{self.log_text()[-4000:]}") from err
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None and node.starts and \
                    node.proc.returncode not in (-signal.SIGKILL, -signal.SIGTERM, 0):
                raise GarageError(f"garage node {node.index} exited with "
                                  f"{node.proc.returncode}; log:\n{node.log_text()[-4000:]}")

    def _wait_rpc(self, node: _Node, deadline: float) -> None:
        """Until the node answers the CLI over RPC."""
        while True:
            if node.proc is None or node.proc.poll() is not None:
                code = node.proc.returncode if node.proc else None
                raise GarageError(f"garage node {node.index} exited with {code} before it "
                                  f"answered; log:\n{node.log_text()[-4000:]}")
            try:
                if self._run_cli(node, "json-api", "GetClusterStatus").returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise GarageError(f"garage node {node.index} did not answer on "
                                  f"{node.rpc_addr} in time; log:\n{node.log_text()[-4000:]}")
            time.sleep(0.1)

    def _connect(self, deadline: float) -> None:
        first, others = self.nodes[0], self.nodes[1:]
        if not others:
            return
        peers = [n.node_id for n in others]

        def connect() -> None:
            answers = self._api(first, "ConnectClusterNodes", peers)
            failed = [a.get("error") for a in answers if not a.get("success")]
            if failed:
                raise GarageError(f"ConnectClusterNodes: {failed}")

        self._retry("connecting the nodes", deadline, connect)

        def all_up() -> None:
            status = self._api(first, "GetClusterStatus")
            up = {n["id"] for n in status.get("nodes", []) if n.get("isUp")}
            missing = [n.index for n in self.nodes if n.node_id.split("@")[0] not in up]
            if missing:
                raise GarageError(f"nodes {missing} not up yet")

        self._retry("waiting for every node to be up", deadline, all_up)

    def _reconnect(self, node: _Node) -> None:
        """Connects a restarted node and the running ones both ways, as an
        operator's `garage node connect` would. On its own Garage gets
        there too, but a peer that saw the node die retries with a backoff
        that can take half a minute."""
        others = [n for n in self.nodes if n is not node and n.running]
        if not others:
            return
        attempts = [(node, [n.node_id for n in others])]
        attempts += [(n, [node.node_id]) for n in others]
        for src, peers in attempts:
            try:
                self._api(src, "ConnectClusterNodes", peers)
            except (GarageError, subprocess.TimeoutExpired):
                pass  # the health wait that follows tells

    def _apply_layout(self, deadline: float) -> None:
        first = self.nodes[0]
        # One zone per node: each replica of a partition on a different node.
        roles = [{"id": n.node_id.split("@")[0], "zone": f"dc{n.index + 1}",
                  "capacity": CAPACITY, "tags": []} for n in self.nodes]
        self._retry("staging the layout", deadline,
                    lambda: self._api(first, "UpdateClusterLayout", {"roles": roles}))
        layout = self._api(first, "GetClusterLayout")
        version = int(layout["version"]) + 1
        self._retry("applying the layout", deadline,
                    lambda: self._api(first, "ApplyClusterLayout", {"version": version}))

    def _wait_healthy(self, deadline: float) -> None:
        """Until every node sees every storage node up and a quorum for
        every partition."""
        for node in self.nodes:
            def healthy(node=node) -> None:
                health = self._api(node, "GetClusterHealth")
                if health.get("status") != "healthy" or \
                        health.get("storageNodesUp") != len(self.nodes):
                    raise GarageError(f"node {node.index} health: {health}")

            self._retry(f"waiting for node {node.index} to see a healthy cluster",
                        deadline, healthy)

    def _create_key_and_bucket(self, deadline: float) -> None:
        first = self.nodes[0]
        key = self._retry("creating the access key", deadline,
                          lambda: self._api(first, "CreateKey", {"name": KEY_NAME}))
        self.access_key_id = key["accessKeyId"]
        self._secret_access_key = key["secretAccessKey"]

        def create_bucket() -> dict:
            # A retry after a create that went through but answered an
            # error finds the bucket by its alias.
            r = self._run_cli(first, "json-api", "GetBucketInfo",
                              json.dumps({"globalAlias": self.bucket}))
            if r.returncode == 0:
                return json.loads(r.stdout)
            return self._api(first, "CreateBucket", {"globalAlias": self.bucket})

        bucket = self._retry("creating the bucket", deadline, create_bucket)
        self.bucket_id = bucket["id"]
        self._retry("allowing the key on the bucket", deadline, lambda: self._api(
            first, "AllowBucketKey", {
                "bucketId": self.bucket_id, "accessKeyId": self.access_key_id,
                "permissions": {"read": True, "write": True, "owner": True},
            }))

    def head_bucket(self, node: int = 0) -> int:
        """HTTP status of a signed HeadBucket on node `node`'s S3 API."""
        n = self.nodes[node]
        host = f"127.0.0.1:{n.s3_port}"
        path = "/" + self.bucket
        headers = _sign_v4("HEAD", host, path, self.region, self.access_key_id,
                           self.secret_access_key)
        req = urllib.request.Request(n.endpoint + path, method="HEAD", headers=headers)
        try:
            with _OPENER.open(req, timeout=self._timeout(HTTP_TIMEOUT)) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def _wait_bucket(self, deadline: float) -> None:
        """Until a signed HeadBucket answers 200 on every node: the key,
        the bucket and the permission have reached all of them."""
        for node in self.nodes:
            def ready(node=node) -> None:
                try:
                    status = self.head_bucket(node.index)
                except OSError as err:
                    raise GarageError(f"S3 API of node {node.index}: {err}") from err
                if status != 200:
                    raise GarageError(f"HeadBucket on node {node.index}: HTTP {status}")

            self._retry(f"waiting for the bucket on node {node.index}", deadline, ready)


@atexit.register
def _stop_all() -> None:
    for cluster in list(_INSTANCES):
        try:
            cluster.stop()
        except Exception:
            pass


# -- command line -------------------------------------------------------------

class _Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def _serve(args: argparse.Namespace) -> int:
    stopping = False
    started = False

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if not started:
            # Interrupts the setup; the finally below stops the nodes.
            raise _Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = None
    try:
        cluster = GarageCluster(args.dir, nodes=args.nodes, replication=args.replication)
        cluster.start(timeout=args.timeout)
        started = True
        if stopping:
            return 0
        sys.stdout.write(json.dumps(cluster.info()) + "\n")
        sys.stdout.flush()

        # Raw reads with a timeout, no reader thread: a thread blocked in a
        # buffered stdin read aborts the interpreter at exit (SIGTERM case).
        fd = sys.stdin.fileno()
        while not stopping:
            readable, _, _ = select.select([fd], [], [], 1.0)
            if readable and not os.read(fd, 65536):
                break
        return 0
    except _Stop:
        return 0
    except (GarageError, RuntimeError, ValueError, OSError, subprocess.SubprocessError) as err:
        print(f"garage.py: {err}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Real Garage S3 clusters on loopback.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start a cluster, print its JSON line, run until "
                           "stdin reaches EOF or SIGTERM/SIGINT, then stop it")
    serve.add_argument("--dir", required=True, type=pathlib.Path,
                       help="folder for the nodes' configs, data and logs")
    serve.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    serve.add_argument("--replication", type=int, default=None,
                       help="replication factor (default: 1 for one node, else 3 or the "
                       "number of nodes if fewer)")
    serve.add_argument("--timeout", type=float, default=START_TIMEOUT,
                       help="seconds the cluster has to come up (default %(default)s)")
    args = parser.parse_args(argv)
    if args.replication is None:
        args.replication = min(args.nodes, 3)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
