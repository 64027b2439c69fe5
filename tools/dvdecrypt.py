#!/usr/bin/env python3
"""Independent implementation of the dropvault at-rest format, version 1.

Written from docs/FORMAT.md alone (without reading the Rust reference in
crates/format) so that the specification and the test vectors can be
cross-checked against a second implementation.

Library use:
    decrypt(data, data_key) -> plaintext     (raises FormatError)
    encrypt(plaintext, data_key, salt) -> sealed file bytes

Command line:
    python3 tools/dvdecrypt.py --key-hex HEX FILE > plain
    python3 tools/dvdecrypt.py --check-vectors DIR

Only dependency outside the standard library: `cryptography` (AES-256-GCM).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# --- constants (FORMAT.md sections 2 and 3) ---------------------------------

MAGIC = b"\x89DRPVLT\n"
VERSION = 1
ALGORITHM = 1
FLAGS = 0
SEGMENT_SIZE = 65536          # plaintext bytes per full segment
HEADER_LEN = 96               # H
TAG_LEN = 16                  # T
FULL_SEALED = SEGMENT_SIZE + TAG_LEN   # F = 65 552

KEY_ID_INFO = b"dropvault v1 key id"
PAYLOAD_INFO = b"dropvault v1 payload key"
HEADER_INFO = b"dropvault v1 header key"

ERROR_KINDS = (
    "BadMagic", "UnsupportedVersion", "UnsupportedAlgorithm", "UnknownFlags",
    "UnsupportedSegmentSize", "WrongKey", "HeaderAuth", "InvalidLength",
    "SegmentAuth", "Truncated", "TrailingData",
)


class FormatError(Exception):
    """A sealed file was rejected; `.kind` is one of ERROR_KINDS."""

    def __init__(self, kind: str, detail: str = "", segment: int | None = None):
        assert kind in ERROR_KINDS, kind
        self.kind = kind
        self.segment = segment
        super().__init__(f"{kind}: {detail}" if detail else kind)


# --- keys (section 1) --------------------------------------------------------

def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def key_id(dek: bytes) -> bytes:
    return _hmac(dek, KEY_ID_INFO)[:16]


def _hkdf_expand_32(prk: bytes, info: bytes) -> bytes:
    # RFC 5869 Expand with L = 32 = HashLen: T(1) = HMAC(PRK, info || 0x01).
    return _hmac(prk, info + b"\x01")


def derive_keys(dek: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """Return (payload key, header key) for one file."""
    prk = _hmac(salt, dek)                    # HKDF-Extract(salt, IKM = DEK)
    return _hkdf_expand_32(prk, PAYLOAD_INFO), _hkdf_expand_32(prk, HEADER_INFO)


def _check_dek(dek: bytes) -> None:
    if len(dek) != 32:
        raise ValueError("data key must be 32 bytes")


# --- lengths (section 3) -----------------------------------------------------

def plaintext_length(c: int) -> int | None:
    """Plaintext length for a sealed file of `c` bytes, or None if invalid."""
    if c < HEADER_LEN + TAG_LEN:
        return None
    k, r = divmod(c - HEADER_LEN, FULL_SEALED)
    if r == 0 and k >= 1:
        return k * SEGMENT_SIZE
    if 0 < r < TAG_LEN:
        return None
    if r == TAG_LEN and k >= 1:
        return None
    return k * SEGMENT_SIZE + r - TAG_LEN


def sealed_length(p: int) -> int:
    return HEADER_LEN + p + TAG_LEN * segment_count(p)


def segment_count(p: int) -> int:
    return max(1, math.ceil(p / SEGMENT_SIZE))


def nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# --- header (section 2.1) ----------------------------------------------------

def _header_fields(dek: bytes, salt: bytes) -> bytes:
    return (MAGIC + bytes([VERSION, ALGORITHM]) + FLAGS.to_bytes(2, "big")
            + SEGMENT_SIZE.to_bytes(4, "big") + key_id(dek) + salt)


def parse_header(data: bytes, dek: bytes) -> bytes:
    """Run the header checks of section 2.1 in order; return the payload key."""
    if data[0:8] != MAGIC[: min(len(data), 8)]:                 # 1
        raise FormatError("BadMagic")
    if len(data) < HEADER_LEN:                                   # 2
        raise FormatError("InvalidLength", f"{len(data)} bytes, header is 96")
    if data[8] != VERSION:                                       # 3
        raise FormatError("UnsupportedVersion", str(data[8]))
    if data[9] != ALGORITHM:                                     # 4
        raise FormatError("UnsupportedAlgorithm", str(data[9]))
    flags = int.from_bytes(data[10:12], "big")
    if flags != FLAGS:                                           # 5
        raise FormatError("UnknownFlags", f"0x{flags:04x}")
    seg = int.from_bytes(data[12:16], "big")
    if seg != SEGMENT_SIZE:                                      # 6
        raise FormatError("UnsupportedSegmentSize", str(seg))
    if not hmac.compare_digest(data[16:32], key_id(dek)):        # 7
        raise FormatError("WrongKey")
    salt = data[32:64]
    payload_key, header_key = derive_keys(dek, salt)
    if not hmac.compare_digest(data[64:96], _hmac(header_key, data[0:64])):  # 8
        raise FormatError("HeaderAuth")
    return payload_key


# --- decrypt (sections 3-5) --------------------------------------------------

def _open(aead: AESGCM, i: int, last: bool, sealed: bytes) -> bytes | None:
    try:
        return aead.decrypt(nonce(i, last), sealed, None)
    except InvalidTag:
        return None


def decrypt(data: bytes, data_key: bytes) -> bytes:
    """Decrypt a whole sealed file; all-or-nothing, raises FormatError."""
    _check_dek(data_key)
    data = bytes(data)
    payload_key = parse_header(data, data_key)
    c = len(data)
    p = plaintext_length(c)
    if p is None:
        raise FormatError("InvalidLength", f"{c} bytes is not a valid sealed length")
    n = segment_count(p)
    aead = AESGCM(payload_key)
    out = []
    for i in range(n):
        start = HEADER_LEN + i * FULL_SEALED
        end = min(start + FULL_SEALED, c)
        sealed = data[start:end]
        final = i == n - 1
        pt = _open(aead, i, final, sealed)
        if pt is not None:
            out.append(pt)
            continue
        # Classification on the failure path only; nothing is accepted here.
        other = _open(aead, i, not final, sealed) is not None
        if final and other and len(sealed) == FULL_SEALED:
            raise FormatError("Truncated", f"stream ends after non-final segment {i}", i)
        if not final and other:
            raise FormatError("TrailingData", f"data follows final segment {i}", i)
        raise FormatError("SegmentAuth", f"segment {i} failed authentication", i)
    return b"".join(out)


# --- encrypt (writer rules, section 2.2) -------------------------------------

def encrypt(plaintext: bytes, data_key: bytes, salt: bytes) -> bytes:
    _check_dek(data_key)
    if len(salt) != 32:
        raise ValueError("salt must be 32 bytes")
    payload_key, header_key = derive_keys(data_key, salt)
    fields = _header_fields(data_key, salt)
    parts = [fields, _hmac(header_key, fields)]
    aead = AESGCM(payload_key)
    n = segment_count(len(plaintext))
    for i in range(n):
        chunk = plaintext[i * SEGMENT_SIZE:(i + 1) * SEGMENT_SIZE]
        parts.append(aead.encrypt(nonce(i, i == n - 1), chunk, None))
    out = b"".join(parts)
    assert len(out) == sealed_length(len(plaintext))
    return out


# --- test vectors (section 8) ------------------------------------------------

def vector_plaintext(length: int) -> bytes:
    pattern = bytes(range(251))
    reps, rest = divmod(length, 251)
    return pattern * reps + pattern[:rest]


def check_vector(v: dict, directory: str) -> str | None:
    """Return None if the vector passes, else a reason."""
    with open(os.path.join(directory, v["file"]), "rb") as f:
        data = f.read()
    key = bytes.fromhex(v["data_key"])
    expect = v["expect"]
    if expect == "ok":
        plain = vector_plaintext(v["plaintext_len"])
        if hashlib.sha256(plain).hexdigest() != v["plaintext_sha256"].lower():
            return "generated plaintext does not match plaintext_sha256"
        if plaintext_length(len(data)) != len(plain):
            return f"length formula gives {plaintext_length(len(data))}"
        try:
            got = decrypt(data, key)
        except FormatError as e:
            return f"decrypt raised {e}"
        if got != plain:
            return "decrypted plaintext differs"
        sealed = encrypt(plain, key, bytes.fromhex(v["salt"]))
        if sealed != data:
            diff = next((j for j in range(min(len(sealed), len(data)))
                         if sealed[j] != data[j]), min(len(sealed), len(data)))
            return (f"encrypt output differs (len {len(sealed)} vs {len(data)}, "
                    f"first difference at byte {diff})")
        return None
    try:
        decrypt(data, key)
    except FormatError as e:
        return None if e.kind == expect else f"got {e.kind}, expected {expect} ({e})"
    return f"decrypted successfully, expected {expect}"


def check_vectors(directory: str) -> int:
    with open(os.path.join(directory, "vectors.json")) as f:
        vectors = json.load(f)["vectors"]
    passed = failed = 0
    for v in vectors:
        reason = check_vector(v, directory)
        if reason is None:
            passed += 1
            print(f"PASS {v['name']} ({v['expect']})")
        else:
            failed += 1
            print(f"FAIL {v['name']}: {reason}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


# --- CLI ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--key-hex", metavar="HEX", help="32-byte data key, hex")
    mode.add_argument("--check-vectors", metavar="DIR", help="run DIR/vectors.json")
    ap.add_argument("file", nargs="?", help="sealed file to decrypt")
    args = ap.parse_args(argv)

    if args.check_vectors:
        return check_vectors(args.check_vectors)
    if not args.file:
        ap.error("FILE is required with --key-hex")
    try:
        key = bytes.fromhex(args.key_hex)
        _check_dek(key)
        with open(args.file, "rb") as f:
            data = f.read()
        plain = decrypt(data, key)
    except FormatError as e:
        print(f"dvdecrypt: {args.file}: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"dvdecrypt: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(plain)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
