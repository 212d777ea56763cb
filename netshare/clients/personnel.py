"""
C{netshare-personnel}: the personnel client program.

::

    netshare-personnel [--host H --port P --user U --tls --cafile F] COMMAND ...

    sync --db client1.sqlite     the long-running sync client
    console                      the operator menu
    list [TEXT] [--limit N] [--offset N]
    get SSN
    add SSN NAME SURNAME [--job J] [--salary S]
    update SSN [--name N] [--surname S] [--job J] [--salary S]
    delete SSN
    clients
    messages [--client C] [--limit N]
    send SSN|* CLIENT|*
    remove SSN|* CLIENT|*
    history [--limit N] [--for-user U]

The password comes from C{NETSHARE_PASSWORD} or a prompt.  One-shot commands
print tables, or JSON with C{--json}; exit statuses are those of
L{netshare.clients.common} (0 ok, 1 refused by the server, 2 usage,
3 connection problem).

B{The sync client} (L{SyncClient}) keeps a local SQLite copy of what the
server sends this account (L{netshare.clients.syncdb.LocalStore}):

 - it connects, logs in and sends C{SYNC after=<last applied seq>};
 - pushes arriving together (one read from the socket, or within
   C{--batch-delay}) are applied as one batch, at most C{--batch-max}
   messages, in one local transaction that also records the last seq, then
   acknowledged with one cumulative C{ACK <highest seq committed>}, never
   before the commit (so a crash anywhere loses nothing and applies nothing
   twice: what is not acknowledged is sent again and skipped by its seq).
   At most one ACK is in flight; batches committed while it is answered
   are covered by the next one;
 - while a batch is being applied and more than C{2 * --batch-max}
   messages wait, it stops reading the socket, so a fast server cannot fill
   the client's memory: TCP backpressure reaches the server's sync feed;
 - the reactor thread only splits lines (L{SyncProtocol}, linear time per
   read) and buffers pushes; parsing, JSON decoding and every blocking
   SQLite call run in one dedicated worker thread, in order;
 - every applied change is logged, cheaply: one C{info} event per committed
   batch, C{applied 500 changes, seq 1..500: 1 SAVE 000001, 2 SAVE 000002,
   ..., 500 DELETE_ALL *}, with the fields C{count}, C{first}, C{last} and
   C{changes} (that list as one string: C{"<seq> <action> <ssn>"} joined
   by C{", "}; C{--log-format json} for one JSON object per line); with
   C{--log-level debug}, also one C{debug} event per change with the
   person's name.  A twisted.logger event costs about as much as applying
   ten changes to SQLite, so one event per change made logging the
   bottleneck of a large push (PERF.md section 5);
 - after any disconnect it reconnects with exponential backoff (C{--retry-min}
   doubling up to C{--retry-max}, with jitter), resuming after its last
   applied seq, and acknowledges that seq at once (the acknowledgement of
   the last batch before a disconnect may have been lost); a wrong password
   or a refused SYNC (the local copy belongs to another server) stops it
   with status 1.
"""

from __future__ import annotations

import argparse
import functools
import random

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from netshare.clients import common
from netshare.clients.protocol import ClientProtocol, CommandFailed, connect, login, quote

DEFAULT_PORT = 7001

PERSON_COLUMNS = ["ssn", "name", "surname", "job", "salary", "updated"]
CLIENT_COLUMNS = ["client", "online", "pending", "acked", "last_seen"]
MESSAGE_COLUMNS = ["seq", "client", "action", "ssn", "created", "acked"]
HISTORY_COLUMNS = ["id", "ts", "user", "service", "command", "code"]

#: Push code -> action (PROTOCOL.md section 4).
PUSH_ACTIONS = {610: "SAVE", 611: "DELETE", 612: "DELETE_ALL"}

#: Replies that retrying cannot fix: stop the sync client.
FATAL_CODES = frozenset({500, 501, 503, 530, 531, 535})


# ---------------------------------------------------------------------------
# The sync client


