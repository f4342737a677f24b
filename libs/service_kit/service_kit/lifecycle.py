"""One job's way through its states, the same in every worker (compile, training, search).

    QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED

Dramatiq delivers a message at least once, and a job must still end once, with a reason:
- A message for a job that has ended is skipped: a redelivery of a finished job, or a job
  cancelled while it was queued.
- Every start is an attempt, counted on the job. A worker killed during a job (SIGKILL, out of
  memory) raises nothing, so Dramatiq's retry count never moves and the broker would hand the
  message out for ever: past `max_attempts` starts, the next delivery fails the job instead.
- An exception Dramatiq retries ends, after the last retry, in the actor named by
  `on_retry_exhausted`, which calls `give_up`.
- A job ends once: `JobStore.finish` is a conditional update, and only the call that made it
  publishes the event (and queues its webhooks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, TERMINAL, JobRecord, JobStore, now

MAX_ERROR_CHARS = 2000


class Lifecycle:
    def __init__(self, jobs: JobStore, job_id: str, max_attempts: int) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.max_attempts = max_attempts

    async def start(self, **values: Any) -> JobRecord | None:
        """Mark the job running (one more attempt; the first start time is kept on a resume)
        and return it; None when it must not run: it has ended, was cancelled while queued,
        or has had its attempts (it is then failed)."""
        rec = await self.jobs.get(self.job_id)
        if rec.state in TERMINAL:
            return None
        if rec.cancel_requested:
            await self.cancel("cancelled before it started")
            return None
        if rec.attempts >= self.max_attempts:
            await self.fail(
                f"gave up after {rec.attempts} attempts: the worker stopped during each "
                "(killed, or out of memory)"
            )
            return None
        attempt = rec.attempts + 1
        return await self.jobs.update(
            self.job_id,
            "started",
            f"resumed (attempt {attempt})" if attempt > 1 else "started",
            state=RUNNING,
            started_at=rec.started_at or now(),
            attempts=attempt,
            **values,
        )

    async def cancel_requested(self) -> bool:
        return (await self.jobs.get(self.job_id)).cancel_requested

    async def succeed(self, result: str, message: str = "", **values: Any) -> bool:
        """End the job with its result; False when it had already ended."""
        done = await self.jobs.finish(
            self.job_id, SUCCEEDED, message or result, result=result, **values
        )
        return done is not None

    async def fail(self, reason: str, message: str = "", **values: Any) -> bool:
        """End the job with the reason it failed; False when it had already ended."""
        done = await self.jobs.finish(
            self.job_id, FAILED, message or reason, error=reason[:MAX_ERROR_CHARS], **values
        )
        return done is not None

    async def cancel(self, message: str = "cancelled", **values: Any) -> bool:
        done = await self.jobs.finish(self.job_id, CANCELLED, message, **values)
        return done is not None


def exhausted(message: Mapping[str, Any], retry_info: Mapping[str, Any]) -> tuple[str, str]:
    """The job id and the reason, from what Dramatiq sends the `on_retry_exhausted` actor
    (the failed message as a dict, with its last traceback in its options)."""
    job_id = str(message["args"][0])
    trace = str(message.get("options", {}).get("traceback", "")).strip().splitlines()
    last = trace[-1] if trace else "an infrastructure failure"
    tries = int(retry_info.get("retries", 0) or 0) + 1
    return job_id, f"gave up after {tries} attempts: {last}"


async def give_up(
    jobs: JobStore, message: Mapping[str, Any], retry_info: Mapping[str, Any]
) -> bool:
    """Fail the job whose retries ran out, once; False when it had already ended."""
    job_id, reason = exhausted(message, retry_info)
    return await Lifecycle(jobs, job_id, 0).fail(reason)
