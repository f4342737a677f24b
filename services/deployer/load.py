"""In-flight predictions, the autoscaler's signal: each deployer server counts the Predict calls
it has open per deployment and publishes the peak of every half second to Redis, where the
controller adds up every server's (and, when it can reach Envoy's admin, the gateway's
requests in flight to each deployment's cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator

import redis.asyncio as aioredis

PREFIX = "neural:deployer:inflight:"  # + the server's id: a hash of deployment id -> peak
PUBLISH_EVERY = 0.5
TTL_MS = 3000  # a server that stops publishing stops counting


class InFlight:
    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.key = PREFIX + uuid.uuid4().hex

    @contextlib.contextmanager
    def track(self, deployment_id: str) -> Iterator[None]:
        self.now[deployment_id] += 1
        self.peak[deployment_id] = max(self.peak[deployment_id], self.now[deployment_id])
        try:
            yield
        finally:
            self.now[deployment_id] -= 1
            if not self.now[deployment_id]:
                del self.now[deployment_id]

    def take(self) -> dict[str, int]:
        """The peaks since the last call, and a new window starting at the current counts."""
        peaks = dict(self.peak)
        self.peak = Counter(self.now)
        return peaks

    async def publish(self, client: aioredis.Redis) -> None:
        while True:
            peaks = self.take()
            with contextlib.suppress(Exception):  # the autoscaler is blind for a moment only
                async with client.pipeline(transaction=True) as pipe:
                    pipe.delete(self.key)
                    if peaks:
                        pipe.hset(self.key, mapping=peaks)
                        pipe.pexpire(self.key, TTL_MS)
                    await pipe.execute()
            await asyncio.sleep(PUBLISH_EVERY)


async def read(client: aioredis.Redis) -> Counter[str]:
    """Every server's in-flight peaks, added up per deployment id."""
    total: Counter[str] = Counter()
    async for key in client.scan_iter(match=PREFIX + "*", count=100):
        for deployment_id, value in (await client.hgetall(key)).items():
            total[deployment_id.decode()] += int(value)
    return total


def envoy_active(stats: dict) -> Counter[str]:
    """Requests in flight per deployment name, from Envoy's `/stats?format=json`."""
    out: Counter[str] = Counter()
    for stat in stats.get("stats", []):
        name = stat.get("name", "")
        if name.startswith("cluster.deployment.") and name.endswith(".upstream_rq_active"):
            deployment = name.removeprefix("cluster.deployment.").removesuffix(
                ".upstream_rq_active"
            )
            out[deployment] += int(stat.get("value", 0))
    return out
