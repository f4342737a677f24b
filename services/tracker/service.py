"""TrackerService: experiments, runs, params, metrics, artifacts, search, comparison, plots."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2, timestamp_pb2
from neural.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc
from service_kit import errors, owners, pagination, request_checks
from service_kit.fanout import Fanout, FellBehind, Interrupted
from service_kit.http_bodies import content_disposition, http_bodies
from service_kit.interceptors import principal
from service_kit.redis_clients import async_client
from service_kit.roles import service_roles
from service_kit.streams import StreamCap

from . import compare, wire
from .artifacts import ArtifactStore, clean_path
from .events import NEWEST, RunEvents, channel
from .plots import MAX_PLOTTED, Curves, plot_png, plot_points, seconds_since_start, unplottable
from .points.batches import Batch
from .store import TrackerStore
from .store.common import now
from .store.metrics import Point

SERVICE = "neural.v1.TrackerService"
CHUNK = 64 * 1024
STATUS = {1: "RUNNING", 2: "FINISHED", 3: "FAILED", 4: "KILLED"}
STATUS_ENUM = {v: k for k, v in STATUS.items()}
EMPTY = empty_pb2.Empty()
ARTIFACTS = "tracker_artifacts"  # the listing of ListArtifacts' page tokens

METHOD_ROLES = service_roles(SERVICE)  # declared in the protos


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return ts


def _ms_ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _experiment(row: Any, count: int = 0) -> tracker_pb2.Experiment:
    return tracker_pb2.Experiment(
        id=row.id,
        name=row.name,
        owner=row.owner,
        create_time=_ts(row.created_at),
        update_time=_ts(row.updated_at),
        delete_time=_ts(row.deleted_at),
        run_count=count,
    )


def _metric(p: Point) -> tracker_pb2.Metric:
    return tracker_pb2.Metric(key=p.key, value=p.value, step=p.step, timestamp=_ms_ts(p.timestamp))


def _run(row: Any, details: dict[str, Any]) -> tracker_pb2.Run:
    return tracker_pb2.Run(
        id=row.id,
        experiment_id=row.experiment_id,
        name=row.name,
        status=STATUS_ENUM[row.status],
        start_time=_ts(row.start_time),
        end_time=_ts(row.end_time),
        owner=row.owner,
        params=details["params"],
        tags=details["tags"],
        latest_metrics=[_metric(p) for p in details["latest"]],
        job_id=row.job_id,
    )


def _batch(ms: Any) -> Batch:
    """The request's points as columns: one pass over the messages, the rest in C. Reading an
    unset timestamp would build a message for nothing, hence HasField."""
    rows = [
        (
            m.key,
            m.step,
            m.value,
            m.timestamp.seconds * 1000 + m.timestamp.nanos // 1_000_000
            if m.HasField("timestamp")
            else 0,
        )
        for m in ms
    ]
    return Batch(*zip(*rows, strict=True)) if rows else Batch((), (), (), ())


class TrackerService(tracker_pb2_grpc.TrackerServiceServicer):
    def __init__(
        self,
        store: TrackerStore,
        artifacts: ArtifactStore,
        redis_url: str,
        max_watches_per_principal: int = 20,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.redis = async_client(redis_url, socket_timeout=5, socket_connect_timeout=2)
        # events have a client of their own: a publish never waits for a connection that
        # the watchers' subscription (or anything else) holds
        self.events = RunEvents(async_client(redis_url, socket_timeout=5, socket_connect_timeout=2))
        # a watcher that falls behind is closed, told so, rather than silently missing points
        self.fanout = Fanout(self.redis, close_slow=True)
        self.watches = StreamCap(max_watches_per_principal)

    async def _run_message(self, row: Any) -> tracker_pb2.Run:
        return _run(row, (await self.store.runs.details([row.id]))[row.id])

    # ------------------------------------------------------------------ experiments
    async def CreateExperiment(self, request: Any, context: Any) -> Any:
        row = await self.store.experiments.create(principal().subject, request.experiment.name)
        return _experiment(row)

    async def ListExperiments(self, request: Any, context: Any) -> Any:
        rows, token = await self.store.experiments.page(
            owners.scope(),
            request.page_size,
            request.page_token,
            request.name,
            request.include_deleted,
        )
        counts = await self.store.runs.counts([r.id for r in rows])
        return tracker_pb2.ListExperimentsResponse(
            experiments=[_experiment(r, sum(counts[r.id].values())) for r in rows],
            next_page_token=token,
        )

    async def GetExperiment(self, request: Any, context: Any) -> Any:
        row = await self.store.experiments.get(request.id, owners.scope())
        counts = await self.store.runs.counts([row.id])
        return _experiment(row, sum(counts[row.id].values()))

    async def UpdateExperiment(self, request: Any, context: Any) -> Any:
        paths = set(request.update_mask.paths) or {"name"}
        if paths - {"name"}:
            raise errors.InvalidArgument(
                "only 'name' can be updated", [errors.FieldViolation("update_mask", "only name")]
            )
        row = await self.store.experiments.rename(
            request.experiment.id, owners.scope(), request.experiment.name
        )
        return _experiment(row)

    async def DeleteExperiment(self, request: Any, context: Any) -> Any:
        return _experiment(
            await self.store.experiments.set_deleted(request.id, owners.scope(), True)
        )

    async def RestoreExperiment(self, request: Any, context: Any) -> Any:
        return _experiment(
            await self.store.experiments.set_deleted(request.id, owners.scope(), False)
        )

    async def PurgeExperiment(self, request: Any, context: Any) -> Any:
        for run_id in await self.store.experiments.purge(request.id, owners.scope()):
            await asyncio.to_thread(self.artifacts.delete_run, run_id)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ runs
    async def CreateRun(self, request: Any, context: Any) -> Any:
        start = (
            request_checks.datetime_of(request.run.start_time, "run.start_time")
            if request.run.HasField("start_time")
            else None
        )
        row = await self.store.runs.create(
            request.experiment_id, principal().subject, request.run.name, request.run.job_id, start
        )
        if request.run.tags:
            await self.store.tags.set(row.id, None, dict(request.run.tags))
        return await self._run_message(row)

    async def GetRun(self, request: Any, context: Any) -> Any:
        return _run(*await self.store.runs.read(request.id, owners.scope()))

    async def UpdateRun(self, request: Any, context: Any) -> Any:
        paths = set(request.update_mask.paths) or {"name", "status", "end_time"}
        if paths - {"name", "status", "end_time"}:
            raise errors.InvalidArgument(
                "updatable: name, status, end_time",
                [errors.FieldViolation("update_mask", "unknown field")],
            )
        values: dict[str, Any] = {}
        if "name" in paths and request.run.name:
            values["name"] = request.run.name[:500]
        if "status" in paths and request.run.status:
            if request.run.status not in STATUS:
                raise errors.InvalidArgument(
                    "unknown status", [errors.FieldViolation("run.status", "unknown")]
                )
            values["status"] = STATUS[request.run.status]
        if "end_time" in paths and request.run.HasField("end_time"):
            values["end_time"] = request_checks.datetime_of(request.run.end_time, "run.end_time")
        row = await self.store.runs.update(request.run.id, owners.scope(), **values)
        if "status" in values:
            self.events.status(row.id, row.status)
        return await self._run_message(row)

    async def SetTags(self, request: Any, context: Any) -> Any:
        await self.store.tags.set(
            request.run_id, owners.scope(), dict(request.tags), list(request.delete_keys)
        )
        return empty_pb2.Empty()

    async def LogParams(self, request: Any, context: Any) -> Any:
        await self.store.params.log(request.run_id, owners.scope(), dict(request.params))
        return empty_pb2.Empty()

    async def LogMetrics(self, request: Any, context: Any) -> Any:
        stored = await self.store.metrics.log(
            request.run_id, owners.scope(), _batch(request.metrics)
        )
        self._notify(request.run_id, stored)
        return EMPTY

    def _notify(self, run_id: str, batch: Batch) -> None:
        # Watchers get the newest points of a batch; the history keeps all of them.
        if batch.keys:
            keys, steps, values, stamps = (column[-NEWEST:] for column in batch)
            self.events.metrics(run_id, list(zip(keys, values, steps, stamps, strict=True)))

    async def StreamMetrics(self, request_iterator: Any, context: Any) -> Any:
        owner = owners.scope()
        checked: set[str] = set()
        total = batches = 0
        async for request in request_iterator:
            if request.run_id not in checked:
                await self.store.runs.get(request.run_id, owner)
                checked.add(request.run_id)
            stored = await self.store.metrics.log(
                request.run_id, owner, _batch(request.metrics), checked_run=True
            )
            total += len(stored.keys)
            batches += 1
            self._notify(request.run_id, stored)
        return tracker_pb2.StreamMetricsResponse(
            metrics_logged=total, batches=batches, run_ids=sorted(checked)
        )

    async def GetMetricHistory(self, request: Any, context: Any) -> Any:
        page = await self.store.history.page(
            request.run_id,
            owners.scope(),
            request.key,
            request.max_points,
            request.page_size,
            request.page_token,
        )
        response = tracker_pb2.GetMetricHistoryResponse(
            next_page_token=page.next_page_token, downsampled=page.downsampled
        )
        if request.view == tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS:
            response.steps.extend(page.steps.tolist())  # packed arrays: filled in C
            response.values.extend(page.values.tolist())
            response.timestamps_ms.extend(page.timestamps.tolist())
            return response
        wire.fill(response, request.key, page.steps, page.values, page.timestamps)
        return response

    async def WatchRun(self, request: Any, context: Any) -> AsyncIterator[Any]:
        owner = owners.scope()
        keys = set(request.metric_keys)
        # every watch of this process shares one subscription; one caller's watches are capped
        with self.watches.hold(principal().subject):
            async with self.fanout.watch(channel(request.run_id)) as watcher:
                # subscribed: every event logged from here on reaches this watcher
                row = await self.store.runs.get(request.run_id, owner)
                yield await self._status_event(row)
                while row.status == "RUNNING":
                    try:
                        raw = await watcher.get(timeout=1.0)
                    except FellBehind as exc:
                        raise errors.ResourceExhausted(
                            f"this watch fell behind the run's events ({exc}) and was closed: "
                            "watch again, and read GetMetricHistory for what it missed"
                        ) from None
                    except Interrupted:
                        raise errors.Unavailable(
                            "this watch's subscription to the run's events was interrupted "
                            "(the tracker's connection to Redis was lost or made again), so "
                            "events may have been missed: watch again, and read "
                            "GetMetricHistory for what it missed"
                        ) from None
                    data = json.loads(raw) if raw is not None else None
                    if data is not None and data["type"] == "metrics":
                        chosen = [m for m in data["metrics"] if not keys or m[0] in keys]
                        if chosen:
                            yield tracker_pb2.RunEvent(
                                run_id=row.id,
                                type="metrics",
                                time=_ts(now()),
                                metrics=[_metric(Point(*m)) for m in chosen],
                            )
                        continue
                    # a status event, or a second of quiet (Redis may be away): read the row
                    row = await self.store.runs.get(request.run_id, owner)
                    if row.status != "RUNNING":
                        yield await self._status_event(row)

    async def _status_event(self, row: Any) -> Any:
        return tracker_pb2.RunEvent(
            run_id=row.id,
            type="status",
            status=STATUS_ENUM[row.status],
            run=await self._run_message(row),
            time=_ts(now()),
        )

    # ------------------------------------------------------------------ search and compare
    async def SearchRuns(self, request: Any, context: Any) -> Any:
        rows, token = await self.store.search.runs(
            owners.scope(),
            list(request.experiment_ids),
            request.filter,
            list(request.order_by),
            request.page_size,
            request.page_token,
        )
        details = await self.store.runs.details([r.id for r in rows])
        return tracker_pb2.SearchRunsResponse(
            runs=[_run(r, details[r.id]) for r in rows], next_page_token=token
        )

    def _direction(self, key: str, directions: Any) -> int:
        return directions.get(key) or compare.default_direction(key)

    def _fill_best(
        self, target: Any, per_key: dict[str, dict[str, compare.Summary]], directions: Any
    ) -> None:
        """target[key] = the best run of each metric key, by that key's direction."""
        for key, summaries in per_key.items():
            direction = self._direction(key, directions)
            best = compare.best_run(summaries, direction)
            if best:
                run_id, summary = best
                target[key].CopyFrom(
                    tracker_pb2.BestRun(
                        metric_key=key,
                        run_id=run_id,
                        value=summary.best,
                        step=summary.best_step,
                        direction=direction,
                    )
                )

    async def CompareRuns(self, request: Any, context: Any) -> Any:
        ids = list(dict.fromkeys(request.run_ids))
        if not 2 <= len(ids) <= 100:
            raise errors.InvalidArgument(
                "compare 2 to 100 runs", [errors.FieldViolation("run_ids", "2 to 100")]
            )
        if not 0 <= request.curve_points <= compare.MAX_CURVE_POINTS:
            raise errors.InvalidArgument(
                f"curve_points is 0 (no curves) to {compare.MAX_CURVE_POINTS}",
                [errors.FieldViolation("curve_points", f"0 to {compare.MAX_CURVE_POINTS}")],
            )
        owner = owners.scope()
        rows = [await self.store.runs.get(r, owner) for r in ids]
        details = await self.store.runs.details(ids)
        # from each series' summary rows, not its points: the cost does not grow with the runs'
        # length (a whole-series read stopped at 200,000 points, leaving later runs out)
        data = await self.store.history.overviews(ids, list(request.metric_keys))
        keys = sorted({k for per in data.values() for k in per})
        out = tracker_pb2.CompareRunsResponse()
        per_key: dict[str, dict[str, compare.Summary]] = {k: {} for k in keys}
        for row in rows:
            cmp_ = out.runs.add(
                run_id=row.id,
                run_name=row.name,
                experiment_id=row.experiment_id,
                status=STATUS_ENUM[row.status],
                params=details[row.id]["params"],
            )
            for key, seen in data[row.id].items():
                s = compare.summary_of(seen, self._direction(key, request.directions))
                per_key[key][row.id] = s
                cmp_.metrics[key].CopyFrom(tracker_pb2.MetricSummary(**vars(s)))
                if request.curve_points:
                    got = await self.store.history.curve(
                        row.id, key, request.curve_points, seen.span
                    )
                    line = cmp_.curves[key]
                    line.steps.extend(got.steps.tolist())  # packed: filled in C
                    line.values.extend(got.values.tolist())
                    line.downsampled = got.downsampled
        self._fill_best(out.best_runs, per_key, request.directions)
        param_keys = {k for r in rows for k in details[r.id]["params"]}
        out.differing_params.extend(
            sorted(k for k in param_keys if len({details[r.id]["params"].get(k) for r in rows}) > 1)
        )
        return out

    async def CompareExperiments(self, request: Any, context: Any) -> Any:
        ids = list(dict.fromkeys(request.experiment_ids))
        if not 2 <= len(ids) <= 20:
            raise errors.InvalidArgument(
                "compare 2 to 20 experiments", [errors.FieldViolation("experiment_ids", "2 to 20")]
            )
        owner = owners.scope()
        exps = [await self.store.experiments.get(e, owner) for e in ids]
        counts = await self.store.runs.counts(ids)
        all_runs = await self.store.runs.of_experiments(ids)
        # summary rows, not points: a whole-series read would stop somewhere and leave runs out
        data = await self.store.history.overviews(
            [r.id for r in all_runs], list(request.metric_keys)
        )
        run_exp = {r.id: r.experiment_id for r in all_runs}
        out = tracker_pb2.CompareExperimentsResponse()
        overall: dict[str, dict[str, compare.Summary]] = {}
        for exp in exps:
            cmp_ = out.experiments.add(
                experiment_id=exp.id,
                name=exp.name,
                run_count=sum(counts[exp.id].values()),
                status_counts=counts[exp.id],
            )
            per_key: dict[str, dict[str, compare.Summary]] = {}
            for run_id, per in data.items():
                if run_exp[run_id] != exp.id:
                    continue
                for key, seen in per.items():
                    s = compare.summary_of(seen, self._direction(key, request.directions))
                    per_key.setdefault(key, {})[run_id] = s
                    overall.setdefault(key, {})[run_id] = s
            self._fill_best(cmp_.best_runs, per_key, request.directions)
        self._fill_best(out.best_runs, overall, request.directions)
        return out

    async def PlotMetrics(self, request: Any, context: Any) -> Any:
        ids = list(dict.fromkeys(request.run_ids))
        keys = list(dict.fromkeys(request.keys))
        if not 1 <= len(ids) <= 20 or not 1 <= len(keys) <= 10:
            raise errors.InvalidArgument(
                "plot 1 to 20 runs and 1 to 10 keys", [errors.FieldViolation("run_ids", "1 to 20")]
            )
        width, height = request.width or 1200, request.height or 800
        if not (100 <= width <= 4000 and 100 <= height <= 4000):
            raise errors.InvalidArgument(
                "width and height are 100 to 4000 pixels",
                [errors.FieldViolation("width", "100 to 4000")],
            )
        if request.x_axis not in ("", "step", "time"):
            raise errors.InvalidArgument(
                "x_axis is 'step' or 'time'", [errors.FieldViolation("x_axis", "step or time")]
            )
        owner = owners.scope()
        rows = [await self.store.runs.get(r, owner) for r in ids]
        # each line as GetMetricHistory(max_points) samples it (M4): its extremes kept, and
        # the read in proportion to the plot, not to the series
        data = await self.store.history.curves(ids, keys, plot_points(width, len(ids) * len(keys)))
        by_time = request.x_axis == "time"
        starts = {r.id: r.start_time for r in rows}
        curves: Curves = {k: {} for k in keys}
        for r in ids:
            for k, got in data[r].items():
                xs = (
                    [seconds_since_start(t, starts[r]) for t in got.timestamps.tolist()]
                    if by_time
                    else got.steps.tolist()
                )
                curves[k][r] = list(zip(xs, got.values.tolist(), strict=True))
        too_large = unplottable(curves)
        if too_large is not None:
            raise errors.FailedPrecondition(
                f"metric {errors.shown(too_large)} has values beyond ±{MAX_PLOTTED:g}, which "
                "cannot be drawn: read them with GetMetricHistory"
            )
        png = await asyncio.to_thread(
            plot_png, curves, {r.id: r.name for r in rows}, keys, by_time, width, height
        )
        return tracker_pb2.PlotMetricsResponse(png=png, content_type="image/png")

    # ------------------------------------------------------------------ artifacts
    async def UploadArtifact(self, request_iterator: Any, context: Any) -> Any:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.run_id:
            raise errors.InvalidArgument(
                "the first message names run_id and path",
                [errors.FieldViolation("run_id", "required")],
            )
        path = clean_path(first.path)
        run = await self.store.runs.get(first.run_id, owners.scope())

        async def rest() -> AsyncIterator[common_pb2.Chunk]:
            # run_id and path belong to the first message; the others carry chunks only.
            async for msg in request_iterator:
                yield msg.chunk

        size, digest = await self.artifacts.write(run.id, path, first.chunk, rest())
        await self.store.artifact_records.record(run.id, path, size, digest)
        return tracker_pb2.Artifact(
            run_id=run.id, path=path, size_bytes=size, sha256=digest, update_time=_ts(now())
        )

    async def ListArtifacts(self, request: Any, context: Any) -> Any:
        run = await self.store.runs.get(request.run_id, owners.scope())
        path = clean_path(request.path, allow_root=True)
        entries = await asyncio.to_thread(self.artifacts.list, run.id, path)
        known = await self.store.artifact_records.hashes(run.id)
        n = pagination.page_size(request.page_size, 100, 1000)
        bound_to = (run.id, path)  # the token's context
        (offset,) = pagination.decode(
            request.page_token, ARTIFACTS, (pagination.OFFSET,), bound_to
        ) or (0,)
        page = entries[offset : offset + n]
        return tracker_pb2.ListArtifactsResponse(
            artifacts=[
                tracker_pb2.Artifact(
                    run_id=run.id, path=p, is_dir=d, size_bytes=s, sha256=known.get(p, "")
                )
                for p, d, s in page
            ],
            next_page_token=pagination.encode(ARTIFACTS, (offset + n,), bound_to)
            if offset + n < len(entries)
            else "",
        )

    async def DownloadArtifact(self, request: Any, context: Any) -> AsyncIterator[Any]:
        run = await self.store.runs.get(request.run_id, owners.scope())
        target = self.artifacts.open(run.id, clean_path(request.path))
        digest = hashlib.sha256()
        offset = 0
        with target.open("rb") as f:
            while data := await asyncio.to_thread(f.read, CHUNK):
                digest.update(data)
                yield common_pb2.Chunk(
                    data=data,
                    offset=offset,
                    name=request.path if offset == 0 else "",
                    total_size=target.stat().st_size if offset == 0 else 0,
                )
                offset += len(data)
        yield common_pb2.Chunk(offset=offset, sha256=digest.hexdigest())

    async def DownloadArtifactFile(self, request: Any, context: Any) -> AsyncIterator[Any]:
        run = await self.store.runs.get(request.run_id, owners.scope())
        path = clean_path(request.path)
        target = self.artifacts.open(run.id, path)
        await context.send_initial_metadata((("content-disposition", content_disposition(path)),))
        async for body in http_bodies(target, path, CHUNK):
            yield body

    async def DeleteArtifact(self, request: Any, context: Any) -> Any:
        run = await self.store.runs.get(request.run_id, owners.scope())
        path = clean_path(request.path)
        if not await asyncio.to_thread(self.artifacts.delete, run.id, path):
            raise errors.NotFound(f"no artifact {path!r}")
        await self.store.artifact_records.forget(run.id, path)
        return empty_pb2.Empty()


__all__ = ["METHOD_ROLES", "SERVICE", "TrackerService"]