class SyncProtocol(ClientProtocol):
    """
    L{ClientProtocol} with a line splitter that costs linear time per read,
    for the sync client's connection (see L{use_sync_protocol}).

    Twisted's C{LineReceiver.dataReceived} splits one line off a read at a
    time (C{buffer.split(delimiter, 1)}), copying the rest of the read for
    every line: a 64 KiB read of ~150-byte pushes is ~430 lines and ~14 MB
    of copying, the largest single cost of the sync client on a big push.
    Here a read is split once; push lines (C{6xx <text>}) go straight to
    C{onPush} with exactly the C{(code, text)} C{lineReceived} would give;
    every other line goes through C{lineReceived}.  Pausing, a closing
    transport, raw mode and re-entry behave as in C{LineReceiver}: the lines
    not yet delivered wait in C{_buffer}, and anything unusual takes the
    base class's path.
    """

    def dataReceived(self, data):
        if self._busyReceiving or self.paused or not self.line_mode or self._raw is not None:
            return ClientProtocol.dataReceived(self, data)
        self._buffer += data
        self._busyReceiving = True
        try:
            while b"\n" in self._buffer and not self.paused:
                lines = self._buffer.split(b"\n")
                self._buffer = lines.pop()
                if self._deliver(lines):
                    return
            if len(self._buffer) >= self.MAX_LENGTH + len(self.delimiter):
                line, self._buffer = self._buffer, b""
                return self.lineLengthExceeded(line)
        finally:
            self._busyReceiving = False

    def _deliver(self, lines) -> bool:
        """Deliver complete lines; @return: True to stop reading (the rest
        is put back in front of the buffer)."""
        for i, line in enumerate(lines):
            if len(line) > self.MAX_LENGTH:
                exceeded = b"\n".join(lines[i:]) + b"\n" + self._buffer
                self._buffer = b""
                self.lineLengthExceeded(exceeded)
                return True
            if line[-1:] == b"\r":
                line = line[:-1]
            onPush = self.onPush
            if (onPush is not None and line[:1] == b"6" and line[3:4] == b" "
                    and line[1:3].isdigit() and self._greeted):
                onPush(int(line[:3]), line[4:].decode("utf-8", "replace"))
            else:
                self.lineReceived(line)
            if (self.paused or not self.line_mode or self._raw is not None
                    or (self.transport is not None and self.transport.disconnecting)):
                rest = lines[i + 1:]
                if rest:
                    self._buffer = b"\n".join(rest) + b"\n" + self._buffer
                return True
        return False


def use_sync_protocol(proto):
    """
    Give a connected L{ClientProtocol} the linear-time splitter of
    L{SyncProtocol}.  The subclass adds no state and overrides one method,
    so the connection keeps everything it has (queue, greeting, buffer);
    C{netshare.clients.protocol.connect} stays the only code that opens (and
    verifies TLS for) connections.
    """
    if type(proto) is ClientProtocol:
        proto.__class__ = SyncProtocol
    return proto


class _Session:
    """One connection's state: pushes received but not yet applied."""

    def __init__(self, proto):
        self.proto = proto
        self.buffer = []         # (code, text) of each push, unparsed, seq order
        self.flushCall = None
        self.paused = False
        self.acked = 0           # the highest seq an ACK was sent for
        self.ackWanted = 0       # the highest seq committed locally
        self.ackInFlight = False

    @property
    def connected(self) -> bool:
        return self.proto.transport is not None and self.proto.transport.connected


class SyncFailed(Exception):
    """The sync client cannot go on (bad password, SYNC refused)."""


