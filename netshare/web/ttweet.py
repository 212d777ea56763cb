"""
ttweet over HTTP (docs/http.md; the rules are docs/protocol.md section 3,
decided by the L{Hub<netshare.services.ttweet.hub.Hub>}): post, subscribe,
timeline, users, a user's tweets, and the live stream of pushes as
Server-Sent Events.

The hub serves I{sessions}: a logged-in line connection is one, with its
subscriptions.  Over HTTP an account's session is its L{Presence}: one per
account, shared by all its requests and event streams, online (joined to
the hub) from its first subscription or event stream until
C{--idle-timeout} seconds after its last request once no event stream is
open (its subscriptions go with it, as a line connection's do when it
closes).  A tweet or a timeline read while it is not online uses a
passing presence, in the hub for that request only, so posting and
reading do not keep an account online.  The hub's rules apply unchanged:
a name is online once (an account logged in on the ttweet port cannot
come online over HTTP meanwhile: 409, and the other way round), at most
three subscriptions, the same flood limits (per name, per session and per
address).

Event streams.  C{GET /api/events} answers C{text/event-stream}: one
C{event: tweet} per push, its C{id:} the tweet's id (ids rise in publish
order, across restarts), so a client that reconnects with
C{Last-Event-ID: N} first gets the tweets of its persisted timeline after
C{N}, then the live ones (none twice, none missed: pushes that arrive
while the timeline is read are held and deduplicated by id).  A comment
line every 15 s keeps proxies from closing an idle stream.  A stream is a
slow reader like any line connection: it registers as the response's push
producer, so it knows when the socket's buffer is full, and one whose
unsent output passes C{--max-output} is dropped (aborted) without anyone
else waiting for it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from netshare import wire
from netshare.errors import BadArguments, Conflict, NetshareError
from netshare.services.ttweet.rules import check_subscription_tag
from netshare.web.app import Call, HttpError, Response, Router, Streaming

#: Seconds between keep-alive comments on an event stream.
KEEPALIVE = 15.0
EVENT_TYPE = b"text/event-stream; charset=utf-8"


def tweet_event(tweet_id: int, tweet_json: bytes) -> bytes:
    """One tweet as a Server-Sent Event (the JSON is one line: the wire
    encoder escapes every line break)."""
    return b"id: %d\nevent: tweet\ndata: %s\n\n" % (tweet_id, tweet_json)


@implementer(IPushProducer)
class EventStream:
    """
    One open C{GET /api/events} response.

    Registered as its request's streaming producer only to learn when the
    socket's buffer is full and when it drained (as a line connection's
    output is): while full, what is written counts against C{max_output},
    and past it the connection is aborted.

    @ivar lastId: the id of the last tweet sent (None: none yet).
    """

    log = Logger()

    def __init__(self, call: Call, presence: Presence, max_output: int):
        self.call = call
        self.request = call.request
        self.presence = presence
        self.channel = call.request.channel
        self.max_output = max_output
        self.full = False
        self.queuedWhileFull = 0
        self.lastId: int | None = None
        self.closed = False
        self.done = call.request.notifyFinish()
        # Live events that arrive while the timeline is replayed: (id, bytes).
        self._held: list[tuple[int, bytes]] | None = None
        self._heldBytes = 0

    # IPushProducer: the transport's view of the socket buffer

    def pauseProducing(self) -> None:
        if not self.full:
            self.full = True
            self.queuedWhileFull = 0

    def resumeProducing(self) -> None:
        self.full = False
        self.queuedWhileFull = 0

    def stopProducing(self) -> None:
        self.closed = True

    # writing

    def write(self, data: bytes) -> None:
        if self.closed or self.request.gone:
            return
        if self.full:
            self.queuedWhileFull += len(data)
            if self.queuedWhileFull > self.max_output:
                self.drop()
                return
        self.request.write(data)

    def send(self, tweet_id: int, event: bytes) -> None:
        """A live tweet (held while the timeline is replayed)."""
        if self._held is not None:
            self._held.append((tweet_id, event))
            self._heldBytes += len(event)
            if self._heldBytes > self.max_output:
                self.drop()
            return
        if self.lastId is not None and tweet_id <= self.lastId:
            return
        self.lastId = tweet_id
        self.write(event)

    def holdLive(self) -> None:
        self._held = []

    def replay(self, tweets: list[dict[str, Any]], after: int) -> None:
        """The persisted timeline after C{after}, then what was held."""
        held, self._held, self._heldBytes = self._held or [], None, 0
        self.lastId = after
        for tweet in tweets:
            tid = int(tweet["id"])
            if tid > after:
                self.send(tid, tweet_event(tid, wire.dumps(tweet).encode("utf-8")))
        for tid, event in held:
            self.send(tid, event)

    def drop(self) -> None:
        """A slow reader: abort, as the line ports drop theirs."""
        if self.closed:
            return
        self.log.warn(
            "dropping slow reader {peer}: more than {limit} bytes queued",
            service="ttweet",
            peer=self.call.peer,
            user=self.call.user,
            limit=self.max_output,
        )
        self.call.site.stats.slow_drops += 1
        self.closed = True
        self._held = None
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def accountRemoved(self) -> None:
        """The account is gone: the stream ends and the presence leaves the hub."""
        self.close()
        self.presence.presences.leave(self.presence)

    def close(self) -> None:
        """End the stream (shutdown, account removed)."""
        if self.closed:
            return
        self.closed = True
        request = self.request
        if not request.gone and not request.finished:
            request.unregisterProducer()
            request.finish()

    def ended(self) -> None:
        """The response is over, whichever way."""
        self.closed = True
        self.presence.removeStream(self)
        channel = self.channel
        if channel is not None and getattr(channel, "stream", None) is self:
            channel.stream = None
            channel.account = None


class Presence:
    """
    An account's ttweet session over HTTP (what the hub calls a
    L{HubSession<netshare.services.ttweet.hub.HubSession>}): its name, its
    account id, its address (the flood limit's per-address key) and
    L{sendPush}, which forwards each push to the account's open event
    streams, gathered per reactor turn.
    """

    def __init__(self, presences: Presences, account: Any, host: str):
        self.presences = presences
        self.username = account.name
        self.account_id = account.id
        self.host = host
        self.streams: list[EventStream] = []
        self.joined = False
        self._turn: list[bytes] | None = None
        self._expiry: Any = None

    def sendPush(self, data: bytes) -> None:
        """(The hub) one C{600 <tweet>} line: never blocks."""
        if not self.streams:
            return
        if self._turn is not None:
            self._turn.append(data)
            return
        self._turn = [data]
        self.presences.reactor.callLater(0, self._writeTurn)

    def _writeTurn(self) -> None:
        pushes, self._turn = self._turn or [], None
        events = []
        for data in pushes:
            body = data[4:].rstrip(b"\r\n")  # "600 <tweet json>\r\n"
            try:
                tid = int(json.loads(body)["id"])
            except (ValueError, KeyError, TypeError):
                continue
            events.append((tid, tweet_event(tid, body)))
        for stream in list(self.streams):
            for tid, event in events:
                stream.send(tid, event)

    def addStream(self, stream: EventStream) -> None:
        self.streams.append(stream)
        self.touch()

    def removeStream(self, stream: EventStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
            self.presences.streamClosed()
        self.touch()

    def touch(self) -> None:
        """A request (or a stream's end): the idle clock starts again."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        idle = self.presences.idle
        if self.joined and not self.streams and idle:
            self._expiry = self.presences.reactor.callLater(idle, self.presences.leave, self)

    def stop(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None


class Presences:
    """The L{Presence}s of a runtime's web listener, by account id, and
    the keep-alive of every open event stream."""

    def __init__(self, runtime: Any):
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.idle = runtime.config.idle_timeout
        self.byAccount: dict[int, Presence] = {}
        self.streams = 0  # open event streams, every presence's
        self._keepalive: task.LoopingCall | None = None

    def hub(self, call: Call) -> Any:
        return call.app("ttweet")

    def find(self, call: Call) -> Presence | None:
        presence = self.byAccount.get(call.account.id)
        if presence is not None:
            presence.touch()
        return presence

    def join(self, call: Call) -> Presence:
        """The caller's presence, joined to the hub (409 if its name is
        online on the ttweet port)."""
        presence = self.byAccount.get(call.account.id)
        if presence is None:
            presence = Presence(self, call.account, call.host)
        if not presence.joined:
            self._login(call, presence)
            self.byAccount[call.account.id] = presence
        presence.touch()
        return presence

    def _login(self, call: Call, presence: Presence) -> None:
        try:
            self.hub(call).login(presence)
        except Conflict:
            raise Conflict(
                "%s is online on the ttweet port: ttweet over HTTP needs that session "
                "to end first" % (presence.username,)
            ) from None
        presence.joined = True

    def use(self, call: Call) -> tuple[Presence, bool]:
        """
        The caller's presence if it is online; otherwise one that is in
        the hub only for this request (tweeting or reading the timeline does
        not bring an account online for C{--idle-timeout}: only a
        subscription or an event stream does).  @return: (presence, whether
        it is such a passing one: L{done} takes it out).
        """
        presence = self.find(call)
        if presence is not None and presence.joined:
            return presence, False
        passing = Presence(self, call.account, call.host)
        self._login(call, passing)
        return passing, True

    def done(self, presence: Presence, passing: bool) -> None:
        if passing and presence.joined:
            presence.joined = False
            hub = self.runtime.apps.get("ttweet")
            if hub is not None:
                hub.logout(presence)

    def leave(self, presence: Presence) -> None:
        """Out of the hub (idle, or its account removed): its subscriptions go."""
        presence.stop()
        if self.byAccount.get(presence.account_id) is presence:
            del self.byAccount[presence.account_id]
        if presence.joined:
            presence.joined = False
            hub = self.runtime.apps.get("ttweet")
            if hub is not None:
                hub.logout(presence)

    # keep-alive

    def streamOpened(self) -> None:
        self.streams += 1
        if self._keepalive is None:
            self._keepalive = task.LoopingCall(self._keepAlive)
            self._keepalive.clock = self.reactor
            self._keepalive.start(KEEPALIVE, now=False)

    def streamClosed(self) -> None:
        self.streams -= 1
        if self.streams <= 0 and self._keepalive is not None:
            self.streams = 0
            if self._keepalive.running:
                self._keepalive.stop()
            self._keepalive = None

    def _keepAlive(self) -> None:
        for presence in list(self.byAccount.values()):
            for stream in list(presence.streams):
                stream.write(b": keep-alive\n\n")


def _presences(call: Call) -> Presences:
    presences: Presences = call.site.ttweetPresences
    return presences


def _tag(text: object) -> str:
    """A hashtag as given over HTTP: with or without its C{#}."""
    if not isinstance(text, str):
        raise BadArguments("hashtag must be a string")
    return text if text.startswith("#") else "#" + text


async def post_tweet(call: Call) -> Response:
    """C{POST /api/tweets}: 201 with the tweet once it is stored."""
    body = call.object()
    message = body.get("message")
    if not isinstance(message, str):
        raise BadArguments("message format illegal")
    tags = body.get("hashtags", [])
    if tags is None:
        tags = []
    if not isinstance(tags, list):
        raise BadArguments("hashtags must be a list of strings")
    hashtags = "".join(_tag(t) for t in tags)
    hub = call.app("ttweet")
    presences = _presences(call)
    presence, passing = presences.use(call)
    try:
        # Fanned out at once; the Deferred fires once the tweet is stored.
        stored = hub.publish(presence, message, hashtags, journal=call.journal(201))
    finally:
        presences.done(presence, passing)
    return Response(201, await stored)


async def timeline(call: Call) -> dict[str, Any]:
    """C{GET /api/timeline}: the tweets delivered to this account, oldest first."""
    hub = call.app("ttweet")
    presences = _presences(call)
    presence, passing = presences.use(call)
    try:
        read = hub.timeline(presence)
    finally:
        presences.done(presence, passing)
    return {"items": await read}


def subscriptions(call: Call) -> dict[str, Any]:
    """C{GET /api/subscriptions}: the presence's tags (none if it is not online)."""
    hub = call.app("ttweet")
    presence = _presences(call).find(call)
    tags = hub.subscriptions(presence) if presence is not None and presence.joined else []
    return {"items": tags}


def subscribe(call: Call) -> dict[str, Any]:
    """C{POST /api/subscriptions} C{{"hashtag": "x"}} (C{SUBSCRIBE})."""
    tag = _tag(call.object().get("hashtag"))
    hub = call.app("ttweet")
    presence = _presences(call).join(call)
    hub.subscribe(presence, tag)
    return {"items": hub.subscriptions(presence)}


def unsubscribe(call: Call) -> dict[str, Any]:
    """C{DELETE /api/subscriptions/{hashtag}} (C{UNSUBSCRIBE}; C{ALL} drops all)."""
    tag = _tag(call.params["hashtag"])
    hub = call.app("ttweet")
    presence = _presences(call).find(call)
    if presence is None or not presence.joined:
        check_subscription_tag(tag)  # 400 for a malformed one, as when online
        return {"items": []}
    hub.unsubscribe(presence, tag)
    return {"items": hub.subscriptions(presence)}


def users(call: Call) -> dict[str, Any]:
    """C{GET /api/users}: everyone online (line sessions, guests, presences)."""
    return {"items": [{"user": name} for name in call.app("ttweet").online_users()]}


async def tweets_by(call: Call) -> dict[str, Any]:
    """C{GET /api/users/{name}/tweets} (C{GETTWEETS})."""
    return {"items": await call.app("ttweet").tweets_by(call.params["name"])}


def _last_event_id(call: Call) -> int | None:
    raw = call.header("Last-Event-ID")
    if raw is None:
        raw = call.arg("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise BadArguments("Last-Event-ID must be a tweet id")
    return int(raw)


async def events(call: Call) -> Streaming:
    """C{GET /api/events}: the live stream (see the module docstring)."""
    if call.method != "GET":  # a HEAD would hold a stream that sends nothing
        raise HttpError(405, 500, "method not allowed", [("Allow", "GET")])
    after = _last_event_id(call)
    hub = call.app("ttweet")
    presences = _presences(call)
    presence = presences.join(call)
    request = call.request
    channel = request.channel
    if getattr(channel, "stream", None) is not None:
        raise HttpError(409, 503, "this connection already carries an event stream")
    request.setResponseCode(200)
    request.setHeader(b"content-type", EVENT_TYPE)
    request.setHeader(b"x-accel-buffering", b"no")
    stream = EventStream(call, presence, call.config.max_output)
    channel.stream = stream
    channel.account = call.account
    request.registerProducer(stream, True)
    presence.addStream(stream)
    presences.streamOpened()
    stream.done.addBoth(lambda _: stream.ended())
    request.write(b": netshare ttweet events\nretry: 3000\n\n")
    if after is not None:
        stream.holdLive()
        _replay(hub, presence, stream, after)
    return Streaming(None, 200)


def _replay(hub: Any, presence: Presence, stream: EventStream, after: int) -> None:
    def got(tweets: list[dict[str, Any]]) -> None:
        if not stream.closed:
            stream.replay(tweets, after)

    def failed(failure: Any) -> None:
        # The timeline cannot be read now (database down): the client
        # reconnects and asks again; nothing is skipped silently.
        if not isinstance(failure.value, NetshareError):
            stream.log.failure("replaying a timeline", failure)
        stream.close()

    try:
        d = hub.timeline(presence)
    except NetshareError:
        stream.close()
        return
    d.addCallbacks(got, failed)


def register(router: Router, runtime: Any) -> None:
    router.add("POST", "/api/tweets", post_tweet, service="ttweet")
    router.add("GET", "/api/timeline", timeline, service="ttweet")
    router.add("GET", "/api/subscriptions", subscriptions, service="ttweet")
    router.add("POST", "/api/subscriptions", subscribe, service="ttweet")
    router.add("DELETE", "/api/subscriptions/{hashtag}", unsubscribe, service="ttweet")
    router.add("GET", "/api/users", users, service="ttweet")
    router.add("GET", "/api/users/{name}/tweets", tweets_by, service="ttweet")
    router.add("GET", "/api/events", events, service="ttweet")


def attach(site: Any, runtime: Any) -> None:
    """The presences live with the site (one per runtime)."""
    site.ttweetPresences = Presences(runtime)
