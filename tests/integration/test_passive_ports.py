"""The passive port range is a pool that transfers give back: a range of N
ports serves more than N transfers in a row."""

import pytest

from dvclients import ftp_plain, payload, retr, stor


@pytest.mark.parametrize("who_closes", [
    pytest.param("server-download"),
    "client-upload",
])
def test_passive_ports_are_reused(dropvault, passive_ports, who_closes):
    server = dropvault(ftp_passive_ports=passive_ports(3))
    data = payload(70_000)
    with ftp_plain(server) as ftp:
        stor(ftp, "p.bin", data)
        # Each transfer takes a port of the three. After a download the
        # server closes first, so the port it used waits in TIME_WAIT on its
        # side; a listener must still be able to bind it.
        for i in range(8):
            if who_closes == "server-download":
                assert retr(ftp, "p.bin") == data
            else:
                stor(ftp, f"u{i}.bin", data)
        assert len(ftp.nlst()) >= 1
