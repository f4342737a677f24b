"""One attempt at one job: load, train in a thread, log to the tracker, report, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from neural_dsl import DSLError
from service_kit import db, lifecycle
from service_kit.delegation import OwnerTokens
from service_kit.jobs import JobStore
from service_kit.lifecycle import Lifecycle
from service_kit.settings import Settings, service_address
from service_kit.webhooks import WebhookSender
from sqlalchemy.ext.asyncio import AsyncEngine

from . import plan, tables, tasks, training
from .dataset_store import DatasetStore
from .datasets import Arrays, DatasetError
from .plan import TrainingRequest
from .run_params import run_params
from .tracker_client import FAILED as RUN_FAILED
from .tracker_client import FINISHED as RUN_FINISHED
from .tracker_client import KILLED as RUN_KILLED
from .tracker_client import TrackerClient

PROGRESS_EVERY_S = 1.0  # batch-level progress updates, at most this often
CANCEL_POLL_S = 0.25


class TimeLimitExceeded(Exception):
    pass


def infrastructure(exc: BaseException) -> bool:
    """A failure of what the job runs on (network, database, Redis, disk), worth a retry."""
    import redis
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.INTERNAL,
        )
    return isinstance(
        exc, OSError | TimeoutError | redis.RedisError | OperationalError | DBAPIError
    )


class JobFailed(Exception):
    """The caller's mistake (program, data, settings): fail once, never retry."""


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    jobs: JobStore
    datasets: DatasetStore
    # How the worker acts for a job's owner at the tracker; None when auth is disabled.
    tokens: OwnerTokens | None = None

    @classmethod
    def open(cls, settings: Settings, sender: WebhookSender | None = None) -> Resources:
        engine = db.make_engine(settings.database_url)
        tokens = None
        if not settings.auth_disabled:
            tokens = OwnerTokens(service_address("authz"), settings.service_key_file)
        return cls(
            settings,
            engine,
            JobStore(engine, tables.jobs, settings.redis_url, sender),
            DatasetStore(engine, settings.storage_dir, 0),
            tokens,
        )

    def workdir(self, job_id: str) -> Path:
        return self.settings.storage_dir / "training" / job_id

    def tracker(self, owner: str) -> TrackerClient:
        return TrackerClient(service_address("tracker"), self.tokens, owner)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.jobs.redis.aclose()
        await self.engine.dispose()


