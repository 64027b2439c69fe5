"""lftp: `mirror -R` of a tree of awkward sizes and `mirror` back, compared
byte for byte, over plain FTP and over FTPS with TLS 1.3 and TLS 1.2."""

import pytest

from dvclients import MAGIC, ftp_plain, lftp, mlsd, payload, sealed_len, tree_files

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

SIZES = {
    "empty": 0,
    "one-byte": 1,
    "segment-65536": 65536,
    "sub/segment-plus-one-65537": 65537,
    "sub/deeper/five-mib": 5 * 1024 * 1024,
}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    for name, size in SIZES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(size))
    return root


def mirror_roundtrip(server, tree, tmp_path, tls):
    r = lftp(server, f"mirror -R {tree} /up", tls=tls)
    assert r.returncode == 0, f"mirror -R failed:\n{r.stdout}\n{r.stderr}"
    back = tmp_path / "back"
    r = lftp(server, f"mirror /up {back}", tls=tls)
    assert r.returncode == 0, f"mirror failed:\n{r.stdout}\n{r.stderr}"
    sent, got = tree_files(tree), tree_files(back)
    assert sorted(got) == sorted(sent)
    for name in sent:
        assert got[name] == sent[name], f"{name} differs after the round trip"
    # Stored sealed, with the exact sizes of the at-rest format (in the
    # local folder; on S3 the listing's sizes come from the object sizes),
    # and listed with plaintext sizes.
    if server.backend == "local":
        home = server.user_dir()
        for name, size in SIZES.items():
            stored = home / "up" / name
            assert stored.stat().st_size == sealed_len(size), name
            assert stored.read_bytes()[:8] == MAGIC, name
    with ftp_plain(server) as ftp:
        facts = mlsd(ftp, "/up/sub")
        assert facts["segment-plus-one-65537"]["size"] == "65537"
        assert facts["deeper"]["type"] == "dir"


def test_lftp_mirror_plain(server, tree, tmp_path):
    mirror_roundtrip(server, tree, tmp_path, tls=None)


def test_lftp_mirror_tls13(server, tree, tmp_path):
    mirror_roundtrip(server, tree, tmp_path, tls="1.3")
    # Both lftp runs logged in over TLS (the listing check after them did not).
    assert sum(e["encrypted"] is True for e in server.events("login")) >= 2


def test_lftp_mirror_tls12(server, tree, tmp_path):
    mirror_roundtrip(server, tree, tmp_path, tls="1.2")


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_lftp_mirror_tls_without_reuse_check(dropvault, tree, tmp_path, tls):
    """The same round trip with tls_session_reuse=optional: TLS itself, and
    lftp's uploads over it, work."""
    server = dropvault(ftp_tls_session_reuse="optional")
    mirror_roundtrip(server, tree, tmp_path, tls=tls)
