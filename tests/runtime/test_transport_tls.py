"""Mutual TLS on real TCP sockets (``_transport/tls.py``): frames both ways (16 MiB out of band
included), and every refusal: no client certificate, another CA's certificate, a plain dialer, a
plain listener; the cap on connections in their handshake and the drop of silent ones."""

from __future__ import annotations

import os
import pickle
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from monarch._core.errors import ConnectError, ProtocolError
from monarch._transport.base import TransportSettings
from monarch._transport.frame import Envelope, encode_frame
from monarch._transport.sockets import SocketTransport
from monarch._transport.tls import TlsConfig, TlsLink, tls_from_env, tls_from_monarch

from tests.runtime.test_transport_sockets import TOKEN, Loop, _hello
from tests.runtime.tls_certs import make_pki, openssl_available

pytestmark = pytest.mark.skipif(
    not openssl_available(), reason="the openssl command is not installed"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def lp() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.stop()


def _tls(pki: Path, leaf: str = "a", ca: str = "ca") -> TlsConfig:
    return TlsConfig(str(pki / f"{ca}.pem"), str(pki / f"{leaf}.pem"), str(pki / f"{leaf}.key"))


def _transport(
    lp: Loop, tls: TlsConfig | None, token: bytes | None = TOKEN, **settings: Any
) -> SocketTransport:
    return lp.call(
        lambda: SocketTransport(
            lp.loop,
            lp.on_frame,
            lp.on_close,
            token=token,
            settings=TransportSettings(**settings),
            tls=tls,
        )
    )


def _until(pred: Any, timeout_s: float = 10.0) -> bool:
    """Poll a counter the transport keeps (its changes notify nobody), bounded."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _closed(lp: Loop, link: Any) -> BaseException | None:
    assert lp.wait(lambda: any(c is link for c, _ in lp.closes), 15.0), "the link was not closed"
    return next(e for c, e in lp.closes if c is link)


@pytest.mark.parametrize("token", [TOKEN, None], ids=["tls+token", "tls-only"])
def test_tls_link_carries_frames_both_ways_with_a_16_mib_out_of_band_buffer(
    lp: Loop, pki: Path, token: bytes | None
) -> None:
    server, client = _transport(lp, _tls(pki, "a"), token), _transport(lp, _tls(pki, "b"), token)
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    big = os.urandom(16 << 20)
    link.send(_hello("from-client"))  # queued while TLS is being set up
    env = Envelope.new_message()
    env.kind = "hello"
    env.origin = "big"
    env.buffers = [len(big)]
    link.send(encode_frame(env, [memoryview(big)]))
    assert lp.wait(lambda: len(lp.frames) == 2, 30.0)
    assert [f[1].origin for f in lp.frames] == ["from-client", "big"]
    assert lp.frames[1][2] == [big]
    accepted = lp.links[0]
    assert isinstance(accepted, TlsLink) and isinstance(link, TlsLink)
    accepted.send(encode_frame(env, [memoryview(big)]))
    for i in range(100):  # a burst of small frames, coalesced into few records
        accepted.send(_hello(f"s{i}"))
    assert lp.wait(lambda: len(lp.frames) == 103, 30.0)
    assert lp.frames[2][0] is link and lp.frames[2][2] == [big]
    assert [f[1].origin for f in lp.frames[3:]] == [f"s{i}" for i in range(100)]
    assert lp.wait(lambda: link.flushed and accepted.flushed)
    lp.call(server.close)
    lp.call(client.close)


def test_unix_links_stay_plain_under_tls(lp: Loop, pki: Path, tmp_path: Path) -> None:
    server, client = _transport(lp, _tls(pki, "a")), _transport(lp, _tls(pki, "b"))
    lst = lp.call(lambda: server.listen(f"unix:{tmp_path}/l.sock", lp.on_link))
    link = client.connect(lst.address)
    link.send(_hello("u"))
    assert lp.wait(lambda: len(lp.frames) == 1)
    assert type(link) is not TlsLink and type(lp.links[0]) is not TlsLink
    lp.call(server.close)
    lp.call(client.close)


def _raw_tls_client(addr: str, ctx: ssl.SSLContext, payload: bytes) -> str:
    """Dial ``addr`` with a stdlib TLS client, send ``payload``; what ended it."""
    host, port = addr[4:].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10.0) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(payload)
                data = s.recv(100)
                return f"eof {data!r}"
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc}"


def test_a_peer_without_a_client_certificate_is_refused_and_nothing_is_decoded(
    lp: Loop, pki: Path
) -> None:
    server = _transport(lp, _tls(pki, "a"))
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(pki / "ca.pem"))  # trusts the server, presents nothing
    frame = b"".join(bytes(memoryview(b)) for b in _hello("no-cert"))
    how = _raw_tls_client(lst.address, ctx, frame)
    assert how.startswith("refused") and "certificate" in how, how
    assert _until(lambda: server.accepted_count == 0)
    assert not lp.frames and not lp.links
    lp.call(server.close)


def test_a_certificate_of_another_ca_is_refused_both_ways(lp: Loop, pki: Path) -> None:
    server = _transport(lp, _tls(pki, "a"))
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    # a dialer whose certificate another CA signed (it trusts ours, so only the listener refuses)
    stranger = _transport(
        lp, TlsConfig(str(pki / "ca.pem"), str(pki / "x.pem"), str(pki / "x.key"))
    )
    link = stranger.connect(lst.address)
    exc = _closed(lp, link)
    assert isinstance(exc, ConnectError) and lst.address in str(exc), exc
    # a listener whose certificate another CA signed: our dialer refuses it
    rogue = _transport(
        lp, TlsConfig(str(pki / "other.pem"), str(pki / "x.pem"), str(pki / "x.key"))
    )
    rlst = lp.call(lambda: rogue.listen("tcp:127.0.0.1:0", lp.on_link))
    client = _transport(lp, _tls(pki, "b"))
    link2 = client.connect(rlst.address)
    exc2 = _closed(lp, link2)
    assert isinstance(exc2, ConnectError) and "certificate verify failed" in str(exc2), exc2
    assert not lp.frames and not lp.links
    for t in (server, stranger, rogue, client):
        lp.call(t.close)


def test_a_plain_dialer_to_a_tls_listener_is_refused_and_decodes_nothing(
    lp: Loop, pki: Path
) -> None:
    server = _transport(lp, _tls(pki, "a"), auth_timeout_s=1.0)
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    host, port = lst.address[4:].rsplit(":", 1)
    # raw frame bytes (an envelope whose payload is a pickle) where a ClientHello belongs
    env = Envelope.new_message()
    env.kind = "hello"
    env.origin = "plain"
    payload = pickle.dumps(os.getpid)
    env.buffers = [len(payload)]
    frame = b"".join(bytes(memoryview(b)) for b in encode_frame(env, [payload]))
    with socket.create_connection((host, int(port)), timeout=10.0) as s:
        s.sendall(frame)
        answer = b""
        while chunk := s.recv(1000):  # a TLS alert at most, then the listener closes
            answer += chunk
        assert len(answer) < 100 and not answer.startswith(b"MNRCH")
    # a plain (token-only) transport dialing it is refused too
    plain = _transport(lp, None, connect_timeout_s=1.5)
    link = plain.connect(lst.address)
    assert isinstance(_closed(lp, link), ConnectError)
    assert _until(lambda: server.accepted_count == 0)
    assert not lp.frames and not lp.links
    lp.call(server.close)
    lp.call(plain.close)


def test_a_tls_dialer_to_a_plain_listener_is_refused(lp: Loop, pki: Path) -> None:
    server = _transport(lp, None)
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    client = _transport(lp, _tls(pki, "b"))
    link = client.connect(lst.address)
    exc = _closed(lp, link)
    assert isinstance(exc, ConnectError), exc
    assert not lp.frames and not lp.links
    lp.call(server.close)
    lp.call(client.close)


def test_tls_with_the_wrong_token_is_refused_before_any_frame(lp: Loop, pki: Path) -> None:
    server, client = _transport(lp, _tls(pki, "a")), _transport(lp, _tls(pki, "b"), token=b"wrong")
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    link.send(_hello("x"))
    assert isinstance(_closed(lp, link), ConnectError)
    assert not lp.frames and not lp.links
    lp.call(server.close)
    lp.call(client.close)


def test_an_oversized_envelope_over_tls_closes_that_link(lp: Loop, pki: Path) -> None:
    server, client = (
        _transport(lp, _tls(pki, "a"), max_envelope_bytes=4096),
        _transport(lp, _tls(pki, "b")),
    )
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    link = client.connect(lst.address)
    link.send(_hello("x" * 20000))
    assert lp.wait(lambda: len(lp.links) == 1)
    exc = _closed(lp, lp.links[0])
    assert isinstance(exc, ProtocolError), exc
    assert not lp.frames
    lp.call(server.close)
    lp.call(client.close)


@pytest.mark.parametrize("use_tls", [True, False], ids=["tls", "token"])
def test_silent_peers_are_dropped_after_auth_timeout_and_handshakes_are_capped(
    lp: Loop, pki: Path, use_tls: bool
) -> None:
    server = lp.call(
        lambda: SocketTransport(
            lp.loop, lp.on_frame, lp.on_close, token=TOKEN, settings=TransportSettings(auth_timeout_s=1.0),
            tls=_tls(pki, "a") if use_tls else None, max_handshaking=2,
        )
    )  # fmt: skip
    lst = lp.call(lambda: server.listen("tcp:127.0.0.1:0", lp.on_link))
    host, port = lst.address[4:].rsplit(":", 1)
    silent = [socket.create_connection((host, int(port)), timeout=10.0) for _ in range(2)]
    assert _until(lambda: server.handshaking == 2)
    third = socket.create_connection((host, int(port)), timeout=10.0)
    start = time.monotonic()
    assert third.recv(100) == b""  # refused at accept: closed with nothing sent
    assert time.monotonic() - start < 0.9 and _until(lambda: lst.refused_handshaking == 1)
    for s in silent:
        data = b""
        while chunk := s.recv(100):  # the token challenge at most (TLS: nothing), then EOF
            data += chunk
        assert len(data) in ((0,) if use_tls else (40,))
        assert time.monotonic() - start < 5.0
    assert _until(lambda: server.handshaking == 0 and server.accepted_count == 0)
    for s in [*silent, third]:
        s.close()
    assert not lp.links
    lp.call(server.close)


def test_monarch_ca_and_private_key_forms(pki: Path) -> None:
    both = tls_from_monarch(
        pki / "ca.pem", pki / "a-both.pem"
    )  # Path, one PEM with key + certificate
    assert both is not None and both.key is None and both.cert.endswith("a-both.pem")
    pair = tls_from_monarch(
        (pki / "ca.pem").read_bytes(), ((pki / "a.pem").read_bytes(), (pki / "a.key").read_bytes())
    )
    assert (
        pair is not None and os.stat(pair.key or "").st_mode & 0o077 == 0
    )  # PEM bytes: private files
    assert tls_from_monarch("trust_all_connections", None) == tls_from_env()
    with pytest.raises(ValueError, match="without private_key"):
        tls_from_monarch(str(pki / "ca.pem"), None)
    with pytest.raises(ValueError, match="needs a ca"):
        tls_from_monarch(None, str(pki / "a-both.pem"))
    with pytest.raises(ValueError, match="does not exist"):
        TlsConfig(str(pki / "nope.pem"), str(pki / "a.pem"))
    with pytest.raises(ValueError, match="cannot be loaded"):
        TlsConfig(
            str(pki / "ca.pem"), str(pki / "a.pem"), str(pki / "b.key")
        )  # a key of another certificate
    env = {"MONARCH_TLS_CA": str(pki / "ca.pem"), "MONARCH_TLS_CERT": str(pki / "a-both.pem")}
    assert tls_from_env(env) == TlsConfig(env["MONARCH_TLS_CA"], env["MONARCH_TLS_CERT"])
    with pytest.raises(ValueError, match="needs both"):
        tls_from_env({"MONARCH_TLS_CA": str(pki / "ca.pem")})
