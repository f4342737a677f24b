"""One Redis pub/sub subscription per process, shared by every watcher in it.

A Watch* stream that opened a subscription of its own held a Redis connection for its whole
life: one caller's hundred streams took a hundred connections and a hundred readers, and
starved everyone else's watches. Here a process reads one subscription; a channel is
subscribed while at least one watcher listens to it; every message is copied to each of its
watchers' bounded queues. A slow watcher loses its oldest messages and never slows another
(watchers read their rows too, so a lost message only delays what they learn). When Redis
goes away the reader connects again after a pause and subscribes again to every channel
still watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # messages one watcher may fall behind by
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)


class Watcher:
    """One watcher's messages from one channel."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(size)

    @property
    def pending(self) -> int:
        """Messages delivered and not yet read."""
        return self._queue.qsize()

    def deliver(self, data: bytes) -> None:
        if self._queue.full():  # the oldest goes: the newest says more about now
            self._queue.get_nowait()
        self._queue.put_nowait(data)

    async def get(self, timeout: float) -> bytes | None:
        """The next message's data, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


class Fanout:
    def __init__(
        self, redis: aioredis.Redis, queue_size: int = QUEUE_SIZE, retry_s: float = 1.0
    ) -> None:
        self.redis = redis
        self.queue_size = queue_size
        self.retry_s = retry_s
        self._watchers: dict[str, set[Watcher]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        # Subscribe and unsubscribe commands go out in the order the counts changed.
        self._lock = asyncio.Lock()

    @property
    def channels(self) -> int:
        """Channels with at least one watcher."""
        return len(self._watchers)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watcher]:
        """A Watcher of `channel` for the duration of the block."""
        watcher = Watcher(self.queue_size)
        await self._add(channel, watcher)
        try:
            yield watcher
        finally:
            await self._remove(channel, watcher)

    async def _add(self, channel: str, watcher: Watcher) -> None:
        async with self._lock:
            listeners = self._watchers.setdefault(channel, set())
            listeners.add(watcher)
            # subscribed before the watch starts, so an event right after it is not missed
            try:
                if self._pubsub is None:
                    await self._open()
                elif len(listeners) == 1:
                    await self._pubsub.subscribe(channel)
            except _REDIS_DOWN:
                await self._drop()  # the reader connects again and subscribes to all
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read())

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
                except _REDIS_DOWN:
                    await self._drop()

    async def _connect(self) -> PubSub:
        async with self._lock:
            return self._pubsub or await self._open()

    async def _open(self) -> PubSub:
        """A new subscription to every watched channel (the lock held)."""
        pubsub = self.redis.pubsub()
        try:
            if self._watchers:
                await pubsub.subscribe(*self._watchers)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        self._pubsub = pubsub
        return pubsub

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read(self) -> None:
        while self._watchers:
            try:
                pubsub = await self._connect()
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except _REDIS_DOWN as exc:
                log.warning("pub/sub connection lost (%s): connecting again", exc)
                async with self._lock:
                    await self._drop()
                # Redis restarted: the idle pooled connections are all dead too
                with contextlib.suppress(Exception):
                    await self.redis.connection_pool.disconnect(inuse_connections=False)
                await asyncio.sleep(self.retry_s)
                continue
            if msg is None or msg.get("type") != "message":
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
