#!/usr/bin/env python3
"""
The bare Twisted reference server of bench/peers.py, run as its own process.

A `twisted.protocols.basic.LineReceiver` (delimiter LF, TCP_NODELAY as redis
and netshare set it) that answers every line it receives with `200 pong`:
the floor under netshare's per-command path (no parsing, no Deferreds, no
history, no log event).  It prints `PORT <n>` once it listens on a free
loopback port, and stops by itself after --lifetime seconds (a bound in case
its parent is killed; peers.py also asks the kernel to SIGTERM it when the
parent dies, and stops it by PID at the end).

Usage (peers.py does this):  python bench/peers_refs.py pong [--lifetime 7200]
"""

import argparse
import resource
import sys


def serve_pong(lifetime):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class Pong(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 65536

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)

        def lineReceived(self, line):
            self.transport.write(b"200 pong\r\n")

    port = reactor.listenTCP(0, Factory.forProtocol(Pong), interface="127.0.0.1", backlog=4096)
    print("PORT", port.getHost().port, flush=True)
    reactor.callLater(lifetime, reactor.stop)
    reactor.run()


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("server", choices=["pong"])
    ap.add_argument("--lifetime", type=float, default=7200.0)
    args = ap.parse_args()
    if args.server == "pong":
        serve_pong(args.lifetime)


if __name__ == "__main__":
    sys.exit(main())
