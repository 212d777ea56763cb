"""
Downloads of unprotected files over plain TCP are copied by the kernel
(C{os.sendfile}, L{netshare.protocols.sendfile}); protected files, TLS and
C{--sendfile no} keep the producer.  Same bytes on the wire either way, and
a client that goes away mid-copy leaves no thread, copy or descriptor.
"""

import os

import pytest_twisted

from netshare.protocols.sendfile import KernelCopy
from tests.inprocess import reactor, wait_for
from tests.test_files_protocol import client, get, put, raw_client, serve, sha

MiB = 2**20


@pytest_twisted.inlineCallbacks
def test_unprotected_downloads_are_copied_by_the_kernel(runtime):
    srv, _ = yield serve(runtime)
    alice = yield client(srv, "alice")
    data = os.urandom(20 * MiB + 12345)  # several chunks and a partial one
    assert (yield put(alice, "big.bin", data)).code == 226
    r, got = yield get(alice, "big.bin")
    assert (r.code, got == data) == (226, True)
    r, got = yield get(alice, "big.bin", "offset=%d" % (9 * MiB + 7))
    assert (r.code, got == data[9 * MiB + 7 :]) == (226, True)
    assert srv.factory.stats.sendfile_downloads == 2
    assert srv.factory.stats.bytes_out >= len(data) * 2 - 9 * MiB
    # Pipelined after a kernel copy: answered in order, on the same connection.
    assert (yield alice.command("CHECKSUM big.bin")).text.endswith(sha(data))


@pytest_twisted.inlineCallbacks
def test_protected_files_and_the_switch_keep_the_producer(make_runtime):
    rt = make_runtime(sendfile=False)
    srv, _ = yield serve(rt)
    alice = yield client(srv, "alice")
    assert (yield put(alice, "plain", b"p" * 1000)).code == 226
    r, got = yield get(alice, "plain")
    assert (r.code, got) == (226, b"p" * 1000)
    assert srv.factory.stats.sendfile_downloads == 0

    rt2 = make_runtime()
    srv2, _ = yield serve(rt2)
    bob = yield client(srv2, "bob")
    assert (yield put(bob, "vault", b"secret" * 1000, "password=open sesame")).code == 226
    r, got = yield get(bob, "vault", "password=open sesame")
    assert (r.code, got) == (226, b"secret" * 1000)
    assert srv2.factory.stats.sendfile_downloads == 0  # decrypted: not the file's bytes


@pytest_twisted.inlineCallbacks
def test_a_client_gone_mid_copy_leaves_nothing_running(runtime):
    srv, app = yield serve(runtime)
    alice = yield client(srv, "alice")
    data = os.urandom(64 * MiB)
    assert (yield put(alice, "huge.bin", data)).code == 226
    raw = yield raw_client(srv, "bob")
    raw.send(b"DOWNLOAD huge.bin\r\n")  # and never read the body
    yield wait_for(lambda: srv.factory.stats.sendfile_downloads == 1, what="copy started")
    yield wait_for(lambda: KernelCopy.running == 1, what="copy running")
    raw.transport.abortConnection()
    yield wait_for(lambda: KernelCopy.running == 0, what="copy stopped")
    # The server goes on; the blob is intact and can be sent again.
    r, got = yield get(alice, "huge.bin")
    assert (r.code, len(got), got == data) == (226, len(data), True)
    assert KernelCopy.running == 0
    yield wait_for(lambda: not reactor().getThreadPool().working, what="threads idle")