class SyncClient:
    """
    See the module docstring.

    @param store: a L{netshare.clients.syncdb.LocalStore} (blocking; called only in
        this client's own worker thread).
    @param connector: C{() -> Deferred[ClientProtocol]} (greeting received).
    @ivar applied: messages applied since start.
    @ivar batches: local transactions committed since start.
    """

    log = Logger(namespace="netshare.services.personnel.sync")

    def __init__(self, reactor, store, connector, user: str, password: str, *,
                 retry_min: float = 1.0, retry_max: float = 30.0, batch_max: int = 500,
                 batch_delay: float = 0.005, command_timeout: float = 60.0, rng=None,
                 log_each: bool = False):
        self.reactor = reactor
        self.store = store
        self.connector = connector
        self.user = user
        self.password = password
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self.batch_max = max(1, batch_max)
        self.batch_delay = batch_delay
        self.command_timeout = command_timeout
        self.rng = rng or random.Random()
        self.log_each = log_each    # one debug event per change as well
        self.applied = 0
        self.batches = 0
        self.connections = 0
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="netshare-syncdb")
        self._session = None
        self._applying = None     # Deferred of the batch being applied
        self._sleep = None
        self._stopping = False
        self._stopped = False
        self._loop = None

    # -- lifecycle

    def start(self) -> defer.Deferred:
        """Run until L{stop}; the Deferred fails with L{SyncFailed} on a
        fatal refusal."""
        self._pool.start()
        self._loop = defer.ensureDeferred(self._run())
        return self._loop

    @defer.inlineCallbacks
    def stop(self):
        """Disconnect, let a batch being applied commit, stop the worker."""
        self._stopping = True
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        session = self._session
        if session is not None:
            self._cancelFlush(session)
            if session.connected:
                session.proto.transport.loseConnection()
        if self._applying is not None:
            yield self._applying
        if self._loop is not None:
            try:
                yield self._loop
            except Exception:
                pass
        if not self._stopped:
            self._stopped = True
            self._pool.stop()

    def _db(self, fn, *args):
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    # -- the connection loop

    async def _run(self):
        delay = self.retry_min
        while not self._stopping:
            proto = None
            try:
                proto = await self.connector()
                self.connections += 1
                # A server that accepts but never answers must not hang us.
                await login(proto, self.user, self.password).addTimeout(
                    self.command_timeout, self.reactor)
                last = await self._db(self.store.last_seq)
                session = self._session = _Session(proto)
                proto.onPush = functools.partial(self._onPush, session)
                resp = await proto.command("SYNC after=%d" % (last,)).addTimeout(
                    self.command_timeout, self.reactor)
                if resp.code != 200:
                    raise CommandFailed(resp)
                self.log.info("syncing as {user} after seq {seq}", user=self.user, seq=last)
                if last > 0:
                    # The ACK of the last batch before a disconnect may have
                    # been lost; the server does not send those messages
                    # again (we asked for after=last), so acknowledge them
                    # here or they would stay pending for ever.
                    self._ack(session, last)
                delay = self.retry_min
                await proto.closed
                if not self._stopping:
                    self.log.warn("sync connection closed; reconnecting")
            except CommandFailed as e:
                if e.code in FATAL_CODES:
                    self.log.error("sync refused: {reply}", reply=e.response.line)
                    raise SyncFailed(e.response.line) from None
                self.log.warn("sync refused for now: {reply}", reply=e.response.line)
            except Exception as e:
                if self._stopping:
                    break
                self.log.warn("cannot sync with the server: {error}", error=_reason(e))
            finally:
                if proto is not None and proto.transport is not None and \
                        proto.transport.connected:
                    proto.transport.abortConnection()
                session, self._session = self._session, None
                if session is not None:
                    self._cancelFlush(session)
                    session.buffer = []
            if self._stopping:
                break
            wait = delay * (0.5 + self.rng.random() / 2)
            self.log.info("reconnecting in {delay:.2f}s", delay=wait)
            self._sleep = task.deferLater(self.reactor, wait, lambda: None)
            try:
                await self._sleep
            except defer.CancelledError:
                break
            finally:
                self._sleep = None
            delay = min(delay * 2, self.retry_max)

    # -- pushes and batches

    def _onPush(self, session, code, text):
        # Runs once per push: only buffer it.  Parsing and decoding happen in
        # the worker thread with the batch (L{_applyPushes}).
        if session is not self._session:
            return
        buffer = session.buffer
        buffer.append((code, text))
        if len(buffer) >= 2 * self.batch_max and not session.paused:
            # Stop reading until the batches in hand are applied.
            session.paused = True
            session.proto.pauseProducing()
        if self._applying is None:
            if len(buffer) >= self.batch_max:
                self._flush(session)
            elif session.flushCall is None:
                session.flushCall = self.reactor.callLater(self.batch_delay, self._flush, session)

    def _cancelFlush(self, session):
        if session.flushCall is not None and session.flushCall.active():
            session.flushCall.cancel()
        session.flushCall = None

    def _flush(self, session):
        self._cancelFlush(session)
        if self._applying is not None or not session.buffer or session is not self._session:
            return
        batch = session.buffer[:self.batch_max]
        del session.buffer[:self.batch_max]
        d = self._applying = self._db(self._applyPushes, batch)
        d.addCallbacks(self._applied, self._applyFailed, callbackArgs=(session,),
                       errbackArgs=(session,))
        d.addErrback(lambda f: self.log.failure("sync client bug", f))

    def _applyPushes(self, pushes):
        """In the worker thread: parse C{pushes} and apply them in one local
        transaction.  @return: (the changes applied, the highest seq of the
        batch -- applied now or before, either way safe to acknowledge)."""
        messages = parse_pushes(pushes)
        return self.store.apply_messages(messages), messages[-1][0]

    def _applied(self, result, session):
        self._applying = None
        changes, top = result
        self.batches += 1
        self.applied += len(changes)
        if changes:
            self._logChanges(changes)
        if session is not self._session or not session.connected:
            return
        self._ack(session, top)
        if session.paused and len(session.buffer) < self.batch_max:
            session.paused = False
            session.proto.resumeProducing()
        if session.buffer:
            if len(session.buffer) >= self.batch_max or self.batch_delay <= 0:
                self._flush(session)
            elif session.flushCall is None:
                session.flushCall = self.reactor.callLater(self.batch_delay, self._flush, session)

    def _ack(self, session, seq):
        """Acknowledge everything up to C{seq} (committed locally).  At most
        one ACK is in flight: whatever commits meanwhile is covered by one
        cumulative ACK when the answer comes, so a fast stream of small
        batches costs the server one acknowledgement per round trip, not
        one per batch."""
        if seq > session.ackWanted:
            session.ackWanted = seq
        if session.ackInFlight or session.ackWanted <= session.acked or not session.connected:
            return
        seq = session.acked = session.ackWanted
        session.ackInFlight = True
        session.proto.command("ACK %d" % (seq,)).addCallbacks(
            self._ackAnswered, self._ackLost, callbackArgs=(session, seq),
            errbackArgs=(session,))

    def _logChanges(self, changes):
        """One info event for the batch, listing every change; per change
        only at debug level (see the module docstring)."""
        if self.log_each:
            for seq, action, payload in changes:
                if action == "SAVE":
                    self.log.debug("applied {seq} SAVE {ssn} ({name} {surname})", seq=seq,
                                   action=action, ssn=payload.get("ssn"),
                                   name=payload.get("name"), surname=payload.get("surname"))
                elif action == "DELETE":
                    self.log.debug("applied {seq} DELETE {ssn}", seq=seq, action=action,
                                   ssn=payload.get("ssn"))
                else:
                    self.log.debug("applied {seq} DELETE_ALL", seq=seq, action=action, ssn=None)
        # One string, not a list of lists: a JSON log observer encodes a
        # 5000-item list per batch at ~1 us an item (as much as the apply),
        # a string at memory speed; "%d %s %s" per change is the only cost.
        listed = ", ".join(["%d %s %s" % (seq, action, payload.get("ssn", "*"))
                            for seq, action, payload in changes])
        self.log.info("applied {count} changes, seq {first}..{last}: {changes}",
                      count=len(changes), first=changes[0][0], last=changes[-1][0],
                      changes=listed)

    def _ackAnswered(self, resp, session, seq):
        session.ackInFlight = False
        if resp.code != 200:
            self.log.warn("ACK {seq} refused: {reply}", seq=seq, reply=resp.line)
        if session is self._session:
            self._ack(session, seq)

    def _ackLost(self, failure, session):
        # The connection closed first; the next session acknowledges what
        # was committed (it resumes after the local last seq).
        session.ackInFlight = False

    def _applyFailed(self, failure, session):
        self._applying = None
        if failure.check(BadPush):
            self.log.error("{error}; reconnecting", error=failure.getErrorMessage())
        else:
            self.log.failure("cannot apply a batch to the local database; reconnecting",
                             failure)
        if session.connected:
            session.proto.transport.loseConnection()


