"""
Replies written through to the socket (L{netshare.protocols.writethrough}):
sent in the same call while the transport holds nothing, handed to the
transport's own buffering otherwise, so bytes never change order and flow
control still pauses the producer of a connection whose reader stops.
Real TCP connections over loopback.
"""

import socket

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netshare.protocols import writethrough
from tests.inprocess import reactor


def wait_for(d, timeout):
    return d.addTimeout(timeout, reactor())


@implementer(IPushProducer)
class PauseWatcher:
    def __init__(self):
        self.paused = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class Writer(protocol.Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)


@defer.inlineCallbacks
def connected_pair():
    """A listening port, a blocking client socket, the server's protocol."""
    factory = protocol.Factory.forProtocol(Writer)
    factory.connected = defer.Deferred()
    port = reactor().listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
    server = yield wait_for(factory.connected, 10)
    return port, client, server


def read_exactly(sock, n):
    chunks, got = [], 0
    while got < n:
        b = sock.recv(min(1 << 20, n - got))
        assert b, "connection closed after %d of %d bytes" % (got, n)
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


@defer.inlineCallbacks
def close(port, client, server):
    client.close()
    server.transport.abortConnection()
    yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_short_write_goes_out_in_the_same_call():
    port, client, server = yield connected_pair()
    try:
        t = server.transport
        assert writethrough.can_write_through(t)
        writethrough.write(t, b"200 pong\r\n")
        # Nothing was left for the reactor to send: the bytes are already
        # in the client's socket, before the reactor runs again.
        assert writethrough.can_write_through(t)
        client.settimeout(5)
        assert read_exactly(client, 10) == b"200 pong\r\n"
    finally:
        yield close(port, client, server)


@pytest_twisted.inlineCallbacks
def test_bytes_keep_their_order_when_the_reader_stops_and_flow_control_still_pauses():
    port, client, server = yield connected_pair()
    try:
        t = server.transport
        watcher = PauseWatcher()
        t.registerProducer(watcher, True)
        # The client reads nothing: the socket fills, later writes wait in
        # the transport, and the writes after them must not overtake them.
        chunks = [(b"%08d" % i) * 1024 for i in range(4096)]  # 32 MiB in all
        direct = 0
        for c in chunks:
            if writethrough.can_write_through(t):
                direct += 1
            writethrough.write(t, c)
        assert direct >= 1  # the first ones went straight to the socket
        assert not writethrough.can_write_through(t)  # the rest waits in the transport
        assert watcher.paused >= 1  # past the transport's buffer limit: paused
        expected = b"".join(chunks)
        client.settimeout(10)
        got = yield wait_for(reactor_reading(client, len(expected)), 60)
        assert got == expected
        t.unregisterProducer()
    finally:
        yield close(port, client, server)


def reactor_reading(sock, n):
    """Read n bytes in a thread while the reactor keeps sending."""
    from twisted.internet import threads

    return threads.deferToThread(read_exactly, sock, n)


def test_other_transports_keep_their_own_write():
    t = StringTransport()
    assert not writethrough.can_write_through(t)
    writethrough.write(t, b"a")
    writethrough.write(t, b"b")
    assert t.value() == b"ab"


@pytest_twisted.inlineCallbacks
def test_a_closing_or_broken_connection_is_left_to_the_transport():
    port, client, server = yield connected_pair()
    try:
        t = server.transport
        client.close()
        # Whatever send() says now (a reset, or bytes taken into a buffer
        # nobody reads), write raises nothing and the transport decides.
        for _ in range(50):
            writethrough.write(t, b"x" * 65536)
        t.loseConnection()
        assert not writethrough.can_write_through(t)
        writethrough.write(t, b"after close")  # buffered or dropped, never raises
    finally:
        yield close(port, client, server)
