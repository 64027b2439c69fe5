"""A real SoftHSM2 token for the PKCS#11 tests, in one place for the Rust
tests (crates/core/tests/common/softhsm.rs runs this file) and pytest
(test_pkcs11.py imports it).

`init(dir, label, keys)` makes a private SoftHSM configuration in `dir`
(its own token folder, so nothing touches /etc/softhsm or another test's
tokens), creates a token `label` with user PIN and SO PIN, and generates an
RSA-3072 key pair per key label with pkcs11-tool (private key sensitive and
not extractable, usable for decrypt; public key for encrypt). What it made
is written to `dir/softhsm.json` and returned:

    {"conf": ".../softhsm2.conf", "module": "/usr/lib/softhsm/libsofthsm2.so",
     "pin": "...", "so_pin": "...", "token_label": "...", "keys": [...],
     "token_folder": ".../tokens/<uuid>", "away_folder": ".../token-away"}

Every process that loads the module must have SOFTHSM2_CONF=conf in its
environment (SoftHSM reads it once, at C_Initialize).

`remove(info)` takes the token away (moves its folder out of the token
folder, as unplugging it would), `restore(info)` puts it back;
`keygen(info, label)` and `delete_key(info, label)` add and remove key
pairs. The CLI does the same:

    python3 tests/integration/softhsm.py init --dir D --label L --key K [--key K2] [--pin P]
    python3 tests/integration/softhsm.py keygen --dir D --key K
    python3 tests/integration/softhsm.py delete-key --dir D --key K
    python3 tests/integration/softhsm.py remove --dir D
    python3 tests/integration/softhsm.py restore --dir D

`init` prints the JSON on stdout. The tools come from the Debian packages
softhsm2 and opensc (scripts/test installs them); a missing one fails with
a message saying which to install.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_PIN = "4711-user-pin"
DEFAULT_SO_PIN = "0815-so-pin"
TOOL_TIMEOUT = 120
INFO_FILE = "softhsm.json"


class SoftHsmError(RuntimeError):
    """A tool is missing or failed."""


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SoftHsmError(
            f"{tool} not found: install the Debian package {package} "
            "(apt-get install softhsm2 opensc; scripts/test does)")
    return path


def _run(info_or_conf, args: list[str]) -> str:
    conf = info_or_conf["conf"] if isinstance(info_or_conf, dict) else str(info_or_conf)
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    if proc.returncode != 0:
        # The arguments hold the PINs of a throwaway token only.
        raise SoftHsmError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def _pkcs11_tool(info: dict, args: list[str]) -> str:
    tool = _need("pkcs11-tool", "opensc")
    return _run(info, [tool, "--module", info["module"], "--token-label", info["token_label"],
                       "--login", "--pin", info["pin"], *args])


def init(directory: pathlib.Path | str, label: str, keys: list[str],
         pin: str = DEFAULT_PIN, so_pin: str = DEFAULT_SO_PIN) -> dict:
    """A fresh token `label` holding one RSA-3072 key pair per `keys`."""
    util = _need("softhsm2-util", "softhsm2")
    _need("pkcs11-tool", "opensc")
    if not pathlib.Path(MODULE).exists():
        raise SoftHsmError(f"{MODULE} missing: install the Debian package softhsm2")
    d = pathlib.Path(directory).resolve()
    tokens = d / "tokens"
    if tokens.exists():
        shutil.rmtree(tokens)
    tokens.mkdir(parents=True)
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\n"
                    "objectstore.backend = file\n"
                    "log.level = ERROR\n"
                    "slots.removable = false\n")
    info = {
        "conf": str(conf),
        "module": MODULE,
        "pin": pin,
        "so_pin": so_pin,
        "token_label": label,
        "keys": [],
        "away_folder": str(d / "token-away"),
    }
    _run(info, [util, "--init-token", "--free", "--label", label,
                "--pin", pin, "--so-pin", so_pin])
    folders = [p for p in tokens.iterdir() if p.is_dir()]
    if len(folders) != 1:
        raise SoftHsmError(f"expected one token folder in {tokens}, found {folders}")
    info["token_folder"] = str(folders[0])
    for key in keys:
        keygen(info, key)
    _save(d, info)
    return info


def keygen(info: dict, key: str) -> None:
    """A new RSA-3072 key pair labelled `key` (decrypt/encrypt only)."""
    info["next_id"] = info.get("next_id", 0) + 1
    key_id = f"{info['next_id']:02x}"
    _pkcs11_tool(info, ["--keypairgen", "--key-type", "rsa:3072", "--label", key,
                        "--id", key_id, "--usage-decrypt"])
    info["keys"].append(key)


def delete_key(info: dict, key: str) -> None:
    """Destroys both halves of the key pair labelled `key`."""
    for kind in ("privkey", "pubkey"):
        _pkcs11_tool(info, ["--delete-object", "--type", kind, "--label", key])
    info["keys"] = [k for k in info["keys"] if k != key]


def remove(info: dict) -> None:
    """Takes the token away: its folder leaves the token folder."""
    os.rename(info["token_folder"], info["away_folder"])


def restore(info: dict) -> None:
    """Puts the token back where `remove` took it from."""
    os.rename(info["away_folder"], info["token_folder"])


def load(directory: pathlib.Path | str) -> dict:
    """What `init` made in `directory`."""
    return json.loads((pathlib.Path(directory) / INFO_FILE).read_text())


def _save(directory: pathlib.Path, info: dict) -> None:
    (directory / INFO_FILE).write_text(json.dumps(info))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="make a token with key pairs; print its JSON")
    p.add_argument("--dir", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--key", action="append", default=[])
    p.add_argument("--pin", default=DEFAULT_PIN)
    p.add_argument("--so-pin", default=DEFAULT_SO_PIN)
    for name in ("keygen", "delete-key"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True)
        p.add_argument("--key", required=True)
    for name in ("remove", "restore"):
        sub.add_parser(name).add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            info = init(args.dir, args.label, args.key, args.pin, args.so_pin)
            print(json.dumps(info), flush=True)
            return 0
        info = load(args.dir)
        if args.command == "keygen":
            keygen(info, args.key)
        elif args.command == "delete-key":
            delete_key(info, args.key)
        elif args.command == "remove":
            remove(info)
        else:
            restore(info)
        _save(pathlib.Path(args.dir), info)
        return 0
    except SoftHsmError as e:
        print(f"softhsm.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
