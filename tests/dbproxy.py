"""
A loopback TCP proxy between netshare and PostgreSQL or MariaDB that can
lose the answer to one COMMIT, on purpose.

It forwards bytes both ways, in threads.  Armed with a trigger (bytes of a
statement, say C{b"INSERT INTO files"}) and a mode, it watches what clients
send; on the connection whose transaction sent the trigger, at that
transaction's C{COMMIT}:

 - C{"after"}: the COMMIT is forwarded, the server's answer is read and
   thrown away, and the connection is cut: the transaction committed and
   the client cannot know;
 - C{"before"}: the COMMIT is not forwarded and the connection is cut: the
   server rolls the transaction back;
 - C{"stall"}: the COMMIT is forwarded and the server's answer held for
   C{stall} seconds before it is passed on (a slow COMMIT).

One shot: after that the proxy only forwards.  How a COMMIT looks on the
wire, as the drivers send it:

 - PostgreSQL (psycopg 3): a simple-query message, C{Q}, length 11,
   C{COMMIT\\0};
 - MariaDB (PyMySQL): a COM_QUERY packet, length 7, sequence 0, C{0x03},
   C{COMMIT}.
"""

import select
import socket
import struct
import threading
import time

COMMITS = (
    b"Q" + struct.pack("!I", 11) + b"COMMIT\x00",  # PostgreSQL
    b"\x07\x00\x00\x00\x03COMMIT",
)  # MariaDB / MySQL


class CommitProxy:
    """
    @ivar port: where to connect instead of the database.
    @ivar fired: how many times the armed action happened (0 or 1).
    """

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._trigger = None
        self._mode = None
        self._stall = 0.0
        self.fired = 0
        self._threads = []
        self._socks = set()
        self._pumps = set()  # (client, server) of every open connection
        self._silenced = set()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)

    def arm(self, trigger: bytes, mode: str, stall: float = 0.0):
        assert mode in ("after", "before", "stall")
        with self._lock:
            self._trigger, self._mode, self._stall, self.fired = trigger, mode, stall, 0

    def disarm(self):
        with self._lock:
            self._trigger = None

    def silence(self):
        """From now on, connections open so far neither pass anything on nor
        close (a middlebox that silently stopped forwarding them); new ones
        work."""
        with self._lock:
            self._silenced.update(self._pumps)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True, name="commit-proxy")
        t.start()
        self._threads.append(t)

    def _accept(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.1)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                continue
            with self._lock:
                self._socks.update((client, upstream))
                self._pumps.add((client, upstream))
            self._spawn(self._pump, client, upstream)

    def _pump(self, client, server):
        seen = b""  # this connection's statements since its last COMMIT
        try:
            while not self._stop.is_set():
                with self._lock:
                    silenced = (client, server) in self._silenced
                if silenced:
                    time.sleep(0.1)  # hold both sockets, read nothing, send nothing
                    continue
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    if s is server:
                        client.sendall(data)
                        continue
                    action = self._watch(seen + data)
                    seen = (seen + data)[-(1 << 16) :]
                    if action is None:
                        server.sendall(data)
                        if any(c in seen for c in COMMITS) or b"ROLLBACK" in data:
                            seen = b""  # the transaction ended
                        continue
                    mode, stall = action
                    if mode == "before":
                        return  # cut, COMMIT unsent
                    server.sendall(data)
                    answer = self._read_answer(server)
                    if mode == "after":
                        return  # cut, answer lost
                    time.sleep(stall)  # a slow COMMIT
                    client.sendall(answer)
                    seen = b""
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._pumps.discard((client, server))
                self._silenced.discard((client, server))
            for s in (client, server):
                with self._lock:
                    self._socks.discard(s)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                s.close()

    def _watch(self, window):
        """(mode, stall) if this chunk holds the armed transaction's COMMIT."""
        with self._lock:
            if self._trigger is None or self._trigger not in window:
                return None
            if not any(c in window[window.find(self._trigger) :] for c in COMMITS):
                return None
            action = (self._mode, self._stall)
            self._trigger = None
            self.fired += 1
            return action

    @staticmethod
    def _read_answer(server, timeout=10):
        server.settimeout(timeout)
        try:
            return server.recv(1 << 16)
        finally:
            server.settimeout(None)

    def close(self):
        self._stop.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(10)
