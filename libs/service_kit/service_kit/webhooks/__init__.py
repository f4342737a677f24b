"""Webhooks: a job's events POSTed, signed, to the URLs its caller gave, off the job's path.

A service's JobStore hands each job event to a WebhookSender, which puts one Dramatiq message
per subscribed hook on the service's own `{prefix}.webhooks` queue (one Redis LPUSH each), so a
slow or dead receiver never slows the job. The `{prefix}_deliver_webhook` actor POSTs it and
records every attempt in `{prefix}_webhook_deliveries`; an attempt that may succeed later raises
dramatiq.Retry, and Dramatiq's Retries middleware sends it again after an exponential backoff
with jitter (min_backoff * 2**retries, times 1..2), up to max_retries times.

What a receiver gets:

    POST <url>
    Content-Type: application/json
    X-Neural-Event: started | progress | completed | failed | cancelled
    X-Neural-Delivery: <id>   the same on every retry of one event to one hook: de-duplicate on it
    X-Neural-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the hook's secret>

    {"delivery_id", "event", "message", "occurred_at", "timestamp", "attempt", "job": {...}}

`timestamp` is when this attempt was signed (a receiver may refuse old ones as replays);
`occurred_at` is when the event happened. Delivery is at least once, and a retried event may
arrive after a later one: order by `occurred_at` or the job's state.

Decisions:
- A secret is required, 16 to 256 characters. It is kept in the job's request (the actor needs
  it to sign, and it never travels in a queue message) and never returned by any RPC.
- 2xx is accepted. 408, 429, 5xx, timeouts and connection errors are retried. Anything else is
  permanent and not retried: a 4xx says the receiver refuses this request, and a 3xx cannot
  succeed because redirects are not followed (a hook may only reach the URL it was given).
- Progress events are sent at most once per `progress_interval` seconds per job.
- An event that cannot be queued (Redis down) is recorded as attempt 0, not delivered.
- A hook that resolves to a non-public address is refused unless NEURAL_WEBHOOK_ALLOW_PRIVATE=1.

The modules, one job each: `validation` (the hooks of a request), `signing` (headers, HMAC),
`records` (the deliveries table), `sender` (the job's side: queueing events), `delivery` (the
worker's side: the actor, its POST and retries) and `address_guard` (no private addresses).
Callers use the names re-exported here (`webhooks.validate`, `webhooks.WebhookSender`, ...).
"""

from .address_guard import ALLOW_PRIVATE_ENV, private_allowed_by_env, refusal
from .delivery import (
    RETRYABLE_STATUS,
    Attempt,
    DeliveryOptions,
    declare_actor,
    deliver,
    delivery_task,
    post,
)
from .records import MAX_ERROR_CHARS, Delivery, deliveries, delivery_table, record, to_proto
from .sender import ENQUEUE_TIMEOUT_S, Queued, WebhookSender, enqueue, job_json
from .signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, headers, sign, verify
from .validation import (
    EVENTS,
    MAX_HOOKS,
    MAX_SECRET_CHARS,
    MAX_URL_CHARS,
    MIN_SECRET_CHARS,
    subscribed,
    validate,
)

__all__ = [
    "ALLOW_PRIVATE_ENV",
    "DELIVERY_HEADER",
    "ENQUEUE_TIMEOUT_S",
    "EVENTS",
    "EVENT_HEADER",
    "MAX_ERROR_CHARS",
    "MAX_HOOKS",
    "MAX_SECRET_CHARS",
    "MAX_URL_CHARS",
    "MIN_SECRET_CHARS",
    "RETRYABLE_STATUS",
    "SIGNATURE_HEADER",
    "Attempt",
    "Delivery",
    "DeliveryOptions",
    "Queued",
    "WebhookSender",
    "declare_actor",
    "deliver",
    "deliveries",
    "delivery_table",
    "delivery_task",
    "enqueue",
    "headers",
    "job_json",
    "post",
    "private_allowed_by_env",
    "record",
    "refusal",
    "sign",
    "subscribed",
    "to_proto",
    "validate",
    "verify",
]
