"""basic-ftp (npm, the most used Node FTP client) over explicit FTPS. Node's
TLS sockets end an upload that has no data without close_notify, now and
then: the server must take such an empty upload every time, while a
non-empty upload cut that way is never committed (test_ftplib_tls.py)."""

import pytest

from dvclients import ftp_plain, mlsd, payload, basic_ftp

# Every test here runs on local storage and on S3 storage (conftest).
pytestmark = pytest.mark.both_backends

ROUNDS = 30


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "some.bin").write_bytes(payload(300_001))
    return tmp_path


def test_basic_ftp_empty_uploads_over_tls_succeed_every_time(server, files):
    empty = files / "empty.bin"
    for i in range(ROUNDS):
        status, records = basic_ftp(server, f"upload:{empty}:empty-{i}.bin")
        assert status == 0, (i, records)
        assert records[-1]["code"] == 226, (i, records)
        # Our words only: no library's error text or address in a reply.
        assert "rustls" not in records[-1]["message"]
    with ftp_plain(server) as ftp:
        facts = mlsd(ftp)
    assert sorted(facts) == sorted(f"empty-{i}.bin" for i in range(ROUNDS))
    assert all(f["size"] == "0" for f in facts.values())


def test_basic_ftp_empty_uploads_after_others_in_one_session(server, files):
    """On a session's later data connections (resumed TLS), Node may close
    an empty upload before its last handshake message is out."""
    steps = []
    for i in range(ROUNDS // 2):
        steps += [f"upload:{files / 'some.bin'}:some-{i}.bin",
                  f"upload:{files / 'empty.bin'}:empty-{i}.bin"]
    status, records = basic_ftp(server, *steps)
    assert status == 0, records[-1]
    assert [r["code"] for r in records] == [226] * len(steps)
    with ftp_plain(server) as ftp:
        facts = mlsd(ftp)
    assert len(facts) == len(steps)
    assert all(f["size"] == ("0" if n.startswith("empty") else "300001")
               for n, f in facts.items())


def test_basic_ftp_round_trip_over_tls(server, files):
    back = files / "back.bin"
    status, records = basic_ftp(server, f"upload:{files / 'some.bin'}:dir-less.bin",
                                f"upload:{files / 'empty.bin'}:zero.bin",
                                "list:", "size:dir-less.bin",
                                f"download:dir-less.bin:{back}")
    assert status == 0, records
    listing = {e["name"]: e["size"] for e in records[2]["result"]}
    assert listing == {"dir-less.bin": 300_001, "zero.bin": 0}
    assert records[3]["result"] == 300_001
    assert back.read_bytes() == (files / "some.bin").read_bytes()
