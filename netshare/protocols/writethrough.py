"""
Replies sent at once: a write that goes to the socket in the same call.

Twisted's TCP transport never sends from C{write}: it buffers the bytes,
registers the socket for writability (an C{epoll_ctl}), sends on the next
reactor turn and unregisters (another C{epoll_ctl}).  For a command server
answering one short line per request that is three system calls and a poll
entry where one C{send} would do; at 100 connections of PINGs the two
C{epoll_ctl} were a fifth of the reactor thread's time (bench/peers.py,
py-spy).  L{write} sends at once when the transport has nothing buffered
(so the order of bytes cannot change) and hands what the socket did not
take, or any error, to the transport's own C{write}, which then buffers,
retries and reports exactly as before: flow control (C{pauseProducing} past
the buffer limit), connection-lost handling and C{loseConnection} after the
buffer drains are all still Twisted's.

Only for a plain TCP transport (C{twisted.internet.tcp.Connection} without
TLS): a TLS transport must encrypt first, and anything else (a test's
C{StringTransport}, a UNIX socket wrapper) keeps its own C{write}.  The
transport's buffer is read through attributes Twisted does not document
(C{dataBuffer}, C{offset}, C{_tempDataLen}); if a future Twisted lacks them
L{write} falls back to C{transport.write}.
"""

from typing import Any

from twisted.internet import tcp


def can_write_through(transport: Any) -> bool:
    """Whether C{transport} is plain TCP, connected, not closing, with
    nothing waiting in its buffer."""
    if not isinstance(transport, tcp.Connection) or transport.TLS:
        return False
    try:
        return bool(
            transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset
        )
    except AttributeError:  # a Twisted whose transport is built otherwise
        return False


def write(transport: Any, data: bytes) -> None:
    """C{transport.write(data)}, sending at once what the socket takes when
    that keeps the order (see the module docstring)."""
    if data and can_write_through(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or an error Twisted's write will meet and report
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)
