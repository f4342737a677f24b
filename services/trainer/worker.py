"""The training worker process: `dramatiq services.trainer.worker` pulls training and search
jobs (queue `training`) and the webhook deliveries of their events (`trainer.webhooks`).

A job trains in a thread while the event loop logs each finished epoch to the tracker,
publishes progress and watches for cancellation. Every epoch is checkpointed first, so a
worker killed mid-job loses at most one epoch: the broker redelivers the message, the job
resumes from its checkpoint, and only epochs the tracker has not seen are logged again.

This module is what the dramatiq CLI imports: it loads the settings, sets up logging, the
broker and its middleware, then declares the actors (`actors.py`). Nothing else imports it;
the server sends its messages by name (`tasks.py`).
"""

from __future__ import annotations

from dramatiq.middleware import TimeLimit
from dramatiq.middleware.prometheus import Prometheus
from service_kit import logs
from service_kit.actor_loop import CloseThreadLoops
from service_kit.broker import setup_broker
from service_kit.heartbeat import Heartbeat
from service_kit.settings import load

from .warmup import WarmUp

settings = load("trainer")
logs.setup("trainer-worker", settings.log_level)
broker = setup_broker(settings)  # before the actors declare themselves on it
for middleware in broker.middleware:
    if isinstance(middleware, TimeLimit):
        # a job's own deadline stops its loop cleanly; this one is the backstop
        middleware.time_limit = (settings.training_time_limit_s + 300) * 1000
broker.add_middleware(Heartbeat(settings.redis_url))  # listed by ListWorkers
broker.add_middleware(Prometheus())
# ready to train before the consumers start: PyTorch warmed, TensorFlow imported after boot
broker.add_middleware(WarmUp(settings.limits()))

from . import actors  # noqa: E402  (declared on the broker above)

# each worker thread's loop and connections, kept from job to job, close with the thread
broker.add_middleware(CloseThreadLoops(actors.LOOP))
