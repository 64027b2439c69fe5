"""What every harness here needs of the processes it starts: they die with
their parent, and they listen on a loopback port nobody else has."""

import ctypes
import signal
import socket

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For `preexec_fn`: if the process that started this one dies (pytest,
    a harness), this one gets SIGTERM instead of lingering."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A loopback TCP port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
