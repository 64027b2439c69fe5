"""A throwaway OpenLDAP slapd on loopback, for the LDAP account tests.

`Slapd(base_dir)` writes everything under `base_dir`: a test CA and a
server certificate (SAN IP:127.0.0.1 and DNS:localhost, made with
`openssl`), an openssh-lpk schema (Debian ships none), a `slapd.conf`
(schemas core, cosine, inetorgperson, nis, openssh-lpk; an mdb database;
the memberof overlay; TLS; `allow bind_anon_dn`, so an empty-password bind
with a DN succeeds as anonymous, as on Active Directory) and an ed25519 key
pair for alice (`ssh-keygen`). `start()` loads the base entries with
`slapadd`, runs `slapd -d 0` in the foreground on
ldap://127.0.0.1:P and ldaps://127.0.0.1:Q (free ports), waits until it
answers a bind, then adds the group with `ldapadd` (so the overlay fills
memberOf). `stop()` and `start()` again keep ports and data; `close()`
stops it for good. slapd gets SIGTERM when the process that started it
dies.

The directory (suffix dc=example,dc=test):
- ou=people: alice (alicepw, sshPublicKey, employeeType 5GiB), bob (bobpw,
  employeeType "plenty"), carol (carolpw)
- ou=services: cn=dropvault (the service account, servicepw)
- ou=groups: cn=dropvault-users (groupOfNames), members alice and bob (not
  carol); cn=dropvault-unique (groupOfUniqueNames, no memberOf), alice only

For tests in other languages there is a command line:

    python3 tests/integration/slapd.py serve --dir DIR

prints one JSON line (`info()`: urls, CA file, DNs, passwords, alice's key
files) when slapd answers, then reads commands from stdin, one a line:
`stop` stops slapd and `start` starts it again on the same ports, each
answered by a JSON line {"ok": true} (or {"ok": false, "error": ...});
EOF or SIGTERM/SIGINT stops slapd and exits 0.

Needs Debian's `slapd` and `ldap-utils` (scripts/test installs them),
`openssl` and `ssh-keygen`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import time
import weakref

from procs import die_with_parent, free_port

START_TIMEOUT = 30
STOP_TIMEOUT = 10
TOOL_TIMEOUT = 30

SUFFIX = "dc=example,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "adminpw"
PEOPLE_DN = f"ou=people,{SUFFIX}"
SERVICE_DN = f"cn=dropvault,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "servicepw"
GROUP_DN = f"cn=dropvault-users,ou=groups,{SUFFIX}"
# A groupOfUniqueNames, which the memberof overlay does not follow: its
# members have no memberOf for it, so it is found by a search of the group.
UNIQUE_GROUP_DN = f"cn=dropvault-unique,ou=groups,{SUFFIX}"
UNIQUE_MEMBERS = ("alice",)
# user -> (password, in the group)
USERS = {"alice": ("alicepw", True), "bob": ("bobpw", True), "carol": ("carolpw", False)}
USER_FILTER = "(&(objectClass=inetOrgPerson)(uid={user}))"

SLAPD = "/usr/sbin/slapd"
SCHEMA_DIR = pathlib.Path("/etc/ldap/schema")
MODULE_DIR = pathlib.Path("/usr/lib/ldap")

OPENSSH_LPK_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.24552.500.1.1.1.13 NAME 'sshPublicKey'
    DESC 'MANDATORY: OpenSSH Public key' EQUALITY octetStringMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )
objectclass ( 1.3.6.1.4.1.24552.500.1.1.2.0 NAME 'ldapPublicKey' SUP top AUXILIARY
    DESC 'MANDATORY: OpenSSH LPK objectclass' MAY ( sshPublicKey $ uid ) )
"""


_INSTANCES: "weakref.WeakSet[Slapd]" = weakref.WeakSet()


class SlapdError(RuntimeError):
    """slapd or one of its tools failed."""


def check_tools() -> None:
    """Fails with what to install when a tool is missing."""
    missing = [t for t in (SLAPD, "slapadd", "ldapadd", "ldapwhoami", "openssl", "ssh-keygen")
               if shutil.which(t) is None]
    if missing:
        raise SlapdError(f"missing {', '.join(missing)}: install Debian's slapd and ldap-utils "
                         "(apt-get install slapd ldap-utils; scripts/test does it), openssl "
                         "and openssh-client")


