#!/usr/bin/env python3
"""Stock pyftpdlib as a benchmark peer: TLS_FTPHandler (explicit FTPS
optional, plain FTP allowed), UnixAuthorizer (the system account's shadow
hash checked with crypt(3), files accessed as that user), the async
single-process FTPServer. Nothing is encrypted at rest.

Started by bench/run; bench/original_design.py builds on serve() below.
"""

import argparse
import logging
import sys
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

from OpenSSL import SSL  # noqa: E402
from pyftpdlib.authorizers import UnixAuthorizer  # noqa: E402
from pyftpdlib.handlers import TLS_FTPHandler  # noqa: E402
from pyftpdlib.servers import FTPServer  # noqa: E402


def parse_args(argv=None, description=__doc__):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--passive", required=True, help="LOW-HIGH")
    p.add_argument("--user", required=True, help="system account allowed to log in")
    p.add_argument("--extra-users", default=None,
                   help="file with more system accounts allowed to log in, one per line, "
                        "sharing --root")
    p.add_argument("--root", required=True, help="the user's FTP root")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--max-cons", type=int, default=5000)
    p.add_argument("--log", default=None, help="log file (default stderr)")
    p.add_argument("--tls-max", choices=["1.2", "1.3"], default="1.3",
                   help="highest TLS version (1.2: curl's uploads are cut short under "
                        "TLS 1.3, see BENCHMARKS.md)")
    p.add_argument("--workdir", default=None, help="private folder (original design)")
    return p.parse_args(argv)


def serve(handler_base, args):
    """Run an FTPServer with handler_base configured from args."""
    logging.basicConfig(
        filename=args.log,
        level=logging.INFO,
        format="[%(asctime)s] %(message)s",
    )
    users = [args.user]
    if args.extra_users:
        with open(args.extra_users) as f:
            users += [line.strip() for line in f if line.strip()]
    authorizer = UnixAuthorizer(
        allowed_users=users,
        require_valid_shell=True,
        global_perm="elradfmwMT",
    )
    for user in users:
        authorizer.override_user(user, homedir=args.root)

    class Handler(handler_base):
        pass

    Handler.authorizer = authorizer
    Handler.certfile = args.cert
    Handler.keyfile = args.key
    if args.tls_max == "1.2":
        Handler.ssl_options = handler_base.ssl_options | SSL.OP_NO_TLSv1_3
    Handler.tls_control_required = False
    Handler.tls_data_required = False
    low, high = (int(x) for x in args.passive.split("-"))
    Handler.passive_ports = range(low, high + 1)
    Handler.permit_foreign_addresses = False
    host, port = args.listen.rsplit(":", 1)
    server = FTPServer((host, int(port)), Handler, backlog=1024)
    server.max_cons = args.max_cons
    server.max_cons_per_ip = 0
    print(f"ready on {host}:{server.address[1]}", flush=True)
    try:
        server.serve_forever(handle_exit=True)
    finally:
        server.close_all()


def main():
    serve(TLS_FTPHandler, parse_args())


if __name__ == "__main__":
    sys.exit(main())
