"""The tracker end to end: a real server process on PostgreSQL and Redis, over gRPC."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from neural.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

from tests.services.stack import Stack, pg_stack
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = {r: (f"{r}-key", r) for r in ("user", "viewer", "admin")}
    keys["other"] = ("other", "user")
    with pg_stack(tmp_path_factory.mktemp("tracker"), REDIS_DB, "tracker", keys=keys) as s:
        yield s


def client(stack: Stack) -> tracker_pb2_grpc.TrackerServiceStub:
    return tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(stack.address))


def md(stack: Stack, role: str = "user") -> tuple[tuple[str, str], ...]:
    return stack.meta(role)


def code(fn, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code()


def new_run(stack: Stack, exp_name: str) -> tuple[str, str]:
    t = client(stack)
    exp = t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name=exp_name)),
        metadata=md(stack),
    )
    run = t.CreateRun(
        tracker_pb2.CreateRunRequest(
            experiment_id=exp.id, run=tracker_pb2.Run(name="r1", tags={"team": "vision"})
        ),
        metadata=md(stack),
    )
    return exp.id, run.id


def test_experiments_lifecycle_and_ownership(stack: Stack) -> None:
    t = client(stack)
    exp_id, run_id = new_run(stack, "lifecycle")
    assert (
        code(
            t.CreateExperiment,
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name="lifecycle")
            ),
            metadata=md(stack),
        )
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert (
        code(
            t.GetExperiment,
            tracker_pb2.GetExperimentRequest(id=exp_id),
            metadata=md(stack, "other"),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    renamed = t.UpdateExperiment(
        tracker_pb2.UpdateExperimentRequest(
            experiment=tracker_pb2.Experiment(id=exp_id, name="lifecycle-2"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        metadata=md(stack),
    )
    assert renamed.name == "lifecycle-2"
    got = t.GetExperiment(tracker_pb2.GetExperimentRequest(id=exp_id), metadata=md(stack))
    assert got.run_count == 1
    deleted = t.DeleteExperiment(tracker_pb2.DeleteExperimentRequest(id=exp_id), metadata=md(stack))
    assert deleted.HasField("delete_time")
    names = [
        e.name
        for e in t.ListExperiments(
            tracker_pb2.ListExperimentsRequest(), metadata=md(stack)
        ).experiments
    ]
    assert "lifecycle-2" not in names
    t.RestoreExperiment(tracker_pb2.RestoreExperimentRequest(id=exp_id), metadata=md(stack))
    t.DeleteExperiment(tracker_pb2.DeleteExperimentRequest(id=exp_id), metadata=md(stack))
    t.PurgeExperiment(tracker_pb2.PurgeExperimentRequest(id=exp_id), metadata=md(stack))
    assert (
        code(t.GetRun, tracker_pb2.GetRunRequest(id=run_id), metadata=md(stack))
        == grpc.StatusCode.NOT_FOUND
    )


def test_params_metrics_history_and_bad_values(stack: Stack) -> None:
    t = client(stack)
    _, run_id = new_run(stack, "metrics")
    t.LogParams(
        tracker_pb2.LogParamsRequest(run_id=run_id, params={"lr": "0.1"}), metadata=md(stack)
    )
    assert (
        code(
            t.LogParams,
            tracker_pb2.LogParamsRequest(run_id=run_id, params={"lr": "0.2"}),
            metadata=md(stack),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    batch = [tracker_pb2.Metric(key="loss", value=1.0 / (i + 1), step=i) for i in range(1000)]
    t.LogMetrics(tracker_pb2.LogMetricsRequest(run_id=run_id, metrics=batch), metadata=md(stack))
    for bad in (math.nan, math.inf):
        assert (
            code(
                t.LogMetrics,
                tracker_pb2.LogMetricsRequest(
                    run_id=run_id, metrics=[tracker_pb2.Metric(key="loss", value=bad, step=5)]
                ),
                metadata=md(stack),
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    too_many = [tracker_pb2.Metric(key="x", value=1, step=i) for i in range(1001)]
    assert (
        code(
            t.LogMetrics,
            tracker_pb2.LogMetricsRequest(run_id=run_id, metrics=too_many),
            metadata=md(stack),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )

    def stream() -> Iterator[tracker_pb2.LogMetricsRequest]:
        for b in range(3):
            yield tracker_pb2.LogMetricsRequest(
                run_id=run_id,
                metrics=[
                    tracker_pb2.Metric(key="acc", value=b / 3 + i / 1000, step=b * 100 + i)
                    for i in range(100)
                ],
            )

    summary = t.StreamMetrics(stream(), metadata=md(stack))
    assert (summary.metrics_logged, summary.batches, list(summary.run_ids)) == (300, 3, [run_id])
    full = t.GetMetricHistory(
        tracker_pb2.GetMetricHistoryRequest(run_id=run_id, key="loss", page_size=10_000),
        metadata=md(stack),
    )
    assert len(full.metrics) == 1000 and not full.downsampled
    columns = t.GetMetricHistory(
        tracker_pb2.GetMetricHistoryRequest(
            run_id=run_id,
            key="loss",
            page_size=10_000,
            view=tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS,
        ),
        metadata=md(stack),
    )
    assert not columns.metrics
    assert list(columns.steps) == [m.step for m in full.metrics]
    assert list(columns.values) == [m.value for m in full.metrics]
    assert list(columns.timestamps_ms) == [m.timestamp.ToMilliseconds() for m in full.metrics]
    small = t.GetMetricHistory(
        tracker_pb2.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=50),
        metadata=md(stack),
    )
    # M4 over 8 buckets of 128 steps (12 fit 50 points): a falling curve keeps each bucket's
    # first point (its highest) and last (its lowest)
    assert small.downsampled and len(small.metrics) == 16
    assert (small.metrics[0].step, small.metrics[-1].step) == (0, 999)
    run = t.GetRun(tracker_pb2.GetRunRequest(id=run_id), metadata=md(stack))
    assert {m.key: m.step for m in run.latest_metrics} == {"acc": 299, "loss": 999}
    assert run.params == {"lr": "0.1"} and run.tags == {"team": "vision"}


def test_watch_run_streams_metrics_then_the_end(stack: Stack) -> None:
    t = client(stack)
    _, run_id = new_run(stack, "watch")
    events: list[tracker_pb2.RunEvent] = []
    ready = threading.Event()

    def watch() -> None:
        for event in t.WatchRun(
            tracker_pb2.WatchRunRequest(run_id=run_id), metadata=md(stack), timeout=30
        ):
            events.append(event)
            ready.set()

    thread = threading.Thread(target=watch)
    thread.start()
    assert ready.wait(10)
    t.LogMetrics(
        tracker_pb2.LogMetricsRequest(
            run_id=run_id, metrics=[tracker_pb2.Metric(key="loss", value=0.5, step=1)]
        ),
        metadata=md(stack),
    )
    until(lambda: any(e.type == "metrics" for e in events), 10, "the metrics event")
    t.UpdateRun(
        tracker_pb2.UpdateRunRequest(
            run=tracker_pb2.Run(id=run_id, status=tracker_pb2.RUN_STATUS_FINISHED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=md(stack),
    )
    thread.join(20)
    kinds = [e.type for e in events]
    assert kinds[0] == "status" and "metrics" in kinds and kinds[-1] == "status"
    assert events[-1].status == tracker_pb2.RUN_STATUS_FINISHED
    assert [m.value for e in events if e.type == "metrics" for m in e.metrics] == [0.5]


def test_search_compare_and_plot(stack: Stack) -> None:
    t = client(stack)
    exp = t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="search")),
        metadata=md(stack),
    )
    ids = []
    for name, opt, accs in (("a", "SGD", [0.5, 0.7]), ("b", "Adam", [0.6, 0.95])):
        run = t.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name=name)),
            metadata=md(stack),
        )
        t.LogParams(
            tracker_pb2.LogParamsRequest(run_id=run.id, params={"optimizer": opt}),
            metadata=md(stack),
        )
        t.LogMetrics(
            tracker_pb2.LogMetricsRequest(
                run_id=run.id,
                metrics=[
                    tracker_pb2.Metric(key="accuracy", value=v, step=i) for i, v in enumerate(accs)
                ]
                + [tracker_pb2.Metric(key="loss", value=1 - v, step=i) for i, v in enumerate(accs)],
            ),
            metadata=md(stack),
        )
        ids.append(run.id)
    found = t.SearchRuns(
        tracker_pb2.SearchRunsRequest(
            experiment_ids=[exp.id], filter='metrics.accuracy > 0.9 and params.optimizer = "Adam"'
        ),
        metadata=md(stack, "user"),
    )
    assert [r.name for r in found.runs] == ["b"]
    with pytest.raises(grpc.RpcError) as info:
        t.SearchRuns(
            tracker_pb2.SearchRunsRequest(filter="metrics.accuracy >> 1"), metadata=md(stack)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "column 19" in info.value.details()
    cmp_ = t.CompareRuns(tracker_pb2.CompareRunsRequest(run_ids=ids), metadata=md(stack))
    assert cmp_.best_runs["accuracy"].run_id == ids[1]
    assert cmp_.best_runs["loss"].run_id == ids[1]  # lower is better for losses
    assert list(cmp_.differing_params) == ["optimizer"]
    assert cmp_.runs[0].metrics["accuracy"].last == pytest.approx(0.7)
    png = t.PlotMetrics(
        tracker_pb2.PlotMetricsRequest(run_ids=ids, keys=["accuracy", "loss"]),
        metadata=md(stack, "viewer") if False else md(stack),
    )
    assert png.png.startswith(b"\x89PNG") and png.content_type == "image/png"
    by_time = t.PlotMetrics(  # seconds since each run started
        tracker_pb2.PlotMetricsRequest(run_ids=ids, keys=["accuracy"], x_axis="time"),
        metadata=md(stack),
    )
    assert by_time.png.startswith(b"\x89PNG") and by_time.png != png.png
    exp2 = t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="search-2")),
        metadata=md(stack),
    )
    both = t.CompareExperiments(
        tracker_pb2.CompareExperimentsRequest(experiment_ids=[exp.id, exp2.id]), metadata=md(stack)
    )
    assert both.experiments[0].run_count == 2 and both.best_runs["accuracy"].run_id == ids[1]


def test_compare_carries_each_runs_curves_as_the_history_samples_them(stack: Stack) -> None:
    """CompareRuns(curve_points=N): every run's curve of every metric in one call, the same
    points GetMetricHistory(max_points=N) gives (whole when short, the M4 sample when long)."""
    t = client(stack)
    exp = t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="curves")),
        metadata=md(stack),
    )
    ids = []
    for name, length in (("short", 40), ("long", 5_000)):
        run = t.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name=name)),
            metadata=md(stack),
        )
        for start in range(0, length, 1000):
            t.LogMetrics(
                tracker_pb2.LogMetricsRequest(
                    run_id=run.id,
                    metrics=[
                        tracker_pb2.Metric(
                            key="loss", value=9.0 if i % 997 == 5 else 1 / (i + 1), step=i * 3
                        )
                        for i in range(start, min(start + 1000, length))
                    ],
                ),
                metadata=md(stack),
            )
        ids.append(run.id)
    cmp_ = t.CompareRuns(
        tracker_pb2.CompareRunsRequest(run_ids=ids, curve_points=200), metadata=md(stack)
    )
    for run_id, comparison, dropped in zip(ids, cmp_.runs, (False, True), strict=True):
        curve = comparison.curves["loss"]
        history = t.GetMetricHistory(
            tracker_pb2.GetMetricHistoryRequest(
                run_id=run_id,
                key="loss",
                max_points=200,
                page_size=10_000,
                view=tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS,
            ),
            metadata=md(stack),
        )
        assert (list(curve.steps), list(curve.values)) == (
            list(history.steps),
            list(history.values),
        )
        assert curve.downsampled is dropped and history.downsampled is dropped
        assert len(curve.steps) <= 200 and max(curve.values) == 9.0  # the spikes stay
    assert len(cmp_.runs[0].curves["loss"].steps) == 40
    plain = t.CompareRuns(tracker_pb2.CompareRunsRequest(run_ids=ids), metadata=md(stack))
    assert not plain.runs[0].curves  # only when asked
    for wrong in (-1, 2001):
        with pytest.raises(grpc.RpcError) as info:
            t.CompareRuns(
                tracker_pb2.CompareRunsRequest(run_ids=ids, curve_points=wrong), metadata=md(stack)
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "curve_points" in info.value.details()


def test_artifacts_integrity_and_paths(stack: Stack) -> None:
    t = client(stack)
    _, run_id = new_run(stack, "artifacts")
    data = b"weights" * 50_000
    digest = hashlib.sha256(data).hexdigest()

    def upload(path: str, payload: bytes, sha: str) -> Iterator[tracker_pb2.ArtifactChunk]:
        head = payload[:100_000]
        yield tracker_pb2.ArtifactChunk(
            run_id=run_id,
            path=path,
            chunk=common_pb2.Chunk(data=head, offset=0, total_size=len(payload)),
        )
        yield tracker_pb2.ArtifactChunk(
            chunk=common_pb2.Chunk(data=payload[100_000:], offset=len(head))
        )
        yield tracker_pb2.ArtifactChunk(chunk=common_pb2.Chunk(offset=len(payload), sha256=sha))

    art = t.UploadArtifact(upload("model/weights.bin", data, digest), metadata=md(stack))
    assert art.sha256 == digest and art.size_bytes == len(data)
    bad = code(t.UploadArtifact, upload("model/broken.bin", data, "0" * 64), metadata=md(stack))
    assert bad == grpc.StatusCode.INVALID_ARGUMENT
    for evil in ("../escape.txt", "/etc/passwd", "a/../../b", "a//b", "model\\x"):
        assert code(t.UploadArtifact, upload(evil, b"x", ""), metadata=md(stack)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), evil
    listed = t.ListArtifacts(
        tracker_pb2.ListArtifactsRequest(run_id=run_id, path="model"), metadata=md(stack)
    )
    assert [(a.path, a.sha256) for a in listed.artifacts] == [("model/weights.bin", digest)]
    chunks = list(
        t.DownloadArtifact(
            tracker_pb2.DownloadArtifactRequest(run_id=run_id, path="model/weights.bin"),
            metadata=md(stack),
        )
    )
    assert b"".join(c.data for c in chunks) == data and chunks[-1].sha256 == digest
    assert code(
        t.DownloadArtifact(
            tracker_pb2.DownloadArtifactRequest(run_id=run_id, path="model/weights.bin"),
            metadata=md(stack, "other"),
        ).__next__
    ) == (grpc.StatusCode.NOT_FOUND)
    # the HttpBody variant (a file over REST through Envoy) carries the same bytes, typed by
    # the path's extension, and answers another owner just as the chunked one does
    call = t.DownloadArtifactFile(
        tracker_pb2.DownloadArtifactRequest(run_id=run_id, path="model/weights.bin"),
        metadata=md(stack),
    )
    bodies = list(call)
    assert b"".join(b.data for b in bodies) == data
    assert dict(call.initial_metadata())["content-disposition"].startswith(
        'attachment; filename="weights.bin"'
    )
    assert bodies[0].content_type == "application/octet-stream"
    assert code(
        t.DownloadArtifactFile(
            tracker_pb2.DownloadArtifactRequest(run_id=run_id, path="model/weights.bin"),
            metadata=md(stack, "other"),
        ).__next__
    ) == (grpc.StatusCode.NOT_FOUND)
    assert code(
        t.DownloadArtifactFile(
            tracker_pb2.DownloadArtifactRequest(run_id=run_id, path="model/missing.bin"),
            metadata=md(stack),
        ).__next__
    ) == (grpc.StatusCode.NOT_FOUND)
    t.DeleteArtifact(
        tracker_pb2.DeleteArtifactRequest(run_id=run_id, path="model"), metadata=md(stack)
    )
    assert (
        list(
            t.ListArtifacts(
                tracker_pb2.ListArtifactsRequest(run_id=run_id), metadata=md(stack)
            ).artifacts
        )
        == []
    )


def test_viewer_reads_but_does_not_write(stack: Stack) -> None:
    t = client(stack)
    assert (
        code(
            t.CreateExperiment,
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="x")),
            metadata=md(stack, "viewer"),
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    t.ListExperiments(tracker_pb2.ListExperimentsRequest(), metadata=md(stack, "viewer"))
    assert code(t.ListExperiments, tracker_pb2.ListExperimentsRequest()) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
