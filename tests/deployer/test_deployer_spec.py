"""A deployment request checked field by field, rows back as protos, the Kubernetes rendering's
inputs, and Predict's tensors to and from the Open Inference Protocol: no process needed."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from google.protobuf import struct_pb2
from inference import grpc_predict_v2_pb2 as oip
from neural.v1 import deployer_pb2
from service_kit import errors

from services.deployer import oip as convert
from services.deployer import spec
from services.deployer.controller.autoscale import Autoscaler
from services.deployer.controller.reconcile import desired
from services.deployer.load import InFlight, envoy_active
from services.deployer.store import Deployment, Version

AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def request(**fields: object) -> deployer_pb2.Deployment:
    d = deployer_pb2.Deployment(name="iris", replicas=1, model_id="m1")
    for key, value in fields.items():
        if key == "batching":
            d.batching.CopyFrom(value)  # type: ignore[arg-type]
        elif key == "resources":
            d.resources.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(d, key, value)
    return d


def violation(exc: pytest.ExceptionInfo[errors.InvalidArgument]) -> str:
    return exc.value.violations[0].field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Iris"}, "deployment.name"),
        ({"name": "9lives"}, "deployment.name"),
        ({"name": "a" * 64}, "deployment.name"),
        ({"name": "ends-"}, "deployment.name"),
        ({"name": ""}, "deployment.name"),
        ({"replicas": 101}, "deployment.replicas"),
        ({"replicas": -1}, "deployment.replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "deployment.max_replicas"),
        ({"max_replicas": 101}, "deployment.max_replicas"),
        ({"runtime": deployer_pb2.DEPLOYMENT_RUNTIME_PYTORCH}, "deployment.runtime"),
        (
            {"batching": deployer_pb2.DeploymentBatching(max_batch_size=2000)},
            "deployment.batching.max_batch_size",
        ),
        (
            {"batching": deployer_pb2.DeploymentBatching(max_batch_delay_us=-1)},
            "deployment.batching.max_batch_delay_us",
        ),
        (
            {"resources": deployer_pb2.DeploymentResources(cpu="lots")},
            "deployment.resources.cpu",
        ),
        (
            {"resources": deployer_pb2.DeploymentResources(memory="1 Gi")},
            "deployment.resources.memory",
        ),
        ({"resources": deployer_pb2.DeploymentResources(gpu=-1)}, "deployment.resources.gpu"),
        # found by the RPC fuzz: a trailing newline, and quantities RenderManifests refused
        ({"name": "iris\n"}, "deployment.name"),
        ({"resources": deployer_pb2.DeploymentResources(cpu="1\n")}, "deployment.resources.cpu"),
        ({"resources": deployer_pb2.DeploymentResources(cpu="0")}, "deployment.resources.cpu"),
    ],
)
def test_bad_settings_name_their_field(fields: dict, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        spec.settings(request(**fields))
    assert violation(exc) == field


def test_settings_defaults_and_bounds() -> None:
    got = spec.settings(request(name="a", replicas=0))
    assert (got["replicas"], got["max_batch_size"], got["max_batch_delay_us"]) == (0, 64, 0)
    got = spec.settings(
        request(
            name="iris-2",
            replicas=9,
            min_replicas=1,
            max_replicas=4,
            batching=deployer_pb2.DeploymentBatching(max_batch_size=1, max_batch_delay_us=200),
            resources=deployer_pb2.DeploymentResources(cpu="500m", memory="512Mi", gpu=1),
        )
    )
    assert got["replicas"] == 4  # kept within its bounds
    assert (got["max_batch_size"], got["max_batch_delay_us"]) == (1, 200)
    assert (got["cpu"], got["memory"], got["gpu"]) == ("500m", "512Mi", 1)


def test_sources_name_their_field() -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        spec.source(deployer_pb2.Deployment(name="x"))
    assert violation(exc) == "deployment.model"
    d = deployer_pb2.Deployment()
    d.run_artifact.run_id = "r1"
    with pytest.raises(errors.InvalidArgument) as exc:
        spec.source(d)
    assert violation(exc) == "deployment.run_artifact.path"
    d.run_artifact.path = "model.onnx"
    src = spec.source(d)
    assert (src.run_id, src.artifact_path, src.field) == (
        "r1",
        "model.onnx",
        "deployment.run_artifact",
    )
    r = deployer_pb2.RolloutDeploymentRequest(model_id="bad id!")
    with pytest.raises(errors.InvalidArgument) as exc:
        spec.source(r, prefix="")
    assert violation(exc) == "model_id"


def version(name: str, traffic: int, state: str = "SERVING", **extra: str) -> Version:
    return Version(
        id=f"id-{name}",
        deployment_id="d1",
        version=name,
        run_id=extra.get("run_id", ""),
        artifact_path=extra.get("artifact_path", ""),
        model_id=extra.get("model_id", ""),
        model_path="/x/model.onnx",
        traffic_percent=traffic,
        state=state,
        error="",
        created_at=AT,
    )


def row(versions: list[Version], **extra: object) -> Deployment:
    values: dict = {
        "id": "d1",
        "name": "iris",
        "owner": "alice",
        "state": "READY",
        "runtime": "onnx",
        "replicas": 2,
        "min_replicas": 0,
        "max_replicas": 0,
        "ready_replicas": 2,
        "max_batch_size": 8,
        "max_batch_delay_us": 100,
        "cpu": "",
        "memory": "",
        "gpu": 0,
        "endpoint": "",
        "error": "",
        "created_at": AT,
        "updated_at": AT,
        "deleted_at": None,
        **extra,
    }
    return Deployment(**values, versions=versions)


def test_a_row_as_a_proto_shows_its_main_version() -> None:
    d = row(
        [
            version("v2", 20, "PENDING", model_id="m2"),
            version("v1", 80, run_id="r1", artifact_path="model.onnx"),
        ]
    )
    d.versions[1].ready_replicas = 2
    out = spec.to_proto(d)
    assert [v.ready_replicas for v in out.versions] == [0, 2]
    assert out.model_version == "v1" and out.run_artifact.run_id == "r1"
    assert [(v.id, v.traffic_percent) for v in out.versions] == [("v2", 20), ("v1", 80)]
    assert out.versions[0].model_id == "m2"
    assert out.versions[0].state == deployer_pb2.DEPLOYMENT_VERSION_STATE_PENDING
    assert out.state == deployer_pb2.DEPLOYMENT_STATE_READY
    assert out.batching.max_batch_size == 8 and out.create_time.seconds == int(AT.timestamp())


def test_replicas_split_between_versions() -> None:
    one = row([version("v1", 100)], replicas=3)
    assert desired(one, one.versions, one.versions[0]) == 3
    split = row([version("v2", 20), version("v1", 80)], replicas=5)
    assert [desired(split, split.versions, v) for v in split.versions] == [1, 4]
    tiny = row([version("v2", 10), version("v1", 90)], replicas=1)
    assert [desired(tiny, tiny.versions, v) for v in tiny.versions] == [1, 1]
    none = row([version("v1", 100)], replicas=0)
    assert desired(none, none.versions, none.versions[0]) == 0


def test_the_kubernetes_rendering_of_a_row() -> None:
    rendered = spec.manifest_spec(
        row([version("v2", 20), version("v1", 80)], replicas=0, cpu="250m"), {}
    )
    assert (rendered.name, rendered.version) == ("iris", "v1")
    assert rendered.model_path == "deployments/d1/v1/model.onnx"
    assert (rendered.min_replicas, rendered.max_replicas, rendered.cpu) == (1, 1, "250m")
    auto = spec.manifest_spec(
        row([version("v1", 100)], min_replicas=2, max_replicas=5),
        {"NEURAL_DEPLOYER_K8S_NAMESPACE": "models"},
    )
    assert (auto.min_replicas, auto.max_replicas, auto.namespace) == (2, 5, "models")
    with pytest.raises(errors.FailedPrecondition):
        spec.manifest_spec(row([version("v1", 0, "RETIRED")]), {})


# ------------------------------------------------------------------ OIP conversions
INPUTS = [("x", "FP32")]


def instances(rows: list) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    out.extend(rows)
    return out


def test_instances_become_one_raw_tensor_of_the_models_type() -> None:
    req = deployer_pb2.PredictRequest(id="d", instances=instances([[1, 2], [3, 4.5]]))
    infer = convert.infer_request(req, "iris", "v1", [("x", "INT64")])
    assert (infer.model_name, infer.model_version) == ("iris", "v1")
    [t] = infer.inputs
    assert (t.name, t.datatype, list(t.shape)) == ("x", "INT64", [2, 2])
    got = np.frombuffer(infer.raw_input_contents[0], "<i8").reshape(2, 2)
    np.testing.assert_array_equal(got, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (deployer_pb2.PredictRequest(), "inputs"),
        (deployer_pb2.PredictRequest(instances=instances([])), "instances"),
        (deployer_pb2.PredictRequest(instances=instances([[1, 2], [3]])), "instances"),
        (deployer_pb2.PredictRequest(instances=instances([["a"]])), "instances[0][0]"),
        (
            deployer_pb2.PredictRequest(
                inputs=[deployer_pb2.Tensor(shape=[3], dtype="float32", float_data=[1, 2])]
            ),
            "inputs[0].shape",
        ),
        (
            deployer_pb2.PredictRequest(
                inputs=[deployer_pb2.Tensor(shape=[1], dtype="int64", float_data=[1])]
            ),
            "inputs[0].float_data",
        ),
        (
            deployer_pb2.PredictRequest(inputs=[deployer_pb2.Tensor(shape=[-1], dtype="float32")]),
            "inputs[0].shape",
        ),
        (
            deployer_pb2.PredictRequest(inputs=[deployer_pb2.Tensor(shape=[1], dtype="str")]),
            "inputs[0].dtype",
        ),
        # found by the RPC fuzz: once an INTERNAL (numpy could not reshape)
        (
            deployer_pb2.PredictRequest(
                inputs=[deployer_pb2.Tensor(shape=[2**62, 2**62, 0], dtype="float32")]
            ),
            "inputs[0].shape",
        ),
        (
            deployer_pb2.PredictRequest(
                inputs=[deployer_pb2.Tensor(shape=[1] * 65, dtype="float32")]
            ),
            "inputs[0].shape",
        ),
    ],
)
def test_bad_predictions_name_their_field(req: deployer_pb2.PredictRequest, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as exc:
        convert.infer_request(req, "iris", "v1", INPUTS)
    assert violation(exc) == field


def test_instances_need_a_single_input_model() -> None:
    req = deployer_pb2.PredictRequest(instances=instances([[1.0]]))
    with pytest.raises(errors.InvalidArgument) as exc:
        convert.infer_request(req, "m", "v1", [("a", "FP32"), ("b", "INT64")])
    assert violation(exc) == "instances"
    unnamed = deployer_pb2.PredictRequest(
        inputs=[deployer_pb2.Tensor(shape=[1], dtype="float32", float_data=[1])]
    )
    with pytest.raises(errors.InvalidArgument) as exc:
        convert.infer_request(unnamed, "m", "v1", [("a", "FP32"), ("b", "INT64")])
    assert violation(exc) == "inputs[0].name"


def test_answers_in_either_form_become_typed_tensors_and_rows() -> None:
    probs = np.asarray([[0.25, 0.75], [0.5, 0.5]], np.float32)
    labels = np.asarray([1, 0], np.int64)
    raw = oip.ModelInferResponse(model_version="v2")
    raw.outputs.add(name="probs", datatype="FP32", shape=[2, 2])
    raw.outputs.add(name="label", datatype="INT64", shape=[2])
    raw.raw_output_contents.extend([probs.tobytes(), labels.tobytes()])
    typed = oip.ModelInferResponse(model_version="v2")
    t = typed.outputs.add(name="probs", datatype="FP32", shape=[2, 2])
    t.contents.fp32_contents.extend(probs.ravel().tolist())
    t = typed.outputs.add(name="label", datatype="INT64", shape=[2])
    t.contents.int64_contents.extend(labels.tolist())
    for response in (raw, typed):
        out = convert.predict_response(response, rows=True)
        assert out.model_version == "v2"
        assert [(o.name, o.dtype, list(o.shape)) for o in out.outputs] == [
            ("probs", "float32", [2, 2]),
            ("label", "int64", [2]),
        ]
        assert list(out.outputs[1].int64_data) == [1, 0]
        first = out.predictions.values[0].struct_value
        assert list(first["probs"]) == [0.25, 0.75] and first["label"] == 1
    single = oip.ModelInferResponse()
    single.outputs.add(name="y", datatype="FP16", shape=[2])
    single.raw_output_contents.append(np.asarray([1.5, 2], np.float16).tobytes())
    out = convert.predict_response(single, rows=True)
    assert [v for v in out.predictions] == [1.5, 2.0] and out.outputs[0].dtype == "float32"
    assert not convert.predict_response(single, rows=False).predictions.values


# ------------------------------------------------------------------ autoscaling
def test_autoscaler_goes_up_at_once_and_down_after_its_cooldown() -> None:
    a = Autoscaler(per_replica=4, cooldown=10)
    assert a.decide("d", 1, 1, 5, inflight=0, now=0) == 1
    assert a.decide("d", 1, 1, 5, inflight=9, now=1) == 3  # ceil(9 / 4)
    assert a.decide("d", 3, 1, 5, inflight=100, now=2) == 5  # at most max_replicas
    assert a.decide("d", 5, 1, 5, inflight=0, now=3) == 5  # a lull: not yet
    assert a.decide("d", 5, 1, 5, inflight=0, now=11.9) == 5
    assert a.decide("d", 5, 1, 5, inflight=4, now=12) == 1  # 10 s wanting fewer
    assert a.decide("d", 1, 2, 5, inflight=0, now=13) == 2  # at least min_replicas
    assert a.decide("z", 3, 0, 5, inflight=0, now=0) == 3
    assert a.decide("z", 3, 0, 5, inflight=0, now=10) == 0  # min_replicas 0: scale to zero
    assert a.decide("z", 0, 0, 5, inflight=1, now=11) == 1  # a waiting prediction wakes it
    # raised by someone else (a prediction waking it): a whole cooldown before it goes down
    assert a.decide("y", 0, 0, 5, inflight=0, now=0) == 0
    assert a.decide("y", 1, 0, 5, inflight=0, now=50) == 1
    assert a.decide("y", 1, 0, 5, inflight=0, now=60) == 0


def test_inflight_peaks_and_envoy_counts() -> None:
    f = InFlight()
    with f.track("a"), f.track("a"):
        pass
    with f.track("b"):
        assert f.take() == {"a": 2, "b": 1}
        assert f.take() == {"b": 1}  # still open: the next window starts with it
    assert f.take() == {"b": 1} and f.take() == {}
    stats = {
        "stats": [
            {"name": "cluster.deployment.iris.upstream_rq_active", "value": 3},
            {"name": "cluster.deployment.iris.upstream_rq_total", "value": 99},
            {"name": "cluster.tracker.upstream_rq_active", "value": 7},
            {"name": "cluster.deployment.a.b.upstream_rq_active", "value": 1},
        ]
    }
    assert envoy_active(stats) == {"iris": 3, "a.b": 1}


def test_binary_exa_is_a_unit_not_an_exponent() -> None:
    from services.deployer.manifests import parse_quantity

    assert parse_quantity("memory", "1Ei") == 1024**6
    assert parse_quantity("memory", "1E") == 10**18
    assert parse_quantity("memory", "1e3") == 1000
