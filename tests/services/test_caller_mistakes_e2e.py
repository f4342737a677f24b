"""A caller's mistake is the caller's status, naming the field, never INTERNAL: real tracker,
compiler and trainer processes on PostgreSQL (and SQLite where the databases differ), called
as a user would by mistake and as an attacker would on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from neural.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

from tests import tokens
from tests.fuzz import stack as fuzz_stack
from tests.services.conftest import create_pg_database, drop_pg_database
from tests.services.trainer_stack import TrainerStack

pytestmark = pytest.mark.e2e

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DIGITS = trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)


@dataclass
class Clients:
    stack: TrainerStack
    tracker: tracker_pb2_grpc.TrackerServiceStub
    compiler: compiler_pb2_grpc.CompilerServiceStub
    trainer: trainer_pb2_grpc.TrainerServiceStub
    md: tuple[tuple[str, str], ...]
    pools: dict[str, list[Any]]

    @property
    def experiment_id(self) -> str:
        return self.pools["id"][0]

    @property
    def run_id(self) -> str:
        return self.pools["id"][1]

    def new_run(self, name: str = "r") -> str:
        return self.tracker.CreateRun(
            tracker_pb2.CreateRunRequest(
                experiment_id=self.experiment_id, run=tracker_pb2.Run(name=name)
            ),
            metadata=self.md,
        ).id


def _clients(stack: TrainerStack) -> Clients:
    md = tokens.meta(fuzz_stack.token("admin", "mistakes-admin"))
    return Clients(
        stack,
        tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(stack.address_of("tracker"))),
        compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(stack.address_of("compiler"))),
        trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(stack.address_of("trainer"))),
        md,
        fuzz_stack.seed(stack, md),
    )


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    tmp: Path = tmp_path_factory.mktemp(f"mistakes-{request.param}")
    name = ""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'neural.db'}"
    else:
        name, url = asyncio.run(create_pg_database())
    stack = fuzz_stack.start(tmp, url)
    try:
        yield _clients(stack)
    finally:
        stack.stop_all()
        if name:
            asyncio.run(drop_pg_database(name))


@dataclass
class Refusal:
    code: grpc.StatusCode
    message: str
    fields: list[str]


def refused(call: Callable[..., Any], request: Any, md: Any) -> Refusal:
    """The status a call ends with (it must not succeed) and its BadRequest fields."""
    with pytest.raises(grpc.RpcError) as info:
        response = call(request, metadata=md, timeout=30)
        for _ in response if hasattr(response, "__iter__") else ():
            pass
    err = info.value
    fields = []
    status = rpc_status.from_call(err)
    if status is not None:
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                fields += [v.field for v in bad.field_violations]
    return Refusal(err.code(), err.details() or "", fields)


def assert_invalid(r: Refusal, field: str) -> None:
    assert r.code == INVALID, (r.code, r.message)
    assert any(f.startswith(field) for f in r.fields), (field, r.fields, r.message)


# ------------------------------------------------------------------ timestamps and filters
def test_out_of_range_timestamps_name_their_field(api: Clients) -> None:
    far = timestamp_pb2.Timestamp(seconds=2**62)
    r = refused(
        api.tracker.CreateRun,
        tracker_pb2.CreateRunRequest(
            experiment_id=api.experiment_id, run=tracker_pb2.Run(name="x", start_time=far)
        ),
        api.md,
    )
    assert_invalid(r, "run.start_time")
    r = refused(
        api.tracker.UpdateRun,
        tracker_pb2.UpdateRunRequest(
            run=tracker_pb2.Run(id=api.run_id, end_time=timestamp_pb2.Timestamp(nanos=-1))
        ),
        api.md,
    )
    assert_invalid(r, "run.end_time")
    point = tracker_pb2.Metric(key="loss", value=1.0, step=1, timestamp=far)
    r = refused(
        api.tracker.LogMetrics,
        tracker_pb2.LogMetricsRequest(run_id=api.run_id, metrics=[point]),
        api.md,
    )
    assert_invalid(r, "metrics[0].timestamp")
    for text in ("start_time > 1e20", "end_time < -1e20"):
        r = refused(api.tracker.SearchRuns, tracker_pb2.SearchRunsRequest(filter=text), api.md)
        assert_invalid(r, "filter")
        assert "years 1 to 9999" in r.message


def test_order_by_an_entity_without_a_key(api: Clients) -> None:
    r = refused(
        api.tracker.SearchRuns, tracker_pb2.SearchRunsRequest(order_by=["metrics."]), api.md
    )
    assert_invalid(r, "order_by")
    assert "name a key after metrics." in r.message


def test_a_plot_of_values_near_the_largest_double_says_which_key(api: Clients) -> None:
    """The seeded runs log `huge` up to 1.7e308, which no axis can show; `loss` plots."""
    runs = api.pools["id"][1:3]
    request = tracker_pb2.PlotMetricsRequest(run_ids=runs, keys=["loss", "huge"])
    r = refused(api.tracker.PlotMetrics, request, api.md)
    assert r.code == grpc.StatusCode.FAILED_PRECONDITION, (r.code, r.message)
    assert "'huge'" in r.message and "GetMetricHistory" in r.message
    request = tracker_pb2.PlotMetricsRequest(run_ids=runs, keys=["loss"], width=400, height=300)
    assert api.tracker.PlotMetrics(request, metadata=api.md).png.startswith(b"\x89PNG")


def test_hparams_that_are_not_finite_are_refused_at_submit(api: Clients) -> None:
    request = trainer_pb2.SubmitTrainingRequest(
        source=fuzz_stack.PROGRAM, dataset=DIGITS, experiment="nan-hparams"
    )
    request.hparams.update({"x": math.nan})
    assert_invalid(refused(api.trainer.SubmitTraining, request, api.md), "hparams")
    compile_request = compiler_pb2.CompileRequest(
        source=fuzz_stack.PROGRAM, backend=compiler_pb2.BACKEND_PYTORCH
    )
    compile_request.hparams.update({"layers.dense_1.units": math.inf})
    assert_invalid(refused(api.compiler.Compile, compile_request, api.md), "hparams")


def test_an_update_that_sets_nothing_returns_the_run_unchanged(api: Clients) -> None:
    run_id = api.new_run("unchanged")
    run = api.tracker.UpdateRun(
        tracker_pb2.UpdateRunRequest(run=tracker_pb2.Run(id=run_id)), metadata=api.md
    )
    assert run.name == "unchanged" and run.status == tracker_pb2.RUN_STATUS_RUNNING


# ------------------------------------------------------------------ NUL characters
NUL = "bad\x00name"


def test_a_nul_in_any_string_is_refused_naming_the_field(api: Clients) -> None:
    cases: list[tuple[Callable[..., Any], Any, str]] = [
        (
            api.tracker.CreateExperiment,
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name=NUL)),
            "experiment.name",
        ),
        (api.tracker.GetRun, tracker_pb2.GetRunRequest(id=NUL), "id"),
        (
            api.tracker.SetTags,
            tracker_pb2.SetTagsRequest(run_id=api.run_id, tags={NUL: "v"}),
            "tags",
        ),
        (
            api.tracker.LogParams,
            tracker_pb2.LogParamsRequest(run_id=api.run_id, params={"k": NUL}),
            "params",
        ),
        (
            api.tracker.LogMetrics,
            tracker_pb2.LogMetricsRequest(
                run_id=api.run_id,
                metrics=[tracker_pb2.Metric(key="ok", value=1), tracker_pb2.Metric(key=NUL)],
            ),
            "metrics[1].key",
        ),
        (
            api.tracker.SearchRuns,
            tracker_pb2.SearchRunsRequest(filter=f"params.x = '{NUL}'"),
            "filter",
        ),
        (
            api.compiler.Compile,
            compiler_pb2.CompileRequest(source=fuzz_stack.PROGRAM + "\x00", backend=1),
            "source",
        ),
        (api.compiler.Validate, compiler_pb2.ValidateRequest(source="\x00"), "source"),
        (api.compiler.GetModel, compiler_pb2.GetModelRequest(id=NUL), "id"),
        (api.trainer.GetDataset, trainer_pb2.GetDatasetRequest(id=NUL), "id"),
        (
            api.trainer.WatchTrainingJob,
            common_pb2.WatchJobRequest(id=NUL),
            "id",
        ),
    ]
    for call, request, field in cases:
        assert_invalid(refused(call, request, api.md), field)


def test_a_training_job_named_with_a_nul_is_refused_at_submit(api: Clients) -> None:
    before = api.trainer.ListTrainingJobs(
        common_pb2.ListJobsRequest(page_size=1000), metadata=api.md
    )
    request = trainer_pb2.SubmitTrainingRequest(
        source=fuzz_stack.PROGRAM, dataset=DIGITS, experiment=NUL
    )
    assert_invalid(refused(api.trainer.SubmitTraining, request, api.md), "experiment")
    after = api.trainer.ListTrainingJobs(
        common_pb2.ListJobsRequest(page_size=1000), metadata=api.md
    )
    assert len(after.jobs) == len(before.jobs), "a job was queued"


def test_each_message_of_a_stream_is_checked(api: Clients) -> None:
    def batches() -> Iterator[tracker_pb2.LogMetricsRequest]:
        yield tracker_pb2.LogMetricsRequest(
            run_id=api.run_id, metrics=[tracker_pb2.Metric(key="s", value=1, step=1)]
        )
        yield tracker_pb2.LogMetricsRequest(
            run_id=api.run_id, metrics=[tracker_pb2.Metric(key=NUL, value=1, step=2)]
        )

    r = refused(api.tracker.StreamMetrics, batches(), api.md)
    assert_invalid(r, "metrics[0].key")
    assert "message 2 of the stream" in r.message

    def chunks() -> Iterator[common_pb2.Chunk]:
        yield common_pb2.Chunk(data=fuzz_stack.CSV, name="nul\x00.csv")
        yield common_pb2.Chunk(
            offset=len(fuzz_stack.CSV), sha256=hashlib.sha256(fuzz_stack.CSV).hexdigest()
        )

    assert_invalid(refused(api.trainer.UploadDataset, chunks(), api.md), "name")


# ------------------------------------------------------------------ enums
def test_enum_numbers_the_proto_does_not_define_are_refused(api: Clients) -> None:
    cases: list[tuple[Callable[..., Any], Any, str]] = [
        (
            api.compiler.Compile,
            compiler_pb2.CompileRequest(source=fuzz_stack.PROGRAM, backend=99),
            "backend",
        ),
        (api.compiler.ListModels, compiler_pb2.ListModelsRequest(backend=99), "backend"),
        (api.compiler.ListCompileJobs, common_pb2.ListJobsRequest(state=42), "state"),
        (api.trainer.ListTrainingJobs, common_pb2.ListJobsRequest(state=42), "state"),
        (
            api.trainer.SubmitTraining,
            trainer_pb2.SubmitTrainingRequest(
                source=fuzz_stack.PROGRAM, dataset=DIGITS, backend=99
            ),
            "backend",
        ),
        (
            api.trainer.SubmitSearch,
            trainer_pb2.SubmitSearchRequest(
                source=fuzz_stack.SEARCHABLE,
                dataset=DIGITS,
                n_trials=2,
                objective="val_accuracy",
                direction=7,
            ),
            "direction",
        ),
        (
            api.tracker.UpdateRun,
            tracker_pb2.UpdateRunRequest(run=tracker_pb2.Run(id=api.run_id, status=42)),
            "run.status",
        ),
        (
            api.tracker.GetMetricHistory,
            tracker_pb2.GetMetricHistoryRequest(run_id=api.run_id, key="loss", view=7),
            "view",
        ),
        (
            api.tracker.CompareRuns,
            tracker_pb2.CompareRunsRequest(run_ids=api.pools["id"][1:3], directions={"loss": 7}),
            "directions",
        ),
    ]
    for call, request, field in cases:
        assert_invalid(refused(call, request, api.md), field)


# ------------------------------------------------------------------ sizes and echoes
def test_more_entries_than_the_database_binds_is_a_caller_error_naming_the_limit(
    api: Clients,
) -> None:
    many = {f"k{i}": "v" for i in range(40_000)}
    run_id = api.new_run("many")
    cases: list[tuple[Callable[..., Any], Any]] = [
        (api.tracker.LogParams, tracker_pb2.LogParamsRequest(run_id=run_id, params=many)),
        (api.tracker.SetTags, tracker_pb2.SetTagsRequest(run_id=run_id, tags=many)),
        (
            api.tracker.SetTags,
            tracker_pb2.SetTagsRequest(run_id=run_id, delete_keys=list(many)),
        ),
        (
            api.tracker.CompareRuns,
            tracker_pb2.CompareRunsRequest(run_ids=api.pools["id"][1:3], metric_keys=list(many)),
        ),
        (
            api.tracker.SearchRuns,
            tracker_pb2.SearchRunsRequest(experiment_ids=list(many)),
        ),
    ]
    for call, request in cases:
        r = refused(call, request, api.md)
        assert r.code in (INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED), (r.code, r.message)
        assert "at most" in r.message, r.message
    # nothing of the refused batches was stored
    run = api.tracker.GetRun(tracker_pb2.GetRunRequest(id=run_id), metadata=api.md)
    assert not run.params and not run.tags


def test_a_huge_id_is_not_found_with_a_short_message(api: Clients) -> None:
    huge = "x" * 10_000
    cases: list[tuple[Callable[..., Any], Any]] = [
        (api.tracker.GetRun, tracker_pb2.GetRunRequest(id=huge)),
        (api.tracker.GetExperiment, tracker_pb2.GetExperimentRequest(id=huge)),
        (api.compiler.GetModel, compiler_pb2.GetModelRequest(id=huge)),
        (api.compiler.GetCompileJob, common_pb2.GetJobRequest(id=huge)),
        (api.trainer.GetTrainingJob, common_pb2.GetJobRequest(id=huge)),
        (api.trainer.GetDataset, trainer_pb2.GetDatasetRequest(id=huge)),
    ]
    for call, request in cases:
        r = refused(call, request, api.md)
        assert r.code == grpc.StatusCode.NOT_FOUND, (call, r.code, r.message[:200])
        assert len(r.message) < 200, r.message[:300]


def test_the_callers_token_reaches_the_compiler_when_training_a_registry_model(
    api: Clients,
) -> None:
    # The model is this caller's alone: the trainer finds it only by forwarding the token.
    md = tokens.as_("forwarded-caller", "user")
    model = api.compiler.Compile(
        compiler_pb2.CompileRequest(source=fuzz_stack.PROGRAM, backend=1, name="by-key"),
        metadata=md,
    ).model
    job = api.trainer.SubmitTraining(
        trainer_pb2.SubmitTrainingRequest(model_id=model.id, dataset=DIGITS), metadata=md
    )
    assert job.state == common_pb2.JOB_STATE_QUEUED
