"""fraudguard.stack.free_port: ports for servers started next, never from the kernel's ephemeral range, where
any outgoing connection could take the port as its source before the server binds it."""

from __future__ import annotations

import socket

from fraudguard.stack import ephemeral_port_range, free_port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_free_port_is_bindable_and_outside_the_kernels_ephemeral_range():
    low, high = ephemeral_port_range()
    ports = [free_port() for _ in range(20)]
    assert all(not low <= port <= high for port in ports), (ports, (low, high))
    assert all(_bindable(port) for port in ports)


def test_free_port_skips_a_bound_port_and_the_ports_promised_to_other_servers():
    first = free_port(within=(23000, 23999))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        # The range holds the bound port and two promised ones: only its fourth port is left.
        promised = [port for port in range(first + 1, first + 3)]
        picked = free_port(within=(first, first + 3), avoid=promised)
        assert picked == first + 3 or not _bindable(first + 3)
        # No candidate at all: any free port (bind(0)), never the bound one.
        assert free_port(within=(first, first)) != first
