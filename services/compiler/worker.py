"""The compile worker process: `dramatiq services.compiler.worker` pulls compile jobs from
Redis, and the webhook deliveries of their events (queue `compiler.webhooks`; a separate
worker may take those alone with `--queues compiler.webhooks`).

This module is what the dramatiq CLI imports: it loads the settings, sets up logging and the
broker, then declares the actors (`actors.py`). Nothing else imports it; the server sends
its messages by name (`tasks.py`).
"""

from __future__ import annotations

from service_kit import logs
from service_kit.broker import setup_broker
from service_kit.heartbeat import Heartbeat
from service_kit.settings import load

settings = load("compiler")
logs.setup("compiler-worker", settings.log_level)
broker = setup_broker(settings)  # before the actors declare themselves on it
broker.add_middleware(Heartbeat(settings.redis_url))  # listed by trainer.ListWorkers

from . import actors  # noqa: E402,F401  (declared on the broker above)
