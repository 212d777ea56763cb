"""
The files service core (netshare.services.files): name rules, the blob store (upload
sink with backpressure, durability, abort, sweep; download producer), the
chunked AES-GCM format, the password lockout, and the FilesService over a
real FileStore/DBPool.
"""

import hashlib
import os
import tracemalloc

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from netshare.errors import (
    BadArguments,
    BadCredentials,
    Conflict,
    InsufficientStorage,
    IntegrityFailure,
    LimitExceeded,
    NameNotAllowed,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from netshare.services.accounts import Caller
from netshare.services.files import blobs, crypto, lockout, names
from netshare.services.files import upload as upload_side
from netshare.services.files.download import DownloadStopped
from netshare.services.files.service import FilesService
from netshare.storage.accounts import Account
from netshare.storage.files import FileStore

TIMEOUT = 20
CHUNK = crypto.ENC_CHUNK
FAST_KDF = (2**10, 8, 1)


def _reactor():
    from twisted.internet import reactor

    return reactor


def wait(d, timeout=TIMEOUT):
    """Every wait in these tests has a timeout."""
    return d.addTimeout(timeout, _reactor())


def turn():
    """Let the reactor run once (thread callbacks are delivered)."""
    return task.deferLater(_reactor(), 0, lambda: None)


@defer.inlineCallbacks
def settle(clock, deferreds, until=None, timeout=TIMEOUT):
    """Run until every Deferred has fired (or C{until()} is true): the
    reactor delivers database results, and the service's L{task.Clock} is
    moved on to each wait as soon as nothing else can happen."""
    until = until or (lambda: all(d.called for d in deferreds))
    for _ in range(int(timeout / 0.01)):
        if until():
            return
        yield task.deferLater(_reactor(), 0.01, lambda: None)
        calls = clock.getDelayedCalls()
        if calls and not until():
            clock.advance(max(0, min(c.getTime() for c in calls) - clock.seconds()))
    raise AssertionError("not settled within %s s" % (timeout,))


@defer.inlineCallbacks
def advance_once_waiting(clock, seconds=None, timeout=TIMEOUT):
    """As soon as something waits on the service's L{task.Clock} (a throttled
    attempt, after its database round trip), advance it by C{seconds}, or
    (None) just to when the first wait is over.  @return: the advance."""
    for _ in range(int(timeout / 0.01)):
        calls = clock.getDelayedCalls()
        if calls:
            if seconds is None:
                seconds = min(c.getTime() for c in calls) - clock.seconds()
            clock.advance(seconds)
            return seconds
        yield task.deferLater(_reactor(), 0.01, lambda: None)
    raise AssertionError("nothing waited on the clock within %s s" % (timeout,))


class FakeKDF:
    """Same signature as KDFPool.derive; synchronous scrypt."""

    def __init__(self):
        self.calls = 0

    def derive(self, password, salt, n, r, p, length=32, source=None):
        self.calls += 1
        return defer.succeed(
            hashlib.scrypt(
                password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=64 * 1024 * 1024
            )
        )


class ManualPool:
    """A ThreadPool stand-in whose jobs run only when the test says so, in
    the test's thread: makes the sink's flow control deterministic."""

    def __init__(self):
        self.jobs = []

    def callInThread(self, fn, *args, **kw):
        self.jobs.append(lambda: fn(*args, **kw))

    def callInThreadWithCallback(self, onResult, fn, *args, **kw):
        def job():
            try:
                result = fn(*args, **kw)
            except BaseException:
                from twisted.python.failure import Failure

                onResult(False, Failure())
            else:
                onResult(True, result)

        self.jobs.append(job)

    def run_all(self):
        while self.jobs:
            self.jobs.pop(0)()


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


@implementer(IPushProducer)
class Feeder:
    """Plays the socket: writes chunks into a sink each reactor turn while
    not paused, like a transport honouring pauseProducing."""

    def __init__(self, sink, total, chunk=64 * 1024, per_turn=8, seed=b"x"):
        self.sink = sink
        self.total = total
        self.chunk = chunk
        self.per_turn = per_turn
        self.block = hashlib.sha256(seed).digest() * (chunk // 32)
        self.sent = 0
        self.sha = hashlib.sha256()
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.peak_queued = 0
        self.call = None
        self.done = defer.Deferred()

    def start(self):
        self.sink.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self):
        if self.call is None and self.sent < self.total:
            self.call = _reactor().callLater(0, self._tick)

    def _tick(self):
        self.call = None
        for _ in range(self.per_turn):
            if self.paused or self.sent >= self.total:
                break
            n = min(self.chunk, self.total - self.sent)
            data = (self.sent.to_bytes(8, "big") + self.block)[:n]
            self.sha.update(data)
            self.sent += n
            self.sink.write(data)
            self.peak_queued = max(self.peak_queued, self.sink.queued)
        if self.sent >= self.total:
            self.sink.unregisterProducer()
            self.done.callback(None)
        elif not self.paused:
            self._schedule()

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1
        self._schedule()

    def stopProducing(self):
        pass


@implementer(IConsumer)
class Collector:
    """A consumer that pulls from a pull producer once per reactor turn."""

    def __init__(self):
        self.chunks = []
        self.producer = None
        self.call = None

    def registerProducer(self, producer, streaming):
        assert not streaming
        self.producer = producer
        self.call = _reactor().callLater(0, self._pull)

    def _pull(self):
        self.call = None
        if self.producer is not None:
            self.producer.resumeProducing()
        if self.producer is not None:
            self.call = _reactor().callLater(0, self._pull)

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.chunks.append(data)

    def data(self):
        return b"".join(self.chunks)

    def close(self):
        if self.call is not None and self.call.active():
            self.call.cancel()


@pytest.fixture
def store(tmp_path):
    s = blobs.BlobStore(str(tmp_path / "files"))
    yield s
    s.stop()


def listing(store):
    """Every file under the store (relative paths)."""
    out = []
    for base, _, found in os.walk(store.root):
        out += [os.path.relpath(os.path.join(base, n), store.root) for n in found]
    return sorted(out)


def upload(store, data, sha=None, encryption=None, pieces=4):
    sink = store.open_upload(len(data), sha, encryption)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        sink.write(data[i : i + step])
    return wait(sink.finish())


def download(store, blob_id, offset=0, key=None, expected_size=None):
    reader = store.open_download(blob_id, offset, key, expected_size)
    c = Collector()
    d = wait(reader.beginFileTransfer(c))

    def done(result):
        c.close()
        return result

    d.addBoth(done)
    return reader, c, d


# ---------------------------------------------------------------- names

BAD_NAMES = [
    ("../../etc/passwd", "/"),
    ("..", ". or .."),
    (".", ". or .."),
    ("a/b", "/"),
    ("a\\b", "\\"),
    ("..\\..\\x", "\\"),
    ("/etc", "/"),
    ("C:\\x", "\\"),
    ("a\x00b", "control"),
    ("a\x07b", "control"),
    ("line\nfeed", "control"),
    ("esc\x1b[31m", "control"),
    ("del\x7f", "control"),
    ("c1\x85", "control"),
    ("evil\u202etxt.exe", "control"),
    ("iso\u2066late", "control"),
    ("ls\u2028x", "control"),
    (" lead", "space"),
    ("trail ", "space"),
    ("nbsp\u00a0", "space"),
    ("", "empty"),
    ("a" * 256, "255 bytes"),
    ("\u00e9" * 128, "255 bytes"),
    ("\u20ac" * 86, "255 bytes"),
    ("x" * 4096, "255 bytes"),
    ("lone\udcff", "UTF-8"),
]


@pytest.mark.parametrize("name,why", BAD_NAMES)
def test_bad_names_are_553(name, why):
    with pytest.raises(NameNotAllowed) as e:
        names.normalize_name(name)
    assert e.value.code == 553
    assert why in e.value.text


@pytest.mark.parametrize(
    "name",
    [
        "a" * 255,
        "\u00e9" * 127 + "a",
        "r\u00e9sum\u00e9.txt",
        "trailing.",
        "CON",
        "NUL",
        "%2e%2e%2f",
        "...",
        "a b",
        "\U0001f469\u200d\U0001f4bb",
        "store_evil",
        "\u65e5\u672c",
    ],
)
def test_good_names(name):
    assert names.normalize_name(name) == name


def test_255_bytes_counted_after_nfc():
    nfd = "e\u0301" * 127 + "a"  # 382 bytes as NFD, 255 as NFC
    assert len(nfd.encode()) > 255
    assert names.normalize_name(nfd) == "\u00e9" * 127 + "a"


def test_nfc_and_nfd_spellings_share_a_key():
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert nfc != nfd
    assert names.normalize_name(nfd) == nfc
    assert names.name_key(nfc) == names.name_key(nfd) == names.name_key(names.normalize_name(nfd))


def test_keys_are_case_insensitive():
    assert names.name_key("Report.TXT") == names.name_key("report.txt") == "report.txt"
    assert names.name_key("CAF\u00c9") == names.name_key("cafe\u0301")
    assert names.name_key("Stra\u00dfe") == names.name_key("STRASSE")
    assert names.name_key("a.txt") != names.name_key("b.txt")


def test_key_of_longest_name_fits_the_column():
    name = "\u00df" * 127  # 254 bytes; folds to 254 characters "ss"...
    assert len(names.name_key(names.normalize_name(name))) <= 255


@pytest.mark.parametrize(
    "text", ["-1", "1e3", "+5", " 5", "5 ", "", "0x10", "\u0663", "1" * 21, "1.0"]
)
def test_parse_size_refuses(text):
    with pytest.raises(BadArguments) as e:
        names.parse_size(text)
    assert e.value.code == 501


def test_parse_size_accepts():
    assert names.parse_size("0") == 0
    assert names.parse_size("0123") == 123
    assert names.parse_size(str(2**63)) == 2**63  # refused later by the size limit (552)


# ---------------------------------------------------------------- upload


@pytest_twisted.inlineCallbacks
def test_upload_round_trip(store):
    data = os.urandom(300_000)
    stored = yield upload(store, data, hashlib.sha256(data).hexdigest().upper())
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.enc_meta is None
    path = store.path_of(stored.blob_id)
    with open(path, "rb") as f:
        assert f.read() == data
    assert listing(store) == [os.path.relpath(path, store.root)]
    assert os.stat(path).st_mode & 0o777 == 0o600


@pytest_twisted.inlineCallbacks
def test_empty_upload(store):
    stored = yield upload(store, b"")
    assert stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert os.path.getsize(store.path_of(stored.blob_id)) == 0


@pytest_twisted.inlineCallbacks
def test_backpressure_pauses_and_resumes_the_producer(tmp_path):
    pool = ManualPool()
    store = blobs.BlobStore(str(tmp_path / "s"), threadpool=pool, high_water=64 * 1024)
    data = os.urandom(160 * 1024)
    sink = store.open_upload(len(data))
    producer = RecordingProducer()
    sink.registerProducer(producer, True)
    for i in range(0, 96 * 1024, 32 * 1024):
        sink.write(data[i : i + 32 * 1024])
    assert producer.calls == ["pause"]  # 96 KiB queued > 64 KiB
    assert sink.paused and sink.queued == 96 * 1024
    sink.write(data[96 * 1024 : 128 * 1024])  # more while paused: no second pause
    assert producer.calls == ["pause"]
    pool.run_all()  # the worker drains the queue
    yield turn()
    assert producer.calls == ["pause", "resume"]
    assert not sink.paused and sink.queued == 0
    sink.write(data[128 * 1024 :])
    d = wait(sink.finish())
    pool.run_all()
    stored = yield d
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    with open(store.path_of(stored.blob_id), "rb") as f:
        assert f.read() == data


@pytest_twisted.inlineCallbacks
def test_finish_resumes_a_paused_producer(tmp_path):
    """The last write may pause the socket; the sink must not leave it so."""
    pool = ManualPool()
    store = blobs.BlobStore(str(tmp_path / "s"), threadpool=pool, high_water=1024)
    sink = store.open_upload(4096)
    producer = RecordingProducer()
    sink.registerProducer(producer, True)
    sink.write(b"x" * 4096)
    assert producer.calls == ["pause"]
    d = wait(sink.finish())
    assert producer.calls == ["pause", "resume"]
    pool.run_all()
    yield d


@pytest_twisted.inlineCallbacks
def test_pull_producer_feeds_the_sink(tmp_path):
    """A pull producer (FileSender) is asked for more while the queue has room."""
    import io

    from twisted.protocols.basic import FileSender

    store = blobs.BlobStore(str(tmp_path / "s"), high_water=64 * 1024)
    try:
        data = os.urandom(1024 * 1024 + 7)
        sink = store.open_upload(len(data))
        yield wait(FileSender().beginFileTransfer(io.BytesIO(data), sink))
        stored = yield wait(sink.finish())
        with open(store.path_of(stored.blob_id), "rb") as f:
            assert f.read() == data
    finally:
        store.stop()


@pytest_twisted.inlineCallbacks
def test_streaming_upload_memory_stays_flat(tmp_path):
    """A 48 MiB upload through a producer that honours pause: the queue never
    exceeds the high-water mark by more than one chunk, Python allocations
    stay far below the file size, and the content is right."""
    store = blobs.BlobStore(str(tmp_path / "s"), high_water=1024 * 1024)
    try:
        total = 48 * 1024 * 1024
        sink = store.open_upload(total)
        feeder = Feeder(sink, total)
        tracemalloc.start()
        try:
            yield wait(feeder.start(), 60)
            stored = yield wait(sink.finish(), 60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert feeder.peak_queued <= 1024 * 1024 + feeder.chunk
        assert peak < 12 * 1024 * 1024
        assert feeder.pauses == feeder.resumes
        assert stored.sha256 == feeder.sha.hexdigest()
        assert os.path.getsize(store.path_of(stored.blob_id)) == total
    finally:
        store.stop()


@pytest_twisted.inlineCallbacks
def test_sha256_mismatch_leaves_nothing(store):
    data = b"hello world" * 1000
    with pytest.raises(IntegrityFailure) as e:
        yield upload(store, data, "0" * 64)
    assert e.value.code == 554 and e.value.text == "checksum mismatch"
    assert listing(store) == []


@pytest_twisted.inlineCallbacks
def test_short_body_is_size_mismatch(store):
    sink = store.open_upload(1000)
    sink.write(b"x" * 999)
    with pytest.raises(IntegrityFailure) as e:
        yield wait(sink.finish())
    assert "size mismatch" in e.value.text
    assert listing(store) == []


@pytest_twisted.inlineCallbacks
def test_long_body_is_size_mismatch(store):
    sink = store.open_upload(1000)
    sink.write(b"x" * 600)
    sink.write(b"x" * 600)
    assert sink.received == 1000
    with pytest.raises(IntegrityFailure):
        yield wait(sink.finish())
    assert listing(store) == []


@pytest_twisted.inlineCallbacks
def test_abort_leaves_nothing(store):
    sink = store.open_upload(10 * 1024 * 1024)
    for _ in range(40):
        sink.write(os.urandom(64 * 1024))
    yield wait(sink.abort())
    assert listing(store) == []
    sink.write(b"late data is ignored")
    with pytest.raises(RuntimeError):
        yield sink.finish()
    assert listing(store) == []


@pytest_twisted.inlineCallbacks
def test_disk_full_is_452_and_leaves_nothing(store, monkeypatch):
    import errno as errno_mod

    def full(fd, data):
        raise OSError(errno_mod.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload_side, "write_all", full)
    sink = store.open_upload(3000)
    producer = RecordingProducer()
    sink.registerProducer(producer, True)
    sink.write(b"a" * 1000)
    for _ in range(50):  # wait (bounded) for the worker to fail
        if sink._error is not None:
            break
        yield task.deferLater(_reactor(), 0.02, lambda: None)
    sink.write(b"b" * 2000)  # the rest of the body is consumed, discarded
    with pytest.raises(InsufficientStorage) as e:
        yield wait(sink.finish())
    assert e.value.code == 452
    assert listing(store) == []


def test_sweep_removes_stale_temporaries_only(tmp_path):
    pool = ManualPool()
    store = blobs.BlobStore(str(tmp_path / "s"), threadpool=pool)
    for name in ("0" * 32 + ".part", "junk"):
        with open(os.path.join(store.tmp_dir, name), "wb") as f:
            f.write(b"stale")
    live = store.open_upload(100)
    live.write(b"x" * 10)
    pool.run_all()  # the live temp file now exists
    assert os.path.exists(os.path.join(store.tmp_dir, live.blob_id + ".part"))
    assert store.sweep() == 2
    assert os.listdir(store.tmp_dir) == [live.blob_id + ".part"]
    live.abort()
    pool.run_all()


# ---------------------------------------------------------------- resumable uploads


def partial_meta(size, enc_meta=None):
    from netshare.services.files.partials import PartialMeta

    return PartialMeta(7, "alice", "f.bin", "f.bin", size, None, enc_meta, 0)


@pytest_twisted.inlineCallbacks
def test_a_cut_resumable_upload_keeps_its_bytes_and_hash_state(store):
    """abort() of a resumable sink keeps exactly the bytes received (all
    queued ones written, fsynced) and the SHA-256 state after them; a sink
    continuing from that point stores the whole, checked by its trailer."""
    data = os.urandom(3 * 1024 * 1024)
    meta = partial_meta(len(data))
    blob_id = yield wait(store.create_partial(meta))
    sink = store.open_upload(len(data), partial=blob_id, trailer=True)
    assert (sink.size, sink.trailer_size) == (len(data), 64)
    for i in range(0, 1_000_000, 100_000):
        sink.write(data[i : i + 100_000])
    yield wait(sink.abort())
    cut = sink.outcome
    assert isinstance(cut, upload_side.Suspended) and cut.kept == 1_000_000
    assert cut.hasher.hexdigest() == hashlib.sha256(data[:1_000_000]).hexdigest()
    part = os.path.join(store.tmp_dir, blob_id + ".part")
    assert open(part, "rb").read() == data[:1_000_000]
    assert sorted(os.listdir(store.tmp_dir)) == [blob_id + ".part", blob_id + ".resume"]

    point = yield wait(store.prepare_partial(blob_id, meta, 600_000))  # re-read, cut to 600000
    assert (point.kept, point.on_disk) == (600_000, 600_000)
    assert point.hasher.hexdigest() == hashlib.sha256(data[:600_000]).hexdigest()
    assert os.path.getsize(part) == 600_000
    sink = store.open_upload(len(data), partial=blob_id, resume=point, trailer=True)
    assert sink.size == len(data) - 600_000
    sink.write(data[600_000:] + hashlib.sha256(data).hexdigest().encode())
    stored = yield wait(sink.finish())
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert open(store.path_of(blob_id), "rb").read() == data
    assert os.listdir(store.tmp_dir) == []  # the sidecar went with the rename


@pytest_twisted.inlineCallbacks
def test_an_encrypted_partial_keeps_whole_sealed_chunks_only(store, kdf):
    """A protected upload cut mid-chunk keeps its sealed chunks (the last
    full one too only once a byte beyond it arrived) and the hash of
    exactly their plaintext; continued with the same key it decrypts to
    the data."""
    from netshare.services.files.partials import kept_of

    data = os.urandom(4 * CHUNK + 100)
    enc = yield encrypt_params("pw", kdf)
    meta = partial_meta(len(data), enc.meta())
    blob_id = yield wait(store.create_partial(meta))
    sink = store.open_upload(len(data), None, enc, partial=blob_id, trailer=True)
    sink.write(data[: 2 * CHUNK])  # two chunks full, the second not sealed yet
    yield wait(sink.abort())
    assert sink.outcome.kept == CHUNK
    part = os.path.join(store.tmp_dir, blob_id + ".part")
    assert kept_of(meta, os.path.getsize(part)) == CHUNK
    key = yield crypto.unlock(enc.meta(), "pw", kdf)
    again = crypto.params_from_meta(enc.meta(), key)
    point = yield wait(store.prepare_partial(blob_id, meta, CHUNK, None, again))
    assert point.hasher.hexdigest() == hashlib.sha256(data[:CHUNK]).hexdigest()
    sink = store.open_upload(len(data), None, again, partial=blob_id, resume=point, trailer=True)
    sink.write(data[CHUNK:] + hashlib.sha256(data).hexdigest().encode())
    stored = yield wait(sink.finish())
    _, c, d = download(store, stored.blob_id, 0, key, len(data))
    yield d
    assert c.data() == data


def test_sweep_keeps_partials_and_drops_half_pairs(tmp_path):
    from netshare.services.files import partials

    store = blobs.BlobStore(str(tmp_path / "s"), threadpool=ManualPool())
    partials.create(store.tmp_dir, "1" * 32, partial_meta(10), fsync=False)
    with open(os.path.join(store.tmp_dir, "2" * 32 + ".resume"), "wb") as f:
        f.write(partial_meta(10).to_json())  # no content file
    with open(os.path.join(store.tmp_dir, "3" * 32 + ".part"), "wb") as f:
        f.write(b"no sidecar")
    partials.create(store.tmp_dir, "4" * 32, partial_meta(10), fsync=False)
    with open(os.path.join(store.tmp_dir, "4" * 32 + ".resume"), "wb") as f:
        f.write(b'{"v": 99}')  # a sidecar of an unknown format
    with open(os.path.join(store.tmp_dir, "5" * 32 + ".resume.new"), "wb") as f:
        f.write(b"{")  # a crash while writing one
    assert store.sweep() == 5
    assert sorted(os.listdir(store.tmp_dir)) == ["1" * 32 + ".part", "1" * 32 + ".resume"]


@pytest_twisted.inlineCallbacks
def test_remove_orphans(store):
    kept = yield upload(store, b"kept")
    orphan = yield upload(store, b"orphan")
    store.release(kept.blob_id)
    store.release(orphan.blob_id)
    held = yield upload(store, b"row not written yet")  # still held by its upload
    removed = yield wait(store.remove_orphans({kept.blob_id}))
    assert removed == 1
    assert store.all_blob_ids() == {kept.blob_id, held.blob_id}


def test_blob_ids_are_never_user_paths(store):
    for bad in ("../../etc/passwd", "0" * 31, "0" * 33, "A" * 32, "0" * 30 + "/x", 5, None):
        with pytest.raises(ValueError):
            store.path_of(bad)
    assert store.path_of("ab" + "0" * 30) == os.path.join(
        store.root, "blobs", "ab", "ab" + "0" * 30
    )


def test_check_space(store):
    st = os.statvfs(store.root)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    store.check_space(1024, 0)
    with pytest.raises(InsufficientStorage) as e:
        store.check_space(free + 1, 0)
    assert e.value.code == 452
    pct = 100.0 * free / total
    assert pct < 99.9
    with pytest.raises(InsufficientStorage):
        store.check_space(0, min(99.9, pct + 0.05))


def test_check_space_counts_uploads_in_progress(tmp_path):
    pool = ManualPool()
    store = blobs.BlobStore(str(tmp_path / "s"), threadpool=pool)
    st = os.statvfs(store.root)
    free = st.f_bavail * st.f_frsize
    half = free // 2 + 1
    store.check_space(half, 0)
    sink = store.open_upload(half)  # reserved until it ends
    with pytest.raises(InsufficientStorage):
        store.check_space(half, 0)
    sink.abort()
    pool.run_all()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_planted_symlink_is_not_followed(store, tmp_path):
    secret = tmp_path / "outside"
    secret.write_bytes(b"outside the store")
    blob_id = "cd" + "1" * 30
    os.makedirs(os.path.dirname(store.path_of(blob_id)))
    os.symlink(str(secret), store.path_of(blob_id))
    with pytest.raises(IntegrityFailure):
        store.open_download(blob_id)


# ---------------------------------------------------------------- download


@pytest_twisted.inlineCallbacks
def test_download_in_256k_reads_from_offsets(store):
    data = os.urandom(600 * 1024)
    stored = yield upload(store, data)
    reader, c, d = download(store, stored.blob_id, expected_size=len(data))
    assert reader.remaining == len(data)
    sent = yield d
    assert sent == len(data) and c.data() == data
    assert [len(x) for x in c.chunks] == [256 * 1024, 256 * 1024, 88 * 1024]
    for offset in (1, 256 * 1024, len(data) - 1, len(data)):
        reader, c, d = download(store, stored.blob_id, offset)
        assert reader.remaining == len(data) - offset
        yield d
        assert c.data() == data[offset:]


@pytest_twisted.inlineCallbacks
def test_download_bad_offset_and_missing_blob(store):
    stored = yield upload(store, b"0123456789")
    with pytest.raises(BadArguments) as e:
        store.open_download(stored.blob_id, 11)
    assert e.value.code == 501
    with pytest.raises(IntegrityFailure):
        store.open_download(stored.blob_id, 0, expected_size=9)
    with pytest.raises(NotFound):
        store.open_download("ee" + "0" * 30)


@pytest_twisted.inlineCallbacks
def test_download_in_flight_survives_delete(store):
    data = os.urandom(1024 * 1024)
    stored = yield upload(store, data)
    reader = store.open_download(stored.blob_id)
    removed = yield wait(store.delete(stored.blob_id))
    assert removed and not os.path.exists(store.path_of(stored.blob_id))
    c = Collector()
    yield wait(reader.beginFileTransfer(c))
    c.close()
    assert c.data() == data


@pytest_twisted.inlineCallbacks
def test_stop_producing_closes_and_fails(store):
    stored = yield upload(store, os.urandom(1024 * 1024))
    reader = store.open_download(stored.blob_id)
    c = Collector()
    d = reader.beginFileTransfer(c)
    reader.stopProducing()
    c.close()
    with pytest.raises(DownloadStopped):
        yield d
    reader.resumeProducing()  # harmless after stop
    assert c.chunks == []


# ---------------------------------------------------------------- encryption


@pytest.fixture
def kdf():
    return FakeKDF()


def encrypt_params(password, kdf, chunk_size=CHUNK):
    return wait(crypto.prepare_encryption(password, kdf, *FAST_KDF, chunk_size=chunk_size))


@pytest_twisted.inlineCallbacks
def test_encrypted_round_trip_at_every_boundary(store, kdf):
    plain = (b"SECRET-PLAINTEXT-" * 20000)[: 3 * CHUNK + 123]
    params = yield encrypt_params("pa55 w\u00f6rd", kdf)
    stored = yield upload(store, plain, hashlib.sha256(plain).hexdigest(), params, pieces=7)
    assert stored.sha256 == hashlib.sha256(plain).hexdigest()
    meta = stored.enc_meta
    assert set(meta) == {
        "v",
        "alg",
        "kdf",
        "n",
        "r",
        "p",
        "salt",
        "verifier",
        "nonce_prefix",
        "chunk_size",
    }
    assert (meta["n"], meta["r"], meta["p"], meta["chunk_size"]) == (*FAST_KDF, CHUNK)
    with open(store.path_of(stored.blob_id), "rb") as f:
        disk = f.read()
    assert b"SECRET-PLAINTEXT" not in disk
    assert (
        len(disk) == crypto.encrypted_size(len(plain)) == crypto.HEADER_SIZE + len(plain) + 4 * 16
    )
    key = yield wait(crypto.unlock(meta, "pa55 wo\u0308rd", kdf))  # NFD spelling, same key
    assert key == params.key
    size = len(plain)
    for offset in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, size - 1, size):
        reader, c, d = download(store, stored.blob_id, offset, key, size)
        assert reader.remaining == size - offset
        yield d
        assert c.data() == plain[offset:], offset


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK])
@pytest_twisted.inlineCallbacks
def test_encrypted_sizes(store, kdf, size):
    plain = os.urandom(size)
    params = yield encrypt_params("pw", kdf)
    stored = yield upload(store, plain, None, params)
    assert os.path.getsize(store.path_of(stored.blob_id)) == crypto.encrypted_size(size)
    for offset in sorted({0, size // 2, size}):
        _, c, d = download(store, stored.blob_id, offset, params.key, size)
        yield d
        assert c.data() == plain[offset:]


@pytest_twisted.inlineCallbacks
def test_small_chunk_size_and_multi_chunk_reads(tmp_path, kdf):
    store = blobs.BlobStore(str(tmp_path / "s"), read_size=3000)
    try:
        plain = os.urandom(10_000)
        params = yield encrypt_params("pw", kdf, chunk_size=1000)
        stored = yield upload(store, plain, None, params, pieces=13)
        for offset in (0, 999, 1000, 1001, 9999, 10_000):
            _, c, d = download(store, stored.blob_id, offset, params.key)
            yield d
            assert c.data() == plain[offset:]
    finally:
        store.stop()


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_535(kdf):
    params = yield encrypt_params("right", kdf)
    for wrong in ("wrong", "Right", "right ", "", "x" * 129):
        with pytest.raises(BadCredentials) as e:
            yield wait(crypto.unlock(params.meta(), wrong, kdf))
        assert e.value.code == 535


@pytest_twisted.inlineCallbacks
def test_damaged_meta_is_integrity_failure(kdf):
    params = yield encrypt_params("right", kdf)
    meta = dict(params.meta(), salt="zz")
    with pytest.raises(IntegrityFailure):
        yield wait(crypto.unlock(meta, "right", kdf))


@pytest.fixture
def sealed(store, kdf):
    """A protected blob of 3 full chunks + a bit, with its key."""
    plain = os.urandom(3 * CHUNK + 500)
    params = pytest_twisted.blockon(encrypt_params("pw", kdf))
    stored = pytest_twisted.blockon(upload(store, plain, None, params))
    return store.path_of(stored.blob_id), stored.blob_id, params.key, plain


def patch_file(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest_twisted.inlineCallbacks
def test_tampered_chunk_is_detected(store, sealed):
    path, blob_id, key, plain = sealed
    at = crypto.HEADER_SIZE + (CHUNK + 16) + 100  # inside chunk 1
    with open(path, "rb") as f:
        f.seek(at)
        byte = f.read(1)
    patch_file(path, at, bytes([byte[0] ^ 1]))
    reader = blobs.BlobStore(store.root, read_size=CHUNK).open_download(blob_id, 0, key)
    c = Collector()
    with pytest.raises(IntegrityFailure) as e:
        yield wait(reader.beginFileTransfer(c))
    c.close()
    assert "chunk 1" in e.value.text
    assert c.data() == plain[:CHUNK]  # only the authentic chunk 0


@pytest_twisted.inlineCallbacks
def test_swapped_chunks_are_detected(store, sealed):
    path, blob_id, key, _ = sealed
    with open(path, "rb") as f:
        disk = f.read()
    h, n = crypto.HEADER_SIZE, CHUNK + 16
    swapped = disk[:h] + disk[h + n : h + 2 * n] + disk[h : h + n] + disk[h + 2 * n :]
    with open(path, "wb") as f:
        f.write(swapped)
    _, _, d = download(store, blob_id, 0, key)
    with pytest.raises(IntegrityFailure):
        yield d


def test_truncated_blob_is_detected_before_sending(store, sealed):
    path, blob_id, key, _ = sealed
    os.truncate(path, os.path.getsize(path) - 516)  # drop the last chunk exactly
    with pytest.raises(IntegrityFailure):
        store.open_download(blob_id, 0, key)


@pytest_twisted.inlineCallbacks
def test_truncation_with_edited_header_is_detected(store, sealed):
    """Drop the last chunk and make the header's size agree: the header is
    authenticated in every chunk, and chunk 2 was not sealed as last."""
    path, blob_id, key, _ = sealed
    os.truncate(path, os.path.getsize(path) - 516)
    patch_file(path, 12, (3 * CHUNK).to_bytes(8, "big"))
    reader, c, d = download(store, blob_id, 0, key)
    assert reader.remaining == 3 * CHUNK
    with pytest.raises(IntegrityFailure):
        yield d
    assert c.data() == b""


def test_last_chunk_flag_is_authenticated():
    """A chunk sealed as last does not open as "not last" and vice versa, so
    a stream cut at a chunk boundary cannot pass for a complete one."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, prefix = bytes(range(32)), b"p" * 8
    header = crypto.BlobHeader(16, 20, b"s" * 16, prefix)
    enc = crypto.ChunkEncryptor(key, header)
    first = enc.feed(b"a" * 20)
    last = enc.finish()
    assert len(first) == 1
    aead, hb = AESGCM(key), header.pack()
    assert crypto.open_chunk(aead, header, hb, 0, first[0]) == b"a" * 16
    assert crypto.open_chunk(aead, header, hb, 1, last) == b"a" * 4
    with pytest.raises(InvalidTag):
        aead.decrypt(crypto._nonce(prefix, 1), last, crypto._aad(hb, 1, False))
    with pytest.raises(InvalidTag):
        aead.decrypt(crypto._nonce(prefix, 0), first[0], crypto._aad(hb, 0, True))
    with pytest.raises(IntegrityFailure):
        crypto.open_chunk(aead, header, hb, 0, last)  # wrong position


def test_wrong_key_cannot_open_chunk(store, sealed):
    path, blob_id, key, _ = sealed
    reader = store.open_download(blob_id, 0, bytes(32))
    with pytest.raises(IntegrityFailure):
        reader._next()
    reader.close()


# ---------------------------------------------------------------- lockout


def test_lockout_after_five_failures():
    clock = task.Clock()
    lock = lockout.PasswordLockout(clock)
    for _ in range(4):
        lock.check("alice", "f")
        assert lock.failure("alice", "f") is False
        clock.advance(60)
    lock.check("alice", "f")
    assert lock.failure("alice", "f") is True
    with pytest.raises(RateLimited) as e:
        lock.check("alice", "f")
    assert e.value.code == 429
    lock.check("bob", "f")  # other users unaffected
    lock.check("alice", "g")  # and other files
    clock.advance(899)
    with pytest.raises(RateLimited):
        lock.check("alice", "f")
    clock.advance(2)
    lock.check("alice", "f")  # expired
    assert lock.failure("alice", "f") is False  # and the count started over


def test_lockout_window_slides():
    clock = task.Clock()
    lock = lockout.PasswordLockout(clock)
    for _ in range(4):
        lock.failure("alice", "f")
        clock.advance(10)
    clock.advance(900)  # the first four are now outside the window
    assert lock.failure("alice", "f") is False
    lock.check("alice", "f")


def test_success_clears_strikes():
    clock = task.Clock()
    lock = lockout.PasswordLockout(clock)
    for _ in range(4):
        lock.failure("alice", "f")
    lock.success("alice", "f")
    assert lock.failure("alice", "f") is False
    assert len(lock) == 1


def test_lockout_memory_is_bounded():
    clock = task.Clock()
    lock = lockout.PasswordLockout(clock, max_entries=50)
    for i in range(1000):
        lock.failure("user%d" % i, "f")
        clock.advance(1)
    assert len(lock) <= 50
    clock.advance(2000)
    lock.failure("late", "f")
    assert len(lock) == 1  # expired records dropped


# ---------------------------------------------------------------- the service

#: The accounts of these tests (ids by name; root is the admin).
ACCOUNT_IDS = {"alice": 1, "bob": 2, "carol": 3, "root": 4}


def who(name, address="127.0.0.1"):
    """The L{Caller} of one of the test accounts."""
    role = "admin" if name == "root" else "user"
    return Caller(Account(ACCOUNT_IDS[name], name, role, "", 0), address)


class Harness:
    def __init__(self, service, store, kdf, clock):
        self.service, self.blobs, self.kdf, self.clock = service, store, kdf, clock

    def put(self, user, name, data, **kw):
        """UPLOAD through the service: returns Deferred[FileRecord]."""
        d = self.service.begin_upload(who(user), name, len(data), **kw)

        def send(up):
            up.sink.write(data)
            return up.complete()

        return wait(d.addCallback(send))

    def get(self, user, name, **kw):
        d = self.service.open_download(who(user), name, **kw)

        def transfer(prepared):
            c = Collector()
            d2 = prepared.reader.beginFileTransfer(c)
            d2.addBoth(lambda r: (c.close(), r)[1])
            return d2.addCallback(lambda _: (prepared, c.data()))

        return wait(d.addCallback(transfer))


@pytest.fixture
def svc(db_pool, store, kdf):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    service = FilesService(
        FileStore(db_pool),
        store,
        kdf,
        max_file_size=1024 * 1024,
        user_quota=2 * 1024 * 1024,
        min_free_percent=0,
        kdf_params=FAST_KDF,
        clock=clock,
    )
    return Harness(service, store, kdf, clock)


@pytest_twisted.inlineCallbacks
def test_service_upload_info_list_download(svc):
    rec = yield svc.put("alice", "Report.txt", b"hello")
    assert rec.to_wire() == {
        "name": "Report.txt",
        "size": 5,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
        "owner": "alice",
        "visibility": "public",
        "protected": False,
        "created": "2023-11-14T22:13:20.000Z",
    }
    yield svc.put("bob", "secret", b"shh", visibility="hidden")
    info = (yield wait(svc.service.info(who("carol"), "REPORT.TXT"))).record
    assert info.name == "Report.txt"
    hidden = (yield wait(svc.service.info(who("carol"), "secret"))).record  # an unlisted link
    assert hidden.visibility == "hidden"
    public = yield wait(svc.service.list(who("carol")))
    assert [v.record.name for v in public] == ["Report.txt"]
    mine = yield wait(svc.service.list(who("bob"), "mine"))
    assert mine == []
    own_hidden = yield wait(svc.service.list(who("bob"), "hidden"))
    assert [v.record.name for v in own_hidden] == ["secret"]
    assert (yield wait(svc.service.list(who("carol"), "hidden"))) == []
    hidden_list = yield wait(svc.service.list(who("root"), "hidden"))
    assert [v.record.name for v in hidden_list] == ["secret"]
    prepared, data = yield svc.get("carol", "secret", offset=1)
    assert data == b"hh" and prepared.remaining == 0 and prepared.sha256 == hidden.sha256
    with pytest.raises(NotFound):
        yield wait(svc.service.info(who("carol"), "nope"))
    with pytest.raises(NameNotAllowed):
        yield wait(svc.service.info(who("carol"), "../x"))


@pytest_twisted.inlineCallbacks
def test_service_refusals_before_350(svc):
    yield svc.put("alice", "a.txt", b"1")
    cases = [
        (dict(user="bob", name="A.TXT", size=1, replace=True), Conflict),  # someone else's
        (dict(user="alice", name="a.txt", size=1), Conflict),  # no replace=yes
        (dict(user="alice", name="a/b", size=1), NameNotAllowed),
        (dict(user="alice", name="big", size=1024 * 1024 + 1), LimitExceeded),
        (dict(user="alice", name="v", size=1, visibility="secret"), BadArguments),
        (dict(user="alice", name="s", size=1, sha256="xyz"), BadArguments),
        (dict(user="alice", name="p", size=1, password=""), BadArguments),
    ]
    for kw, error in cases:
        kw["caller"] = who(kw.pop("user"))
        with pytest.raises(error):
            yield wait(svc.service.begin_upload(**kw))
    yield svc.put("alice", "b", b"x" * (1024 * 1024))
    yield svc.put("alice", "c", b"x" * (1024 * 1024 - 1))
    with pytest.raises(LimitExceeded) as e:  # quota: 2 MiB
        yield wait(svc.service.begin_upload(who("alice"), "d", 2))
    assert "quota" in e.value.text
    assert svc.blobs.all_blob_ids() and os.listdir(svc.blobs.tmp_dir) == []


@pytest_twisted.inlineCallbacks
def test_service_space_guard(svc):
    svc.service.min_free_percent = 99.99
    with pytest.raises(InsufficientStorage):
        yield wait(svc.service.begin_upload(who("alice"), "x", 1))


@pytest_twisted.inlineCallbacks
def test_service_two_uploads_of_one_name_one_wins(svc):
    a = yield wait(svc.service.begin_upload(who("alice"), "same", 3))
    b = yield wait(svc.service.begin_upload(who("bob"), "SAME", 3))
    a.sink.write(b"aaa")
    b.sink.write(b"bbb")
    results = yield wait(defer.DeferredList([a.complete(), b.complete()], consumeErrors=True))
    oks = [r for ok, r in results if ok]
    errors = [r.value for ok, r in results if not ok]
    assert len(oks) == 1 and len(errors) == 1 and isinstance(errors[0], Conflict)
    rows = yield wait(svc.service.files.all_blob_ids())
    assert svc.blobs.all_blob_ids() == set(rows)  # the loser's blob is gone


@pytest_twisted.inlineCallbacks
def test_service_replace_while_downloading(svc):
    old = os.urandom(700 * 1024)
    new = os.urandom(300 * 1024)
    yield svc.put("alice", "f", old)
    prepared = yield wait(svc.service.open_download(who("bob"), "f"))
    rec = yield svc.put("alice", "F", new, replace=True)
    assert rec.size == len(new) and rec.name == "F"
    c = Collector()
    yield wait(prepared.reader.beginFileTransfer(c))
    c.close()
    assert c.data() == old  # the download in flight: old, whole
    _, data = yield svc.get("bob", "f")
    assert data == new
    assert len(svc.blobs.all_blob_ids()) == 1  # the old blob was unlinked


@pytest_twisted.inlineCallbacks
def test_service_replace_keeps_visibility_unless_given(svc):
    yield svc.put("alice", "h", b"1", visibility="hidden")
    rec = yield svc.put("alice", "h", b"2", replace=True)
    assert rec.visibility == "hidden"
    rec = yield svc.put("alice", "h", b"3", replace=True, visibility="public")
    assert rec.visibility == "public"


@pytest_twisted.inlineCallbacks
def test_service_delete(svc):
    yield svc.put("alice", "d", b"data")
    with pytest.raises(PermissionDenied) as e:
        yield wait(svc.service.delete(who("bob"), "d"))
    assert e.value.code == 531
    rec = yield wait(svc.service.delete(who("root"), "D"))
    assert rec.owner == "alice"
    assert svc.blobs.all_blob_ids() == set()
    with pytest.raises(NotFound):
        yield wait(svc.service.delete(who("alice"), "d"))
    with pytest.raises(NotFound):
        yield wait(svc.service.open_download(who("alice"), "d"))


@pytest_twisted.inlineCallbacks
def test_service_protected_file_and_lockout(svc):
    plain = b"TOP-SECRET " * 10000
    rec = yield svc.put("alice", "vault", plain, password="open sesame")
    assert rec.protected and rec.to_wire()["protected"] is True
    assert rec.sha256 == hashlib.sha256(plain).hexdigest()
    with open(svc.blobs.path_of(rec.blob_id), "rb") as f:
        assert b"TOP-SECRET" not in f.read()
    with pytest.raises(BadCredentials):
        yield wait(svc.service.open_download(who("bob"), "vault"))  # no password
    _, data = yield svc.get("bob", "vault", password="open sesame", offset=5)
    assert data == plain[5:]
    for _ in range(5):
        with pytest.raises(BadCredentials):
            yield wait(svc.service.open_download(who("bob"), "vault", password="guess"))
    calls = svc.kdf.calls
    with pytest.raises(RateLimited):  # even the right one
        yield wait(svc.service.open_download(who("bob"), "vault", password="open sesame"))
    assert svc.kdf.calls == calls  # no KDF spent
    # The owner is not held up (the file has seen 5 wrong passwords from all
    # accounts together: anyone else's try would wait first, see below).
    _, data = yield svc.get("alice", "vault", password="open sesame")
    assert data == plain
    d = svc.get("carol", "vault", password="open sesame")
    assert (yield advance_once_waiting(svc.clock)) == 2
    _, data = yield d
    assert data == plain
    svc.clock.advance(901)
    _, data = yield svc.get("bob", "vault", password="open sesame")
    assert data == plain


@pytest_twisted.inlineCallbacks
def test_service_bad_offset(svc):
    yield svc.put("alice", "o", b"12345")
    for offset in (6, -1):
        with pytest.raises(BadArguments):
            yield wait(svc.service.open_download(who("alice"), "o", offset=offset))


@pytest_twisted.inlineCallbacks
def test_service_checksum_mismatch_and_abort_leave_nothing(svc):
    up = yield wait(svc.service.begin_upload(who("alice"), "m", 3, sha256="0" * 64))
    up.sink.write(b"abc")
    with pytest.raises(IntegrityFailure):
        yield wait(up.complete())
    up = yield wait(svc.service.begin_upload(who("alice"), "m", 3))
    up.sink.write(b"a")
    yield wait(up.abort())
    with pytest.raises(NotFound):
        yield wait(svc.service.info(who("carol"), "m"))
    assert listing(svc.blobs) == []


@pytest_twisted.inlineCallbacks
def test_service_startup_sweeps(svc):
    rec = yield svc.put("alice", "keep", b"keep")
    orphan = yield upload(svc.blobs, b"no row: killed before the insert")
    svc.blobs.release(orphan.blob_id)
    with open(os.path.join(svc.blobs.tmp_dir, "1" * 32 + ".part"), "wb") as f:
        f.write(b"cut")
    counts = yield wait(svc.service.startup())
    assert counts == {
        "temporaries": 1,
        "orphans": 1,
        "missing": 0,
        "partials": 0,
        "expired": 0,
    }
    assert svc.blobs.all_blob_ids() == {rec.blob_id}


# ---------------------------------------------------------------- guessing is slow


@pytest_twisted.inlineCallbacks
def test_guessing_hidden_names_costs_seconds_per_try(svc):
    """After 5 names not found, every further lookup of that account, or from
    that address, waits first (1 s, doubling: hits too, so the answer time
    tells nothing), whatever connection or other account it comes from."""
    yield svc.put("alice", "Backup.ZIP", b"the crown jewels", visibility="hidden")
    carol = who("carol", address="10.0.0.3")
    for i in range(5):  # mistakes are free
        with pytest.raises(NotFound):
            yield wait(svc.service.info(carol, "guess%d" % i))
    assert svc.clock.getDelayedCalls() == []
    d = svc.service.info(carol, "guess5")
    assert (yield advance_once_waiting(svc.clock)) == 1
    with pytest.raises(NotFound):
        yield wait(d)
    d = svc.service.info(carol, "backup.zip")  # the right name: slowed too
    assert (yield advance_once_waiting(svc.clock)) >= 1
    assert (yield wait(d)).record.name == "Backup.ZIP"
    # Another account from the same address, the same account from another.
    for caller in (who("bob", address="10.0.0.3"), who("carol", address="10.9.9.9")):
        d = svc.service.info(caller, "guess-again")
        assert not d.called
        assert (yield advance_once_waiting(svc.clock)) >= 1
        with pytest.raises(NotFound):
            yield wait(d)
    # Someone else entirely is not slowed; an admin never is (LIST hidden
    # shows an admin every hidden file anyway).
    with pytest.raises(NotFound):
        yield wait(svc.service.info(who("bob", address="10.0.0.2"), "nothing"))
    for i in range(10):
        with pytest.raises(NotFound):
            yield wait(svc.service.info(who("root", address="10.0.0.3"), "x%d" % i))


@pytest_twisted.inlineCallbacks
def test_a_burst_of_lookups_is_queued_then_refused_with_429(svc):
    """Parallel lookups count at once and take one slot after another; past
    a minute of queue the answer is 429 at once."""
    eve = who("carol", address="10.6.6.6")
    pending = [svc.service.info(eve, "n%d" % i) for i in range(12)]
    results = []
    for d in pending:
        d.addBoth(results.append)
    yield settle(svc.clock, pending)
    codes = [r.value.code for r in results]
    assert codes.count(429) >= 1 and codes.count(550) >= 5
    assert svc.service.misses.delayed >= 1


class ManualKDF(FakeKDF):
    """A KDF whose derivations finish when the test says (they queue, as in
    the real pool)."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def derive(self, password, salt, n, r, p, length=32, source=None):
        d = defer.Deferred()
        self.pending.append((FakeKDF.derive(self, password, salt, n, r, p, length), d))
        return d

    def finish_all(self):
        pending, self.pending = self.pending, []
        for result, d in pending:
            result.chainDeferred(d)


@pytest_twisted.inlineCallbacks
def test_wrong_file_passwords_from_many_accounts_are_limited_together(svc):
    """Four self-registered accounts, four guesses each: after 5 wrong
    passwords for the file (from anyone), every try waits (2 s, doubling),
    then 429; each account's own lockout still applies."""
    yield svc.put("alice", "vault", b"secret", password="right one")
    answers = []
    for name in ("bob", "carol", "root", "bob"):
        for i in range(4):
            d = svc.service.open_download(
                who(name, address="10.1.1.%d" % i), "vault", password="guess-%s-%d" % (name, i)
            )
            d.addBoth(answers.append)
            yield turn()
            while not d.called:
                if svc.clock.getDelayedCalls():
                    yield advance_once_waiting(svc.clock)
                else:
                    yield turn()
    codes = [a.value.code for a in answers]
    assert codes[:5] == [535] * 5
    assert 429 in codes  # the file's queue ran past its bound
    assert svc.service.file_guesses.delayed >= 5
    assert codes.count(535) < 16


@pytest_twisted.inlineCallbacks
def test_parallel_wrong_passwords_of_one_account_cannot_exceed_its_lockout(svc):
    yield svc.put("alice", "vault", b"secret", password="right one")
    svc.service.kdf = kdf = ManualKDF()
    attempts = [
        svc.service.open_download(who("bob"), "vault", password="guess%d" % i) for i in range(8)
    ]
    yield settle(
        svc.clock, attempts, until=lambda: len(kdf.pending) + sum(d.called for d in attempts) == 8
    )
    kdf.finish_all()
    results = []
    for d in attempts:
        d.addBoth(results.append)
    yield settle(svc.clock, attempts)
    codes = sorted(r.value.code for r in results)
    assert codes == [429, 429, 429, 535, 535, 535, 535, 535]


@pytest_twisted.inlineCallbacks
def test_a_protected_files_checksum_needs_its_password(svc):
    """INFO/CHECKSUM's sha256 of a protected file: its owner, an admin, or a
    caller with the right password; anyone else gets null (a wrong password
    is 535 and counts like a wrong DOWNLOAD)."""
    rec = yield svc.put("alice", "vault", b"guess my content", password="right one")
    for name in ("alice", "root"):
        assert (yield wait(svc.service.info(who(name), "vault"))).sha256 == rec.sha256
    view = yield wait(svc.service.info(who("bob"), "vault"))
    assert view.sha256 is None and view.to_wire()["sha256"] is None
    assert view.to_wire()["protected"] is True
    listed = yield wait(svc.service.list(who("bob")))
    assert [v.to_wire()["sha256"] for v in listed] == [None]
    assert (yield wait(svc.service.info(who("bob"), "vault", "right one"))).sha256 == rec.sha256
    with pytest.raises(BadCredentials):
        yield wait(svc.service.info(who("bob"), "vault", "wrong"))
    plain = yield svc.put("alice", "open", b"anyone may check")
    assert (yield wait(svc.service.info(who("bob"), "open"))).sha256 == plain.sha256