class Reporter(training.Callbacks):
    """The training thread's callbacks, which hand their I/O to the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cancel: threading.Event,
        deadline: float,
        steps_per_epoch: int,
        epochs: int,
        on_epoch: Callable[[training.EpochResult], Any],
        on_progress: Callable[[int, int, float, float], Any],
    ) -> None:
        self.loop = loop
        self.cancel = cancel
        self.deadline = deadline
        self.steps = max(1, steps_per_epoch)
        self.epochs = epochs
        self._on_epoch = on_epoch
        self._on_progress = on_progress
        self._last = 0.0
        self._pending: Any = None

    def should_stop(self) -> bool:
        if time.monotonic() > self.deadline:
            raise TimeLimitExceeded("the job ran past its time limit")
        return self.cancel.is_set()

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        t = time.monotonic()
        if t - self._last < PROGRESS_EVERY_S or (self._pending and not self._pending.done()):
            return  # never wait on the database from inside the training loop
        self._last = t
        done = (epoch - 1 + min(step, self.steps) / self.steps) / self.epochs
        self._pending = asyncio.run_coroutine_threadsafe(
            self._on_progress(epoch, step, loss, done), self.loop
        )

    def on_epoch(self, result: training.EpochResult) -> None:
        # waits: the epoch's metrics reach the tracker in order, before the next epoch
        asyncio.run_coroutine_threadsafe(self._on_epoch(result), self.loop).result(timeout=120)


class JobRunner:
    def __init__(self, res: Resources, job_id: str, max_attempts: int) -> None:
        self.res = res
        self.jobs = res.jobs
        self.job_id = job_id
        self.life = Lifecycle(res.jobs, job_id, max_attempts)
        self.details: dict[str, Any] = {}

    async def run(self, work: Work) -> None:
        """One attempt: `work` is `JobRunner.train` or `search.run_search` (the actor picks)."""
        rec = await self.life.start()
        if rec is None:  # ended, cancelled, or out of attempts: nothing will resume from it
            shutil.rmtree(self.res.workdir(self.job_id), ignore_errors=True)
            return
        self.details = dict(rec.details)
        self.owner = rec.owner
        req = TrainingRequest.from_json(rec.request)
        tracker = self.res.tracker(rec.owner)
        try:
            await work(self, req, tracker)
        except JobFailed as exc:
            await self._end(tracker, RUN_FAILED, str(exc))
        except training.Cancelled:
            await self._end(tracker, RUN_KILLED)
        except TimeLimitExceeded as exc:
            await self._end(tracker, RUN_FAILED, str(exc))
        except Exception as exc:
            if infrastructure(exc):
                raise  # Dramatiq retries the message with backoff
            # anything else comes from the program itself (a layer torch rejects at run time)
            await self._end(tracker, RUN_FAILED, f"training failed: {type(exc).__name__}: {exc}")
        finally:
            await tracker.close()

    # ------------------------------------------------------------------ parts
    def prepare(
        self, req: TrainingRequest, hparams: dict[str, Any]
    ) -> tuple[Any, Arrays, training.TrainSpec]:
        """Program, data and settings, checked; JobFailed names what is wrong."""
        limits = self.res.settings.limits()
        try:
            network = plan.network_of(req.source, req.network, limits)
            data = plan.load_data(req, network, self._load_uploaded)
            plan.check_fit(
                network, req.backend, hparams, data.x.shape[1:], data.num_classes, limits
            )
            spec = training.resolve_spec(
                network,
                req.backend,
                epochs=req.epochs,
                batch_size=req.batch_size,
                learning_rate=req.learning_rate,
                validation_split=req.validation_split,
                hparams=hparams,
                threads=self._threads(),
            )
        except DSLError as exc:
            d = exc.first
            raise JobFailed(f"{d.line}:{d.column}: {d.message}") from None
        except (DatasetError, ValueError) as exc:
            raise JobFailed(str(exc)) from None
        return network, data, spec

    def _threads(self) -> int | None:
        """The cores one job may use: all of them, shared out when a worker process runs
        several jobs at once (NEURAL_WORKER_THREADS), so jobs do not fight over them."""
        per_process = self.res.settings.worker_threads
        if per_process <= 1:
            return None
        return max(1, (os.cpu_count() or 1) // per_process)

    def _load_uploaded(self, dataset_id: str) -> Arrays:
        async def load() -> Arrays:
            record = await self.res.datasets.get(dataset_id, self.owner)
            return await asyncio.to_thread(self.res.datasets.load, record)

        # called from a worker thread by plan.load_data
        return asyncio.run_coroutine_threadsafe(load(), self.loop).result(timeout=600)

    async def save_details(self, event: str = "progress", message: str = "", **values: Any) -> None:
        """Write the details (and `values`) with an event; no event when `event` is empty."""
        if event:
            await self.jobs.update(self.job_id, event, message, details=self.details, **values)
        else:
            await self.jobs.save(self.job_id, details=self.details, **values)

    async def ensure_run(
        self, tracker: TrackerClient, req: TrainingRequest, key: str, name: str, tags: dict
    ) -> str:
        """The tracker run recorded under details[key], created once (redeliveries reuse it)."""
        if not self.details.get("experiment_id"):
            self.details["experiment_id"] = await tracker.experiment_id(
                req.experiment or plan.DEFAULT_EXPERIMENT
            )
        if not self.details.get(key):
            self.details[key] = await tracker.create_run(
                self.details["experiment_id"], name, self.job_id, tags
            )
            await self.save_details("")
        return self.details[key]

    async def fit(
        self,
        tracker: TrackerClient,
        run_id: str,
        req: TrainingRequest,
        hparams: dict[str, Any],
        workdir: Path,
        progress_span: tuple[float, float] = (0.0, 1.0),
        onnx: bool = True,
        epoch_events: bool = True,
    ) -> training.TrainOutcome:
        """Train one model, logging each epoch to `run_id` exactly once. With `epoch_events`,
        each finished epoch is one `progress` event (a search tells of its trials instead);
        progress within an epoch is written to the job without an event."""
        self.loop = asyncio.get_running_loop()
        network, data, spec = await asyncio.to_thread(self.prepare, req, hparams)
        params = await asyncio.to_thread(run_params, req, network, spec, self.job_id, hparams)
        await tracker.log_params(run_id, params)
        logged = await tracker.last_step(run_id, "loss")
        low, high = progress_span

        async def on_epoch(result: training.EpochResult) -> None:
            nonlocal logged
            if result.epoch > logged:
                await tracker.log_metrics(run_id, result.epoch, result.metrics)
                logged = result.epoch
            # epochs: the total this training runs (the request's or the program's), so a
            # client can show "epoch 3/8" without reading it from the message
            self.details.update(
                epoch=result.epoch,
                epochs_done=result.epoch,
                epochs=spec.epochs,
                metrics=result.metrics,
            )
            await self.save_details(
                "progress" if epoch_events else "",
                f"epoch {result.epoch}/{spec.epochs}",
                progress=low + (high - low) * result.epoch / spec.epochs,
            )

        async def on_progress(epoch: int, step: int, loss: float, done: float) -> None:
            # no event and no details: an event per batch would repeat the last epoch's
            # metrics under the next epoch's number
            with contextlib.suppress(Exception):  # progress is best effort
                await self.jobs.save(self.job_id, progress=low + (high - low) * done)

        n_train = len(data.x) - int(len(data.x) * spec.validation_split)
        cancel = threading.Event()
        reporter = Reporter(
            self.loop,
            cancel,
            time.monotonic() + self.res.settings.training_time_limit_s,
            math.ceil(n_train / spec.batch_size),
            spec.epochs,
            on_epoch,
            on_progress,
        )
        watcher = asyncio.create_task(self._watch_cancel(cancel))
        try:
            outcome = await asyncio.to_thread(
                training.train, network, hparams, data, spec, workdir, reporter, onnx=onnx
            )
        finally:
            watcher.cancel()
        for result in outcome.history:  # epochs restored from a checkpoint the tracker lacks
            if result.epoch > logged:
                await tracker.log_metrics(run_id, result.epoch, result.metrics)
                logged = result.epoch
        return outcome

    async def _watch_cancel(self, cancel: threading.Event) -> None:
        while True:
            with contextlib.suppress(Exception):  # a database blip must not stop training
                if (await self.jobs.get(self.job_id)).cancel_requested:
                    cancel.set()
                    return
            await asyncio.sleep(CANCEL_POLL_S)

    async def train(self, req: TrainingRequest, tracker: TrackerClient) -> None:
        run_id = await self.ensure_run(
            tracker, req, "run_id", f"train-{self.job_id[:8]}", {"job_kind": "training"}
        )
        workdir = self.res.workdir(self.job_id)
        outcome = await self.fit(tracker, run_id, req, dict(req.hparams), workdir)
        files = [("model.neural", self._source_file(workdir, req.source))]
        files.append((outcome.weights_path.name, outcome.weights_path))
        if outcome.onnx_path is not None:
            files.append(("model.onnx", outcome.onnx_path))
        artifacts = await tracker.upload_all(run_id, files)
        await tracker.set_status(run_id, RUN_FINISHED)
        final = outcome.history[-1].metrics if outcome.history else {}
        self.details.update(
            metrics=final,
            artifacts=artifacts,
            device=outcome.device,
            resumed_from=outcome.resumed_from,
        )
        await self.life.succeed(f"runs/{run_id}", progress=1.0, details=self.details)
        shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _source_file(workdir: Path, source: str) -> Path:
        path = workdir / "model.neural"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
        return path

    async def _end(self, tracker: TrackerClient, run_status: int, reason: str = "") -> None:
        """Fail the job with `reason`, or cancel it without one; its runs get `run_status`."""
        for key in ("run_id", "trial_run_id"):
            run_id = self.details.get(key)
            if run_id:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await tracker.set_status(run_id, run_status)
        self.details.pop("trial_run_id", None)
        if reason:
            await self.life.fail(reason, details=self.details)
        else:
            await self.life.cancel(details=self.details)
        shutil.rmtree(self.res.workdir(self.job_id), ignore_errors=True)


Work = Callable[[JobRunner, TrainingRequest, TrackerClient], Awaitable[None]]


def open_resources(settings: Settings) -> Resources:
    """What the actors run on: opened once per worker thread and kept from job to job
    (`service_kit.actor_loop`), so a job starts without connecting to anything."""
    return Resources.open(settings, WebhookSender(tasks.WEBHOOKS, tables.deliveries))


async def run_job(res: Resources, job_id: str, work: Work, max_attempts: int) -> None:
    """What the `train_model` and `search_model` actors run."""
    await JobRunner(res, job_id, max_attempts).run(work)


async def gave_up(
    res: Resources, message: Mapping[str, Any], retry_info: Mapping[str, Any]
) -> None:
    """What `training_gave_up` runs when a job's retries ran out."""
    await lifecycle.give_up(res.jobs, message, retry_info)
    job_id, _ = lifecycle.exhausted(message, retry_info)
    shutil.rmtree(res.workdir(job_id), ignore_errors=True)
