"""TCP connections must prove the cluster token before any frame is accepted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from monarch._core.errors import ConnectError
from monarch._transport.channel import Listener, dial


@pytest.fixture
def listener() -> Iterator[tuple[Listener, list[Any]]]:
    loop = asyncio.new_event_loop()
    accepted: list[Any] = []
    ready = threading.Event()
    holder: list[Listener] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder.append(Listener(loop, lambda s, p: accepted.append((s, p)), addr="tcp:127.0.0.1:0", token=b"secret"))
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(5)
    yield holder[0], accepted
    loop.call_soon_threadsafe(holder[0].close)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    for s, _ in accepted:
        s.close()


def test_right_token_is_accepted(listener: tuple[Listener, list[Any]]) -> None:
    lst, accepted = listener
    sock = dial(lst.address, b"secret", timeout_s=5)
    try:
        for _ in range(100):
            if accepted:
                break
            threading.Event().wait(0.02)
        assert accepted
    finally:
        sock.close()


def test_wrong_token_is_refused_and_connection_closed(listener: tuple[Listener, list[Any]]) -> None:
    lst, accepted = listener
    # mutual authentication: the dialer learns at once that the listener refused its proof
    with pytest.raises(ConnectError):
        dial(lst.address, b"wrong", timeout_s=5)
    assert not accepted


def test_no_token_refuses_to_dial_tcp(listener: tuple[Listener, list[Any]]) -> None:
    with pytest.raises(ConnectError, match="token"):
        dial(listener[0].address, None, timeout_s=5)


def test_bad_address_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        dial("http://x", None)


def test_tcp_connections_carry_heartbeats_bounded_by_the_peer_timeout(
    listener: tuple[Listener, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket as sk

    monkeypatch.setenv("MONARCH_PEER_TIMEOUT_S", "2")
    sock = dial(listener[0].address, b"secret", timeout_s=5)
    try:
        assert sock.getsockopt(sk.SOL_SOCKET, sk.SO_KEEPALIVE) == 1
        assert sock.getsockopt(sk.IPPROTO_TCP, sk.TCP_USER_TIMEOUT) == 2000
        idle = sock.getsockopt(sk.IPPROTO_TCP, sk.TCP_KEEPIDLE)
        intvl = sock.getsockopt(sk.IPPROTO_TCP, sk.TCP_KEEPINTVL)
        cnt = sock.getsockopt(sk.IPPROTO_TCP, sk.TCP_KEEPCNT)
        assert idle + intvl * cnt <= 2
    finally:
        sock.close()
