"""The tests' port chooser: ports that no process binding port 0 can be handed between choice and use."""

from __future__ import annotations

import socket
from contextlib import ExitStack

from tests.raycli import _LOW_PORT, _ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    ports = free_ports(12)
    assert len(set(ports)) == 12
    low, high = _ephemeral_range()
    assert all(p >= _LOW_PORT and not low <= p <= high for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_chosen(monkeypatch):
    """A range of 150 ports with all but the last five held: only a free one comes back."""
    import tests.raycli as raycli

    monkeypatch.setattr(raycli, "_ephemeral_range", lambda: (_LOW_PORT + 150, 65535))
    with ExitStack() as stack:
        held = set()
        for port in range(_LOW_PORT, _LOW_PORT + 145):
            s = stack.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            s.listen()
            held.add(port)
        for _ in range(5):
            (port,) = raycli.free_ports(1)
            assert port not in held and _LOW_PORT <= port < _LOW_PORT + 150