class BadPush(ValueError):
    """A push that is not C{61x <seq> <ACTION> <json>} (or out of order)."""


def parse_pushes(pushes) -> list:
    """
    C{[(code, text)]} as received -> C{[(seq, action, payload text)]}.

    @raise BadPush: an unparsable push, or seqs that do not rise (the
        server sends each stream in seq order): nothing of the batch may be
        applied then.
    """
    out = []
    append = out.append
    actions = PUSH_ACTIONS
    previous = -1
    for code, text in pushes:
        parts = text.split(" ", 2)
        action = actions.get(code)
        if len(parts) != 3 or action is None or parts[1] != action or not parts[0].isdigit():
            raise BadPush("unparsable push %d %s" % (code, text[:200]))
        seq = int(parts[0])
        if seq <= previous:
            raise BadPush("push %d after %d: out of order" % (seq, previous))
        previous = seq
        append((seq, action, parts[2]))
    return out


def _reason(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


async def cmd_sync(reactor, args):
    from netshare.clients.syncdb import LocalStore
    if not args.user:
        raise common.UsageError("--user is required (or set NETSHARE_USER)")
    secret = common.password(args)
    common.start_logging(args.log_level, args.log_format)
    try:
        store = LocalStore(args.db)
    except Exception as e:
        raise common.UsageError("cannot open --db %s: %s" % (args.db, e)) from None

    def connector():
        return connect(args.host, args.port, tls=args.tls, cafile=args.cafile,
                       hostname=args.hostname, reactor=reactor,
                       timeout=args.timeout).addCallback(use_sync_protocol)

    client = SyncClient(reactor, store, connector, args.user, secret,
                        retry_min=args.retry_min, retry_max=args.retry_max,
                        batch_max=args.batch_max, batch_delay=args.batch_delay,
                        log_each=args.log_level == "debug")
    log = Logger(namespace="netshare.services.personnel.sync")
    log.info("sync client {user} on {db}", user=args.user, db=args.db)

    done = []

    @defer.inlineCallbacks
    def shutdown():
        # SIGINT/SIGTERM stop the reactor; this runs first and delays the
        # stop until a batch being applied has committed.
        yield client.stop()
        if not done:
            done.append(True)
            store.close()
            log.info("sync client stopped: {applied} changes applied in {batches} batches",
                     applied=client.applied, batches=client.batches)

    trigger = reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    code = common.EXIT_OK
    try:
        await client.start()
    except SyncFailed:
        code = common.EXIT_REFUSED
    finally:
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError):
            pass  # already running: the reactor is shutting down
        await shutdown()
    return code