def _run(*cmd: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, env=_clean_env())
    except subprocess.TimeoutExpired as err:
        raise SlapdError(f"{cmd[0]} took longer than {TOOL_TIMEOUT}s") from err
    if done.returncode != 0:
        raise SlapdError(f"{' '.join(cmd)} exited with {done.returncode}: "
                         f"{done.stderr.strip()[-2000:]}")
    return done.stdout


def _clean_env() -> dict[str, str]:
    # ldap tools read LDAP* and LDAPTLS_* settings from the environment.
    return {k: v for k, v in os.environ.items() if not k.startswith("LDAP")}


class Slapd:
    """One throwaway slapd; see the module's documentation."""

    def __init__(self, base_dir: pathlib.Path | str):
        check_tools()
        self.dir = pathlib.Path(base_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._loaded = False
        _INSTANCES.add(self)

    # -- where it is -------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ca_file(self) -> pathlib.Path:
        return self.dir / "ca.pem"

    @property
    def alice_key(self) -> pathlib.Path:
        """alice's private key (OpenSSH format, no passphrase)."""
        return self.dir / "alice_ed25519"

    @property
    def other_key(self) -> pathlib.Path:
        """A key pair in no entry of the directory."""
        return self.dir / "other_ed25519"

    def info(self) -> dict:
        return {
            "ldap_url": self.ldap_url,
            "ldaps_url": self.ldaps_url,
            "ca_file": str(self.ca_file),
            "base_dn": PEOPLE_DN,
            "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PASSWORD,
            "admin_dn": ADMIN_DN,
            "admin_password": ADMIN_PASSWORD,
            "group_dn": GROUP_DN,
            "unique_group_dn": UNIQUE_GROUP_DN,
            "user_filter": USER_FILTER,
            "users": {name: pw for name, (pw, _) in USERS.items()},
            "alice_key": str(self.alice_key),
            "alice_pub": str(self.alice_key) + ".pub",
            "other_key": str(self.other_key),
            "other_pub": str(self.other_key) + ".pub",
            "dir": str(self.dir),
        }

    def user_dn(self, name: str) -> str:
        return f"uid={name},{PEOPLE_DN}"

    # -- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> "Slapd":
        assert not self.running, "already running"
        if not self._loaded:
            self._prepare()
        self.starts += 1
        log = self.dir / f"slapd-{self.starts}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [SLAPD, "-f", str(self.dir / "slapd.conf"), "-d", "0",
                 "-h", f"{self.ldap_url}/ {self.ldaps_url}/"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=_clean_env(), preexec_fn=die_with_parent)
        self._wait_ready(timeout, log)
        if not self._loaded:
            self._ldapadd(self._group_ldif())
            self._loaded = True
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        self.stop()
        _INSTANCES.discard(self)

    def __enter__(self) -> "Slapd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait_ready(self, timeout: float, log: pathlib.Path) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SlapdError(f"slapd exited with {self.proc.returncode}: "
                                 f"{log.read_text(errors='replace')[-2000:]}")
            probe = subprocess.run(
                ["ldapwhoami", "-x", "-H", self.ldap_url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD,
                 "-o", "nettimeout=2"],
                capture_output=True, timeout=TOOL_TIMEOUT, env=_clean_env())
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise SlapdError(f"slapd did not answer within {timeout}s: "
                                 f"{probe.stderr.decode(errors='replace').strip()}")
            time.sleep(0.1)

    def _ldapadd(self, ldif: str) -> None:
        _run("ldapadd", "-x", "-H", self.ldap_url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD,
             stdin=ldif)

    # -- files -------------------------------------------------------------

    def _prepare(self) -> None:
        self._make_tls()
        for key in (self.alice_key, self.other_key):
            if not key.exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name,
                     "-f", str(key))
        (self.dir / "openssh-lpk.schema").write_text(OPENSSH_LPK_SCHEMA)
        (self.dir / "slapd.conf").write_text(self._conf())
        db = self.dir / "db"
        shutil.rmtree(db, ignore_errors=True)
        db.mkdir()
        (self.dir / "base.ldif").write_text(self._base_ldif())
        _run("slaptest", "-Q", "-u", "-f", str(self.dir / "slapd.conf"))
        _run("slapadd", "-q", "-f", str(self.dir / "slapd.conf"),
             "-l", str(self.dir / "base.ldif"))

    def _make_tls(self) -> None:
        d = self.dir
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _run("openssl", "req", "-x509", *ec, "-keyout", str(d / "ca.key"),
             "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=dropvault-test-ldap-ca")
        _run("openssl", "req", *ec, "-keyout", str(d / "srv.key"), "-out", str(d / "srv.csr"),
             "-subj", "/CN=localhost")
        (d / "srv.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                   "basicConstraints=CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth\n")
        _run("openssl", "x509", "-req", "-in", str(d / "srv.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
             "-out", str(d / "srv.pem"), "-extfile", str(d / "srv.ext"))

    def _conf(self) -> str:
        d = self.dir
        schemas = "".join(f"include {SCHEMA_DIR / s}.schema\n"
                          for s in ("core", "cosine", "inetorgperson", "nis"))
        return f"""\
{schemas}include {d / 'openssh-lpk.schema'}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload memberof
pidfile {d / 'slapd.pid'}
argsfile {d / 'slapd.args'}
TLSCertificateFile {d / 'srv.pem'}
TLSCertificateKeyFile {d / 'srv.key'}
TLSCACertificateFile {d / 'ca.pem'}
# Like Active Directory: a bind with a DN and no password is an anonymous
# bind that succeeds. dropvault must refuse empty passwords itself.
allow bind_anon_dn

database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {d / 'db'}
index objectClass,uid eq
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
"""

    def _base_ldif(self) -> str:
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
            "dc: example\no: example\n",
            f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
            f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: dropvault\n"
            f"userPassword: {SERVICE_PASSWORD}\n",
        ]
        alice_pub = (self.alice_key.parent / (self.alice_key.name + ".pub")).read_text().strip()
        for name, (password, _) in USERS.items():
            entry = (f"dn: {self.user_dn(name)}\nobjectClass: inetOrgPerson\n"
                     f"objectClass: ldapPublicKey\nuid: {name}\ncn: {name.title()}\n"
                     f"sn: {name.title()}\nmail: {name}@example.test\n"
                     f"userPassword: {password}\n")
            if name == "alice":
                entry += f"sshPublicKey: {alice_pub}\n"
            # What a quota_attribute may hold: alice a size, bob no size.
            entry += {"alice": "employeeType: 5GiB\n", "bob": "employeeType: plenty\n"}.get(name, "")
            entries.append(entry)
        return "\n".join(entries)

    def _group_ldif(self) -> str:
        members = "".join(f"member: {self.user_dn(n)}\n"
                          for n, (_, member) in USERS.items() if member)
        unique = "".join(f"uniqueMember: {self.user_dn(n)}\n" for n in UNIQUE_MEMBERS)
        return (f"dn: {GROUP_DN}\nobjectClass: groupOfNames\ncn: dropvault-users\n{members}\n"
                f"dn: {UNIQUE_GROUP_DN}\nobjectClass: groupOfUniqueNames\n"
                f"cn: dropvault-unique\n{unique}")


@atexit.register
def _stop_all() -> None:
    for server in list(_INSTANCES):
        try:
            server.close()
        except Exception:
            pass


# -- command line -------------------------------------------------------------

def _answer(ok: bool, error: str | None = None) -> None:
    reply = {"ok": ok} if error is None else {"ok": ok, "error": error}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def _serve(args: argparse.Namespace) -> int:
    stopping = False

    def on_signal(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    try:
        server = Slapd(args.dir).start()
        sys.stdout.write(json.dumps(server.info()) + "\n")
        sys.stdout.flush()
        fd = sys.stdin.fileno()
        pending = b""
        while not stopping:
            readable, _, _ = select.select([fd], [], [], 1.0)
            if not readable:
                continue
            data = os.read(fd, 4096)
            if not data:
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                command = line.decode(errors="replace").strip()
                try:
                    if command == "stop":
                        server.stop()
                    elif command == "start":
                        server.start()
                    else:
                        raise SlapdError(f"unknown command {command!r}")
                    _answer(True)
                except (SlapdError, OSError, subprocess.SubprocessError) as err:
                    _answer(False, str(err))
        return 0
    except (SlapdError, OSError, subprocess.SubprocessError) as err:
        print(f"slapd.py: {err}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A throwaway OpenLDAP slapd on loopback.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start slapd, print its JSON line, obey stop/start "
                           "lines on stdin, stop it at EOF or SIGTERM/SIGINT")
    serve.add_argument("--dir", required=True, type=pathlib.Path,
                       help="folder for slapd's config, TLS files, keys, data and logs")
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
