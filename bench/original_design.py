#!/usr/bin/env python3
"""A REPRODUCTION OF THE ORIGINAL DESIGN ("dropzone", see ../shared/DESIGN.md,
"Where it comes from"), written for the benchmark only. It is not the seed's
code; it does what the seed did, in the way the seed did it, so the
benchmark can compare dropvault with the system it replaces:

- pyftpdlib's TLS_FTPHandler on the async single-process FTPServer; Linux
  system accounts log in (UnixAuthorizer: shadow hash checked with crypt(3));
- each user has an AES key, created at first login, stored wrapped by an RSA
  key of the "key service" in a per-user key file named after a hash of the
  user name; login unwraps it, logout re-wraps it and saves the file. The
  key service is an RSA-2048 key held in this process (the seed called a
  separate container over HTTP; that round trip is not reproduced);
- upload: the file is received in plaintext, then, in on_file_received,
  read whole into memory, encrypted with pycryptodome AES-256-GCM (the seed
  used AES-CBC without a MAC; GCM here), and written back;
- download: the whole file is decrypted into a temporary file, which is
  then sent, and deleted when the transfer ends.

All of it runs on pyftpdlib's one event-loop thread, as in the seed: while a
file is encrypted or decrypted, every other session waits.
"""

import base64
import hashlib
import json
import os
import pwd
import sys
import tempfile

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes
from pyftpdlib.handlers import TLS_FTPHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyftpdlib_server import parse_args, serve  # noqa: E402

MAGIC = b"DZGCM1\0\0"
NONCE_LEN = 12
TAG_LEN = 16


class KeyService:
    """Stand-in for the seed's "Encryption as a Service" container: a named,
    versioned RSA key that wraps and unwraps users' AES keys."""

    def __init__(self, workdir):
        self.name = "dropzone-kek"
        self.version = 1
        path = os.path.join(workdir, "kek.pem")
        if os.path.exists(path):
            with open(path, "rb") as f:
                self._rsa = RSA.import_key(f.read())
        else:
            self._rsa = RSA.generate(2048)
            with open(path, "wb") as f:
                f.write(self._rsa.export_key())
            os.chmod(path, 0o600)

    def wrap(self, key):
        return PKCS1_OAEP.new(self._rsa.publickey(), hashAlgo=SHA256).encrypt(key)

    def unwrap(self, blob):
        return PKCS1_OAEP.new(self._rsa, hashAlgo=SHA256).decrypt(blob)


class KeyFiles:
    """Per-user key files named after a hash of the user name."""

    def __init__(self, workdir, service):
        self.dir = os.path.join(workdir, "keys")
        os.makedirs(self.dir, exist_ok=True)
        self.service = service

    def _path(self, user):
        return os.path.join(self.dir, hashlib.sha256(user.encode()).hexdigest() + ".json")

    def login(self, user):
        """Unwrap the user's key, creating it at first login."""
        path = self._path(user)
        if not os.path.exists(path):
            key = get_random_bytes(32)
            self.save(user, key)
            return key
        with open(path) as f:
            doc = json.load(f)
        return self.service.unwrap(base64.b64decode(doc["wrapped_key"]))

    def save(self, user, key):
        doc = {
            "user": user,
            "key_name": self.service.name,
            "key_version": self.service.version,
            "wrapped_key": base64.b64encode(self.service.wrap(key)).decode(),
        }
        with open(self._path(user), "w") as f:
            json.dump(doc, f)


def encrypt_file(path, key):
    """Read the whole file, encrypt it with AES-256-GCM, write it back."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(MAGIC):
        return
    nonce = get_random_bytes(NONCE_LEN)
    ciphertext, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(data)
    del data
    with open(path, "wb") as f:
        f.write(MAGIC + nonce + tag)
        f.write(ciphertext)


def decrypt_to(path, key, out_fd):
    """Decrypt the whole file into the open descriptor out_fd."""
    with open(path, "rb") as f:
        blob = f.read()
    off = len(MAGIC)
    nonce = blob[off : off + NONCE_LEN]
    tag = blob[off + NONCE_LEN : off + NONCE_LEN + TAG_LEN]
    body = memoryview(blob)[off + NONCE_LEN + TAG_LEN :]
    plaintext = AES.new(key, AES.MODE_GCM, nonce=nonce).decrypt_and_verify(body, tag)
    with os.fdopen(out_fd, "wb") as out:
        out.write(plaintext)


class DropzoneHandler(TLS_FTPHandler):
    keyfiles = None  # set in main()
    tempdir = None

    def on_login(self, username):
        self._dz_key = self.keyfiles.login(username)

    def on_logout(self, username):
        key = getattr(self, "_dz_key", None)
        if key is not None:
            self.keyfiles.save(username, key)  # the seed re-wrapped at logout
            self._dz_key = None

    def on_file_received(self, file):
        encrypt_file(file, self._dz_key)

    def on_incomplete_file_received(self, file):
        # The seed left such files for the logout sweep; encrypt them now.
        encrypt_file(file, self._dz_key)

    def ftp_RETR(self, file):
        try:
            with open(file, "rb") as f:
                sealed = f.read(len(MAGIC)) == MAGIC
        except OSError:
            sealed = False
        if not sealed:
            return super().ftp_RETR(file)
        fd, tmp = tempfile.mkstemp(dir=self.tempdir, prefix="dz-")
        pw = pwd.getpwnam(self.username)
        os.fchown(fd, pw.pw_uid, pw.pw_gid)  # the transfer reads it as the user
        try:
            decrypt_to(file, self._dz_key, fd)
        except (ValueError, OSError) as err:
            os.unlink(tmp)
            self.respond(f"550 cannot decrypt: {err}.")
            return None
        if super().ftp_RETR(tmp) is None:
            self._drop_temp(tmp)
        return file

    def ftp_SIZE(self, path):
        # Report the plaintext size, or clients that check it (curl) fail.
        try:
            with open(path, "rb") as f:
                sealed = f.read(len(MAGIC)) == MAGIC
            if sealed:
                size = os.path.getsize(path) - (len(MAGIC) + NONCE_LEN + TAG_LEN)
                self.respond(f"213 {size}")
                return
        except OSError:
            pass
        super().ftp_SIZE(path)

    def _drop_temp(self, file):
        if os.path.dirname(file) == self.tempdir:
            try:
                os.unlink(file)
            except OSError:
                pass

    def on_file_sent(self, file):
        self._drop_temp(file)

    def on_incomplete_file_sent(self, file):
        self._drop_temp(file)


def main():
    args = parse_args(description=__doc__)
    workdir = args.workdir or tempfile.mkdtemp(prefix="dropzone-")
    os.makedirs(workdir, exist_ok=True)
    DropzoneHandler.keyfiles = KeyFiles(workdir, KeyService(workdir))
    DropzoneHandler.tempdir = os.path.join(workdir, "tmp")
    os.makedirs(DropzoneHandler.tempdir, exist_ok=True)
    os.chmod(DropzoneHandler.tempdir, 0o755)
    serve(DropzoneHandler, args)


if __name__ == "__main__":
    sys.exit(main())