# ---------------------------------------------------------------------------
# One-shot commands


_one = common.one_command


async def cmd_list(reactor, args):
    words = ["LIST"] + ([args.text] if args.text is not None else [])
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    if args.offset is not None:
        words.append("offset=%d" % args.offset)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, PERSON_COLUMNS)


async def cmd_get(reactor, args):
    resp = await _one(reactor, args, quote("GET", args.ssn))
    common.emit(args, resp.obj, PERSON_COLUMNS)


async def cmd_add(reactor, args):
    words = ["ADD", "ssn=" + args.ssn, "name=" + args.name, "surname=" + args.surname]
    for field in ("job", "salary"):
        if getattr(args, field) is not None:
            words.append("%s=%s" % (field, getattr(args, field)))
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.obj, PERSON_COLUMNS)


async def cmd_update(reactor, args):
    words = ["UPDATE", args.ssn]
    for field in ("name", "surname", "job", "salary"):
        if getattr(args, field) is not None:
            words.append("%s=%s" % (field, getattr(args, field)))
    if len(words) == 2:
        raise common.UsageError("update: give at least one of --name --surname --job --salary")
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.obj, PERSON_COLUMNS)


async def cmd_delete(reactor, args):
    await _one(reactor, args, quote("DELETE", args.ssn))
    common.emit(args, {"deleted": args.ssn}, text="deleted %s" % (args.ssn,))


