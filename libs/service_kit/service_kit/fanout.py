"""One Redis pub/sub subscription per process, shared by every watcher in it.

A Watch* stream that opened a subscription of its own held a Redis connection for its whole
life: one caller's hundred streams took a hundred connections and a hundred readers, and
starved everyone else's watches. Here a process reads one subscription; a channel is
subscribed while at least one watcher listens to it; every message is copied to each of its
watchers' bounded queues, so a slow watcher never slows another. What happens to a watcher
that falls behind by more than its queue is the Fanout's choice (`close_slow`): it loses its
oldest messages (job watches: each event is a snapshot of the job and the row is read too, so
the newest says all), or it is closed and its next `get` raises FellBehind (run watches: a
lost metric is a hole the watcher would never learn of, so it is told to watch again).
`watch` returns once Redis has the subscription: whatever is published afterwards reaches the
watcher. When Redis goes away the reader connects again after a pause and subscribes again to
every channel still watched.

Pub/sub keeps nothing: whatever was published while the subscription was gone never arrives,
and other processes' watchers (another subscription) may well have had it. So a lost
subscription is never passed over: when it fails (a command or a read raises) or its
connection is made again (redis-py reconnects and resubscribes on its own, through the
connection's connect callbacks), every watcher that closes when slow is interrupted too: its
next `get` raises Interrupted, and the stream tells its caller to watch again and read what it
missed. Other watchers (snapshots) read their row again anyway and go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # messages one watcher may fall behind by
CONFIRM_S = 5.0  # the longest a new watch waits for Redis to confirm its subscription
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)
# A command sent while the reader's retry reconnects the same connection finds it half made
# (redis-py: AttributeError on its writer): a lost subscription too, not the caller's fault.
_COMMAND_LOST = (*_REDIS_DOWN, AttributeError)

OVERFLOWS = Counter(
    "neural_watch_overflows_total",
    "Watchers that fell behind by more than their queue, by what was done: closed, or their "
    "oldest message dropped",
    ["action"],
)
INTERRUPTIONS = Counter(
    "neural_watch_interruptions_total",
    "Times this process's pub/sub subscription was lost or made again, its watchers that "
    "close when slow told to watch again",
)


class FellBehind(Exception):
    """The watcher fell behind by more than its queue and was closed: messages were lost."""

    def __init__(self, queue_size: int) -> None:
        super().__init__(f"fell behind by more than {queue_size} messages")
        self.queue_size = queue_size


class Interrupted(Exception):
    """The process's subscription was lost or made again: messages published meanwhile never
    reached this watcher."""

    def __init__(self) -> None:
        super().__init__("the subscription to its events was interrupted")


class Watcher:
    """One watcher's messages from one channel."""

    def __init__(self, size: int, close_slow: bool = False) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.size = size
        self.close_slow = close_slow
        self.fell_behind = False
        self.interrupted = False

    @property
    def pending(self) -> int:
        """Messages delivered and not yet read."""
        return self._queue.qsize()

    def deliver(self, data: bytes) -> None:
        if self.fell_behind or self.interrupted:
            return
        if self._queue.full():
            if self.close_slow:
                self.fell_behind = True
                OVERFLOWS.labels("closed").inc()
                self._close()
                return
            OVERFLOWS.labels("dropped_oldest").inc()
            self._queue.get_nowait()  # the oldest goes: the newest says more about now
        self._queue.put_nowait(data)

    def interrupt(self) -> None:
        """Messages may have been lost: a watcher that closes when slow is closed (its next
        `get` raises Interrupted); another goes on (it reads its row on a quiet `get`)."""
        if self.close_slow and not (self.fell_behind or self.interrupted):
            self.interrupted = True
            self._close()

    def _close(self) -> None:
        while not self._queue.empty():  # nobody will read them: free them now
            self._queue.get_nowait()
        self._queue.put_nowait(b"")  # wakes a get that waits (it raises)

    def _raise_if_closed(self) -> None:
        if self.fell_behind:
            raise FellBehind(self.size)
        if self.interrupted:
            raise Interrupted()

    async def get(self, timeout: float) -> bytes | None:
        """The next message's data, or None after `timeout` seconds without one. FellBehind
        or Interrupted once a watcher that closes when slow has been closed."""
        self._raise_if_closed()
        try:
            data = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        self._raise_if_closed()
        return data


