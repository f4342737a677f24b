"""The checks every request gets at the door (service_kit.request_checks), the echo of a
caller's id in an error (errors.shown), and how the interceptor words what it cannot blame on
a handler: a status message cut to size, a statement over the database's bind limit."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import timestamp_pb2
from neural.v1 import common_pb2, compiler_pb2, tracker_pb2, trainer_pb2
from service_kit import errors, interceptors, request_checks

pytestmark = pytest.mark.unit


def problem(message: object) -> tuple[str, str] | None:
    found = request_checks.find_problem(message)
    return None if found is None else (found.field, found.description)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (tracker_pb2.GetRunRequest(id="a\x00b"), "id"),
        (
            tracker_pb2.LogMetricsRequest(
                run_id="r",
                metrics=[tracker_pb2.Metric(key="ok"), tracker_pb2.Metric(key="\x00")],
            ),
            "metrics[1].key",
        ),
        (tracker_pb2.SetTagsRequest(tags={"k": "v\x00"}), "tags['k']"),
        (tracker_pb2.SetTagsRequest(tags={"k\x00": "v"}), "tags (a key)"),
        (tracker_pb2.SearchRunsRequest(order_by=["start_time", "x\x00"]), "order_by[1]"),
        (
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="\x00")),
            "experiment.name",
        ),
        (
            trainer_pb2.SubmitTrainingRequest(
                webhooks=[common_pb2.Webhook(url="https://x", events=["a", "b\x00"])]
            ),
            "webhooks[0].events[1]",
        ),
    ],
)
def test_a_nul_anywhere_is_found_with_its_path(message: object, field: str) -> None:
    found = problem(message)
    assert found is not None and found[0] == field and "NUL" in found[1]


def test_a_nul_inside_a_struct_is_found() -> None:
    request = compiler_pb2.CompileRequest(source="x")
    request.hparams.update({"a": {"b": ["ok", "no\x00"]}})
    found = problem(request)
    assert found is not None
    path = "hparams.fields['a'].struct_value.fields['b'].list_value.values[1].string_value"
    assert found[0] == path


@pytest.mark.parametrize(
    ("message", "field", "description"),
    [
        (compiler_pb2.CompileRequest(backend=99), "backend", "99 is not a value of Backend"),
        (compiler_pb2.ListModelsRequest(backend=-1), "backend", "-1 is not a value of Backend"),
        (common_pb2.ListJobsRequest(state=42), "state", "42 is not a value of JobState"),
        (
            tracker_pb2.GetMetricHistoryRequest(view=7),
            "view",
            "7 is not a value of MetricHistoryView",
        ),
        (
            tracker_pb2.UpdateRunRequest(run=tracker_pb2.Run(status=42)),
            "run.status",
            "42 is not a value of RunStatus",
        ),
        (
            tracker_pb2.CompareRunsRequest(directions={"loss": 7}),
            "directions['loss']",
            "7 is not a value of OptimizationDirection",
        ),
        (
            trainer_pb2.SubmitTrainingRequest(dataset=trainer_pb2.DatasetSpec(builtin=9)),
            "dataset.builtin",
            "9 is not a value of BuiltinDataset",
        ),
    ],
)
def test_an_enum_number_the_proto_does_not_define_is_found(
    message: object, field: str, description: str
) -> None:
    assert problem(message) == (field, description)


def test_a_clean_request_passes_and_hands_back_what_it_built() -> None:
    request = tracker_pb2.LogMetricsRequest(
        run_id="r", metrics=[tracker_pb2.Metric(key=f"k{i}", value=i) for i in range(100)]
    )
    kept = request_checks.check(request)
    assert kept and len(kept[0]) == 100
    request_checks.check(trainer_pb2.SubmitTrainingRequest(backend=1, epochs=3))


def test_check_names_the_message_of_a_stream() -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        request_checks.check(tracker_pb2.GetRunRequest(id="\x00"), " (message 2 of the stream)")
    assert info.value.message.startswith("id (message 2 of the stream):")
    assert [v.field for v in info.value.violations] == ["id"]


def test_timestamps_outside_years_1_to_9999_name_their_field() -> None:
    for bad in (
        timestamp_pb2.Timestamp(seconds=2**62),
        timestamp_pb2.Timestamp(seconds=-(2**62)),
        timestamp_pb2.Timestamp(seconds=0, nanos=-1),
        timestamp_pb2.Timestamp(seconds=0, nanos=10**9),
    ):
        with pytest.raises(errors.InvalidArgument) as info:
            request_checks.datetime_of(bad, "run.start_time")
        assert info.value.violations[0].field == "run.start_time"
    edge = timestamp_pb2.Timestamp(seconds=request_checks.TIMESTAMP_SECONDS[1])
    assert request_checks.datetime_of(edge, "t").year == 9999


def test_struct_values_refuse_nan_and_infinities_naming_the_entry() -> None:
    request = compiler_pb2.CompileRequest()
    request.hparams.update({"ok": 1.5, "nested": {"list": [1.0, math.inf]}})
    with pytest.raises(errors.InvalidArgument) as info:
        request_checks.struct_values(request.hparams, "hparams")
    assert info.value.violations[0].field == "hparams.nested.list[1]"
    request.hparams.Clear()
    request.hparams.update({"units": 16, "name": "x"})
    assert request_checks.struct_values(request.hparams, "hparams") == {"units": 16, "name": "x"}


def test_a_long_id_is_shown_cut() -> None:
    assert errors.shown("abc") == "'abc'"
    long = errors.shown("x" * 10_000)
    assert len(long) < 100 and long.endswith("(10000 characters)")


def test_the_interceptor_cuts_status_messages_and_violations() -> None:
    exc = errors.InvalidArgument(
        "m" * 10_000, [errors.FieldViolation("f" * 1000, "d") for _ in range(100)]
    )
    status = interceptors._status(exc)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(status.details) <= interceptors.MAX_MESSAGE + 3


def test_too_many_bind_values_is_resource_exhausted_not_unavailable() -> None:
    class InterfaceError(Exception):  # the name the drivers' wrappers use
        pass

    cause = InterfaceError("the number of query arguments cannot exceed 32767")
    try:
        try:
            raise cause
        except InterfaceError as inner:
            raise RuntimeError("statement failed") from inner
    except RuntimeError as outer:
        status = interceptors.Interceptor("t", {})._to_status(outer, "/x/Y")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "32767" in status.details
