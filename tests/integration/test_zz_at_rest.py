"""Runs last: after every other test, no data folder of this run holds the
plaintext marker that every uploaded file carried, in any file (sealed
files, staging files, crash leftovers, key files, logs)."""

import pytest

from dvclients import MARKER, find_marker


def test_scanner_finds_the_marker(tmp_path):
    """The check below would be empty if the scanner missed markers."""
    hidden = tmp_path / "probe" / ".staging" / "leftover.part"
    hidden.parent.mkdir(parents=True)
    # Across the scanner's 1 MiB read boundary.
    hidden.write_bytes(b"\0" * ((1 << 20) - 7) + MARKER + b"\0" * 100)
    (tmp_path / "probe" / "clean.bin").write_bytes(b"\0" * 1000)
    assert find_marker(tmp_path / "probe") == [hidden]


def test_no_plaintext_marker_in_any_data_folder(all_data_dirs):
    dirs = [d for d in dict.fromkeys(all_data_dirs) if d.exists()]
    if not dirs:
        pytest.skip("no server ran in this session")
    scanned = sum(1 for d in dirs for p in d.rglob("*") if p.is_file())
    assert scanned > 0
    hits = [hit for d in dirs for hit in find_marker(d)]
    assert hits == [], f"plaintext marker on storage: {hits}"