async def cmd_clients(reactor, args):
    resp = await _one(reactor, args, "CLIENTS")
    common.emit(args, resp.items, CLIENT_COLUMNS)


async def cmd_messages(reactor, args):
    words = ["MESSAGES"]
    if args.client is not None:
        words.append("client=" + args.client)
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, MESSAGE_COLUMNS)


async def _queue(reactor, args, verb):
    resp = await _one(reactor, args, quote(verb, args.ssn, args.client))
    count = int(resp.text.split()[-1])
    common.emit(args, {"queued": count}, text="queued %d message%s"
                % (count, "" if count == 1 else "s"))


async def cmd_send(reactor, args):
    await _queue(reactor, args, "SEND")


async def cmd_remove(reactor, args):
    await _queue(reactor, args, "REMOVE")


async def cmd_history(reactor, args):
    words = ["HISTORY"]
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    if args.for_user is not None:
        words.append("user=" + args.for_user)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, HISTORY_COLUMNS)


# ---------------------------------------------------------------------------
# The operator console


MENU = """
  0  show personnel, clients and messages
  1  send one person to one client
  2  send one person to all clients
  3  send all personnel to all clients
  4  delete one person from one client
  5  delete one person from all clients
  6  delete all personnel from all clients
  7  exit
"""

PROMPT = "choice> "


class Console:
    """The operator menu of the original server, over the protocol."""

    def __init__(self, proto, io, show_limit: int = 20):
        self.proto = proto
        self.io = io
        self.show_limit = show_limit

    def say(self, text=""):
        self.io.write(text if text.endswith("\n") else text + "\n")

    async def run(self):
        self.say("netshare personnel console" + MENU.rstrip("\n"))
        while True:
            choice = await self.io.ask(PROMPT)
            if choice is None:
                self.say()
                return
            choice = choice.strip()
            if choice == "7":
                self.say("bye")
                return
            if choice == "":
                continue
            if choice not in ("0", "1", "2", "3", "4", "5", "6"):
                self.say("please choose a number from 0 to 7" + MENU.rstrip("\n"))
                continue
            if not self.proto.transport.connected:
                raise ConnectionError("the server closed the connection")
            try:
                await self.do(choice)
            except CommandFailed as e:
                self.say("error: %s" % (e.response.line,))

    async def _ask(self, prompt):
        answer = await self.io.ask(prompt)
        if answer is None:
            return None
        answer = answer.strip()
        if not answer:
            self.say("nothing entered; back to the menu")
            return None
        return answer

    async def do(self, choice):
        if choice == "0":
            return await self.show()
        ssn = client = "*"
        if choice in ("1", "2", "4", "5"):
            ssn = await self._ask("ssn: ")
            if ssn is None:
                return
        if choice in ("1", "4"):
            client = await self._ask("client: ")
            if client is None:
                return
        verb = "SEND" if choice in ("1", "2", "3") else "REMOVE"
        resp = common.checked(await self.proto.command(quote(verb, ssn, client)))
        count = int(resp.text.split()[-1])
        self.say("queued %d message%s" % (count, "" if count == 1 else "s"))

    async def show(self):
        people = common.checked(await self.proto.command("LIST limit=%d" % self.show_limit))
        clients = common.checked(await self.proto.command("CLIENTS"))
        messages = common.checked(await self.proto.command("MESSAGES limit=%d"
                                                           % self.show_limit))
        self.say("personnel (first %d):" % (self.show_limit,))
        self.say(common.format_table(people.items, PERSON_COLUMNS[:5]).rstrip("\n"))
        self.say("clients:")
        self.say(common.format_table(clients.items, CLIENT_COLUMNS).rstrip("\n"))
        self.say("messages (newest %d):" % (self.show_limit,))
        self.say(common.format_table(messages.items, MESSAGE_COLUMNS).rstrip("\n"))