class Fanout:
    def __init__(
        self,
        redis: aioredis.Redis,
        queue_size: int | None = None,
        retry_s: float = 1.0,
        close_slow: bool = False,
    ) -> None:
        self.redis = redis
        self.queue_size = queue_size or QUEUE_SIZE
        self.retry_s = retry_s
        self.close_slow = close_slow
        self._watchers: dict[str, set[Watcher]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        # Subscribe and unsubscribe commands go out in the order the counts changed.
        self._lock = asyncio.Lock()
        # PING tokens sent after a SUBSCRIBE, and what waits for their PONG
        self._pings: dict[str, asyncio.Event] = {}
        self._tokens = itertools.count()
        self._lost = False  # the subscription was lost and is not back

    @property
    def channels(self) -> int:
        """Channels with at least one watcher."""
        return len(self._watchers)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watcher]:
        """A Watcher of `channel` for the duration of the block, subscribed when it starts."""
        watcher = Watcher(self.queue_size, self.close_slow)
        try:
            await self._add(channel, watcher)
            yield watcher
        finally:
            await self._remove(channel, watcher)

    async def _add(self, channel: str, watcher: Watcher) -> None:
        confirmed = asyncio.Event()
        async with self._lock:
            listeners = self._watchers.setdefault(channel, set())
            listeners.add(watcher)
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    pubsub = await self._open()
                elif len(listeners) == 1:
                    await pubsub.subscribe(channel)
                # Redis answers commands of one connection in order: the PONG of a PING sent
                # after the SUBSCRIBE (this one's, or an earlier watcher's still in flight)
                # says the subscription is in place
                token = f"watch-{next(self._tokens)}"
                self._pings[token] = confirmed
                await pubsub.ping(token)
            except _COMMAND_LOST as exc:
                self._interrupt(f"subscribe failed ({exc!r})")
                await self._drop()  # the reader connects again and subscribes to all
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read())
        # Redis away or slow: go on (the watcher reads its rows too) rather than hang
        try:
            await asyncio.wait_for(confirmed.wait(), CONFIRM_S)
        except TimeoutError:
            log.warning("pub/sub: %s not confirmed in %.0f s: watching anyway", channel, CONFIRM_S)

    async def _remove(self, channel: str, watcher: Watcher) -> None:
        async with self._lock:
            listeners = self._watchers.get(channel)
            if listeners is None:
                return
            listeners.discard(watcher)
            if listeners:
                return
            del self._watchers[channel]
            if not self._watchers:
                # nobody left: stop reading now and give the connection back, rather than
                # leave a task and a connection behind a loop that may be closing
                if self._reader is not None and self._reader is not asyncio.current_task():
                    self._reader.cancel()
                self._reader = None
                await self._drop()
            elif self._pubsub is not None:
                try:
                    await self._pubsub.unsubscribe(channel)
                except _COMMAND_LOST as exc:
                    self._interrupt(f"unsubscribe failed ({exc!r})")
                    await self._drop()

    async def _connect(self) -> PubSub:
        async with self._lock:
            return self._pubsub or await self._open()

    async def _open(self) -> PubSub:
        """A new subscription to every watched channel (the lock held)."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.connect()
            if self._watchers:
                await pubsub.subscribe(*self._watchers)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        # connected: from now on the connection's connect callbacks run only when it is made
        # again (redis-py resubscribes on its own then, but what was published meanwhile is gone)
        assert pubsub.connection is not None
        pubsub.connection.register_connect_callback(self._reconnected)
        self._pubsub = pubsub
        return pubsub

    def _reconnected(self, connection: object) -> None:
        self._interrupt("connection made again")

    def _interrupt(self, why: str) -> None:
        """The subscription was lost: its watchers may have missed messages."""
        INTERRUPTIONS.inc()
        watchers = [w for listeners in self._watchers.values() for w in listeners]
        log.warning(
            "pub/sub subscription interrupted (%s): what was published meanwhile is lost; "
            "%d watchers told to watch again",
            why,
            sum(w.close_slow for w in watchers),
        )
        for watcher in watchers:
            watcher.interrupt()

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None and pubsub.connection is not None:
            # the connection goes back to the pool: its next user's reconnects are not ours
            with contextlib.suppress(ValueError):
                pubsub.connection.deregister_connect_callback(self._reconnected)
        # the PONGs would have come on that connection: nobody waits for them any longer
        pings, self._pings = self._pings, {}
        for confirmed in pings.values():
            confirmed.set()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read(self) -> None:
        while self._watchers:
            try:
                pubsub = await self._connect()
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except _REDIS_DOWN as exc:
                # once, not every retry_s while Redis is away
                if self._pubsub is not None or not self._lost:
                    self._interrupt(f"connection lost ({exc})")
                self._lost = True
                async with self._lock:
                    await self._drop()
                # Redis restarted: the idle pooled connections are all dead too
                with contextlib.suppress(Exception):
                    await self.redis.connection_pool.disconnect(inuse_connections=False)
                await asyncio.sleep(self.retry_s)
                continue
            if self._lost:
                self._lost = False
                log.info("pub/sub connection back: %d channels watched", len(self._watchers))
            if msg is None:
                continue
            if msg.get("type") == "pong":
                data = msg["data"]
                token = data.decode() if isinstance(data, bytes) else str(data)
                confirmed = self._pings.pop(token, None)
                if confirmed is not None:
                    confirmed.set()
                continue
            if msg.get("type") != "message":
                continue
            channel = msg["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            for watcher in self._watchers.get(name, ()):
                watcher.deliver(msg["data"])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        async with self._lock:
            await self._drop()
