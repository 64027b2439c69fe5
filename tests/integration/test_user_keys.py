"""`dropvault user key add|list|delete`: users' SSH public keys in the users
file, with keys made by the real `ssh-keygen` and fingerprints compared with
what `ssh-keygen -lf` prints. (Logging in with a key is tested with the SSH
front end.)"""

import pathlib
import shutil
import subprocess

import pytest

from dvclients import PASSWORD, USER, ftp_plain, run_cli, stor

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def keygen(dir: pathlib.Path, kind: str, bits: int | None = None,
           comment: str = "") -> pathlib.Path:
    """A new key pair from ssh-keygen; returns the .pub file."""
    name = f"id_{kind}{bits or ''}"
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(dir / name)]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return dir / f"{name}.pub"


def keygen_fingerprint(pub: pathlib.Path) -> str:
    """`ssh-keygen -lf` of a .pub file: `BITS SHA256:... COMMENT (TYPE)`."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    fp = out.split()[1]
    assert fp.startswith("SHA256:"), out
    return fp


def listed(data_dir: pathlib.Path, user: str = USER) -> list[list[str]]:
    r = run_cli(["user", "key", "list", user], data_dir)
    assert r.returncode == 0, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


@pytest.fixture
def data_dir(tmp_path) -> pathlib.Path:
    d = tmp_path / "data"
    r = run_cli(["user", "add", USER, "--password-stdin"], d, stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return d


def test_keys_are_added_listed_and_deleted(data_dir, tmp_path):
    ed = keygen(tmp_path, "ed25519", comment="alice@laptop")
    ecdsa = [keygen(tmp_path, "ecdsa", bits, comment=f"ec {bits}") for bits in (256, 384, 521)]
    want = {p: keygen_fingerprint(p) for p in [ed, *ecdsa]}

    r = run_cli(["user", "key", "add", USER, "--file", str(ed)], data_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"added {want[ed]} (ssh-ed25519 alice@laptop)"]

    # Several lines on standard input, with a blank line and a comment.
    text = "# work keys\n\n" + "".join(p.read_text() for p in ecdsa)
    r = run_cli(["user", "key", "add", USER], data_dir, stdin=text)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"added {want[p]} (ecdsa-sha2-nistp{bits} ec {bits})"
        for p, bits in zip(ecdsa, (256, 384, 521))
    ]

    rows = listed(data_dir)
    assert [(fp, kind, comment) for fp, kind, comment, _ in rows] == [
        (want[ed], "ssh-ed25519", "alice@laptop"),
        (want[ecdsa[0]], "ecdsa-sha2-nistp256", "ec 256"),
        (want[ecdsa[1]], "ecdsa-sha2-nistp384", "ec 384"),
        (want[ecdsa[2]], "ecdsa-sha2-nistp521", "ec 521"),
    ]
    assert all(added.endswith("Z") for *_, added in rows), rows

    # Adding a key again changes nothing and says so.
    r = run_cli(["user", "key", "add", USER, "--file", str(ed)], data_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"already present {want[ed]}"), r.stdout
    assert len(listed(data_dir)) == 4

    r = run_cli(["user", "key", "delete", USER, want[ecdsa[1]]], data_dir)
    assert r.returncode == 0, r.stderr
    assert want[ecdsa[1]] in r.stdout
    assert [row[0] for row in listed(data_dir)] == [want[ed], want[ecdsa[0]], want[ecdsa[2]]]
    r = run_cli(["user", "key", "delete", USER, want[ecdsa[1]]], data_dir)
    assert r.returncode != 0 and "no SSH key" in r.stderr, r

    # The users file holds the .pub lines as ssh-keygen wrote them.
    users = (data_dir / "users.toml").read_text()
    assert ed.read_text().strip() in users
    # The password still works: `user passwd` and `user list` see the user.
    assert run_cli(["user", "list"], data_dir).stdout.split() == [USER]


def test_rsa_keys_are_refused_with_the_reason(data_dir, tmp_path):
    rsa = keygen(tmp_path, "rsa", 3072)
    r = run_cli(["user", "key", "add", USER, "--file", str(rsa)], data_dir)
    assert r.returncode != 0
    assert "RSA keys (ssh-rsa) are not supported" in r.stderr, r.stderr
    assert "RUSTSEC-2023-0071" in r.stderr and "ed25519" in r.stderr, r.stderr

    # One refused line and nothing is added, not even the good key before it.
    ed = keygen(tmp_path, "ed25519")
    r = run_cli(["user", "key", "add", USER], data_dir,
                stdin=ed.read_text() + rsa.read_text())
    assert r.returncode != 0 and "line 2: RSA" in r.stderr, r
    assert listed(data_dir) == []


def test_private_keys_and_junk_are_refused_without_being_echoed(data_dir, tmp_path):
    pub = keygen(tmp_path, "ed25519")
    private = pub.with_suffix("")
    r = run_cli(["user", "key", "add", USER, "--file", str(private)], data_dir)
    assert r.returncode != 0 and "private key" in r.stderr, r
    body = private.read_text().splitlines()[1]
    assert body not in r.stderr and body not in r.stdout

    kind, blob, *_ = pub.read_text().split()
    for line, why in [
        (f"ecdsa-sha2-nistp256 {blob}", "the key inside is"),
        (f'from="10.0.0.0/8" {kind} {blob}', "options"),
        (f"{kind} {blob[:-8]}", "malformed"),
        ("", "no public key"),
    ]:
        r = run_cli(["user", "key", "add", USER], data_dir, stdin=line + "\n")
        assert r.returncode != 0 and why in r.stderr, (line, r.stderr)
        assert blob not in r.stderr
    assert listed(data_dir) == []


def test_keys_need_an_existing_user_of_the_file_backend(data_dir, tmp_path):
    pub = keygen(tmp_path, "ed25519")
    r = run_cli(["user", "key", "add", "nobody", "--file", str(pub)], data_dir)
    assert r.returncode != 0 and "no such user" in r.stderr, r
    r = run_cli(["user", "key", "list", "nobody"], data_dir)
    assert r.returncode != 0 and "no such user" in r.stderr, r
    for args in (["add", USER, "--file", str(pub)], ["list", USER], ["delete", USER, "SHA256:x"]):
        r = run_cli(["user", "key", *args], data_dir, extra_env={"DROPVAULT_AUTH_BACKEND": "pam"})
        assert r.returncode != 0, r
        assert 'work only with auth.backend = "file"' in r.stderr, r.stderr


def test_a_running_server_reads_the_users_file_with_keys(server, tmp_path):
    pub = keygen(tmp_path, "ed25519", comment="k")
    r = run_cli(["user", "key", "add", USER, "--file", str(pub)], server.data_dir)
    assert r.returncode == 0, r.stderr
    # The server rereads the changed file: the password still logs in, and
    # a restart loads the file.
    with ftp_plain(server) as ftp:
        stor(ftp, "a.bin", b"ok")
    server.restart()
    with ftp_plain(server) as ftp:
        assert ftp.size("a.bin") == 2
    assert [row[0] for row in listed(server.data_dir)] == [keygen_fingerprint(pub)]