async def cmd_console(reactor, args):
    from twisted.internet import stdio
    proto = await common.open_session(reactor, args)
    io = common.LineInput()
    stdio.StandardIO(io, reactor=reactor)
    try:
        await Console(proto, io, args.show_limit).run()
    finally:
        await io.close()
        await common.close(proto)


# ---------------------------------------------------------------------------
# Command line


COMMANDS = {
    "sync": cmd_sync, "console": cmd_console, "list": cmd_list, "get": cmd_get,
    "add": cmd_add, "update": cmd_update, "delete": cmd_delete, "clients": cmd_clients,
    "messages": cmd_messages, "send": cmd_send, "remove": cmd_remove, "history": cmd_history,
}


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return v


def _seconds(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of seconds") from None
    if not 0 <= v < 86400:
        raise argparse.ArgumentTypeError("out of range")
    return v


def build_parser():
    parser, command = common.command_parser(
        "netshare-personnel",
        "netshare personnel client: one-shot commands, the operator console and "
        "the sync client. The password comes from NETSHARE_PASSWORD or a prompt.", DEFAULT_PORT)

    p = command("sync", "keep a local SQLite copy of what the server sends this account")
    p.add_argument("--db", required=True, help="local SQLite file (created if missing)")
    p.add_argument("--retry-min", type=_seconds, default=1.0,
                   help="first reconnect delay, doubled after each failure [%(default)s s]")
    p.add_argument("--retry-max", type=_seconds, default=30.0,
                   help="longest reconnect delay [%(default)s s]")
    p.add_argument("--batch-max", type=_positive, default=500,
                   help="most messages applied in one local transaction [%(default)s]")
    p.add_argument("--batch-delay", type=_seconds, default=0.005,
                   help="wait this long for more pushes before applying a batch "
                        "[%(default)s s]")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                   help="log level on stderr [%(default)s]")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="log format on stderr [%(default)s]")

    p = command("console", "the operator menu (send/delete one or all people to one or all "
                           "clients)")
    p.add_argument("--show-limit", type=_positive, default=20,
                   help="rows of each table shown by choice 0 [%(default)s]")

    p = command("list", "list people (TEXT matches name, surname, ssn or job)")
    p.add_argument("text", nargs="?")
    p.add_argument("--limit", type=_positive)
    p.add_argument("--offset", type=_positive)

    p = command("get", "show one person")
    p.add_argument("ssn")

    p = command("add", "add a person (admin)")
    p.add_argument("ssn")
    p.add_argument("name")
    p.add_argument("surname")
    p.add_argument("--job")
    p.add_argument("--salary")

    p = command("update", "change fields of a person (admin)")
    p.add_argument("ssn")
    for field in ("name", "surname", "job", "salary"):
        p.add_argument("--" + field)

    p = command("delete", "delete a person from the server's database (admin)")
    p.add_argument("ssn")

    command("clients", "sync clients and their queues (admin)")

    p = command("messages", "queued messages, newest first (admin)")
    p.add_argument("--client")
    p.add_argument("--limit", type=_positive)

    for name, verb in (("send", "queue SAVE of one person or * to one client or *"),
                       ("remove", "queue DELETE of one person or * from one client or *")):
        p = command(name, verb + " (admin)")
        p.add_argument("ssn", help="an ssn, or * for everyone")
        p.add_argument("client", help="a client (account) name, or * for every known client")

    p = command("history", "your request history (an admin may name another user)")
    p.add_argument("--limit", type=_positive)
    p.add_argument("--for-user", help="whose history (admin; * for everyone)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    common.run(args, lambda reactor: handler(reactor, args), prog="netshare-personnel")


if __name__ == "__main__":
    main()

