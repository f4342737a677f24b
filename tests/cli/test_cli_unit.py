"""The `neural` CLI and its client without a server: diagnostics, tables, JSON, inputs, exit
codes and messages, the watch loop and Ctrl-C, with a fake client in place of the gateway."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from neural.v1 import common_pb2, compiler_pb2, deployer_pb2, tracker_pb2
from neural_client import (
    Client,
    MissingKeyError,
    NeuralError,
    channel,
    cli,
    cmd_compile,
    cmd_jobs,
    cmd_serve,
    cmd_tracker,
    render,
    watch,
)
from neural_client.app import app, error_message
from neural_client.client import from_tensor, to_tensor
from neural_client.inputs import load_array
from rich.console import Console
from typer.testing import CliRunner

runner = CliRunner()
BAD = 'network Bad {\n  input: (4,)\n  layers:\n    Dense(3, "relu"\n    Output(2)\n}\n'


def test_diagnostic_shows_the_line_and_a_caret_under_the_column() -> None:
    d = common_pb2.Diagnostic(severity="error", message="unexpected name", line=5, column=5)
    text = render.diagnostic("bad.neural", BAD, d)
    assert text.splitlines() == [
        "bad.neural:5:5: error: unexpected name",
        "        Output(2)",
        "        ^",
    ]


def test_diagnostic_without_a_source_line_is_one_line() -> None:
    d = common_pb2.Diagnostic(severity="warning", message="m", line=99, column=1)
    assert render.diagnostic("f", BAD, d) == "f:99:1: warning: m"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1:8080", False)),
        ("http://gw:80/", ("gw:80", False)),
        ("https://neural.example.com", ("neural.example.com:443", True)),
    ],
)
def test_urls(url: str, expected: tuple[str, bool]) -> None:
    assert channel.target(url) == expected


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="NEURAL_URL"):
        channel.target("ftp://x")


def test_only_reads_are_retried_on_unavailable() -> None:
    config = json.loads(channel.service_config())["methodConfig"][0]
    methods = {(n["service"], n["method"]) for n in config["name"]}
    assert ("neural.v1.TrackerService", "GetRun") in methods
    assert ("neural.v1.TrainerService", "SubmitTraining") not in methods
    assert ("neural.v1.DeployerService", "CreateDeployment") not in methods
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURAL_API_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="NEURAL_API_KEY is not set"):
        Client()


def test_client_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURAL_API_KEY", "nk_x")
    monkeypatch.setenv("NEURAL_URL", "127.0.0.1:1")
    with Client() as c:
        assert c.url == "127.0.0.1:1"
        assert c.metadata == (("authorization", "Bearer nk_x"),)


def test_exit_codes_and_messages() -> None:
    assert error_message(NeuralError("no run 'x'", grpc.StatusCode.NOT_FOUND), "u") == (
        "NOT_FOUND: no run 'x'",
        1,
    )
    message, code = error_message(NeuralError("refused", grpc.StatusCode.UNAVAILABLE), "h:1")
    assert code == 3 and message.startswith("the platform at h:1 is unreachable")


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["neural", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return int(exit_.value.code or 0)


def test_main_missing_key_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NEURAL_API_KEY", raising=False)
    assert run_main(monkeypatch, "runs", "list") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "NEURAL_API_KEY is not set" in err and "neural-keys create" in err


def test_main_unreachable_is_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEURAL_API_KEY", "nk_x")
    monkeypatch.setenv("NEURAL_URL", "127.0.0.1:1")  # nothing listens on port 1
    assert run_main(monkeypatch, "experiments") == 3
    assert "unreachable" in capsys.readouterr().err


def test_usage_errors_are_exit_2() -> None:
    assert runner.invoke(app, ["scale", "d", "many"]).exit_code == 2
    assert runner.invoke(app, ["validate", "/no/such/file.neural"]).exit_code == 2
    assert runner.invoke(app, ["plot", "r", "--x-axis", "epoch"]).exit_code == 2


class FakeClient:
    """What the commands call, answering canned messages; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def validate(self, source: str) -> compiler_pb2.ValidateResponse:
        self.calls.append(("validate", (source,)))
        diag = common_pb2.Diagnostic(severity="error", message="expected ')'", line=5, column=5)
        return compiler_pb2.ValidateResponse(valid=False, diagnostics=[diag])

    def runs(self, *args: Any) -> list[tracker_pb2.Run]:
        self.calls.append(("runs", args))
        metric = tracker_pb2.Metric(key="val_accuracy", value=0.97, step=3)
        run = tracker_pb2.Run(id="run-1", name="train-1", status=2, latest_metrics=[metric])
        return [run]

    def predict_response(self, deployment: str, array: np.ndarray) -> Any:
        self.calls.append(("predict", (deployment, array.shape)))
        scores = np.eye(3, dtype=np.float32)[[2, 0]]
        return deployer_pb2.PredictResponse(model_version="v1", outputs=[to_tensor(scores)])

    def plot(self, run_ids: list[str], keys: list[str], x_axis: str) -> bytes:
        self.calls.append(("plot", (run_ids, keys, x_axis)))
        return b"\x89PNG\r\n\x1a\n..."

    def deployments(self) -> list[deployer_pb2.Deployment]:
        self.calls.append(("deployments", ()))
        return [
            deployer_pb2.Deployment(
                id="d-1",
                name="digits",
                state=deployer_pb2.DEPLOYMENT_STATE_READY,
                replicas=2,
                ready_replicas=1,
                model_version="v1",
            )
        ]

    def delete_deployment(self, deployment: str) -> deployer_pb2.Deployment:
        self.calls.append(("delete", (deployment,)))
        return deployer_pb2.Deployment(
            id="d-1", name=deployment, state=deployer_pb2.DEPLOYMENT_STATE_DELETING
        )

    def cancel_job(self, job_id: str, kind: str) -> common_pb2.Job:
        self.calls.append(("cancel", (job_id, kind)))
        return common_pb2.Job(id=job_id, state=common_pb2.JOB_STATE_CANCELLED)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    for module in (cmd_compile, cmd_jobs, cmd_serve, cmd_tracker):
        monkeypatch.setattr(module, "client", lambda: fake)
    return fake


def test_validate_prints_carets_and_exits_1(fake: FakeClient, tmp_path: Path) -> None:
    program = tmp_path / "bad.neural"
    program.write_text(BAD)
    result = runner.invoke(app, ["validate", str(program)])
    assert result.exit_code == 1
    assert f"{program}:5:5: error: expected ')'" in result.output
    assert "        Output(2)\n        ^" in result.output


def test_runs_list_json_is_the_runs(fake: FakeClient) -> None:
    result = runner.invoke(app, ["runs", "list", "--json", "--experiment", "e"])
    assert result.exit_code == 0
    runs = json.loads(result.stdout)
    assert runs[0]["id"] == "run-1" and runs[0]["status"] == "RUN_STATUS_FINISHED"
    assert fake.calls == [("runs", ("e", "", (), 50))]


def test_runs_table_shows_metrics(fake: FakeClient) -> None:
    result = runner.invoke(app, ["runs", "list"])
    assert "run-1" in result.stdout and "val_accuracy=0.97" in result.stdout


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_predict_from_files(fake: FakeClient, tmp_path: Path, suffix: str) -> None:
    rows = np.zeros((2, 4), dtype=np.float32)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, rows)
    else:
        path.write_text(json.dumps({"instances": rows.tolist()}))
    result = runner.invoke(app, ["predict", "digits", "--input", str(path), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["outputs"][0]["shape"] == [2, 3]
    assert fake.calls == [("predict", ("digits", (2, 4)))]
    table = runner.invoke(app, ["predict", "digits", "--input", str(path)]).stdout
    assert "shape (2, 3)" in table and "class" in table


def test_plot_writes_the_png(fake: FakeClient, tmp_path: Path) -> None:
    out = tmp_path / "c.png"
    result = runner.invoke(app, ["plot", "r1", "r2", "-m", "loss", "-o", str(out)])
    assert result.exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert fake.calls == [("plot", (["r1", "r2"], ["loss"], "step"))]


def test_inputs(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text("[1, 2, 3]")
    assert load_array(tmp_path / "one.json").shape == (1, 3)
    (tmp_path / "ragged.json").write_text("[[1], [2, 3]]")
    with pytest.raises(NeuralError):
        load_array(tmp_path / "ragged.json")
    with pytest.raises(NeuralError, match=r"\.npy or \.json"):
        load_array(tmp_path / "x.csv")


def test_tensors_round_trip() -> None:
    floats = np.arange(6, dtype=np.float64).reshape(2, 3)
    tensor = to_tensor(floats)
    assert tensor.dtype == "float32" and list(tensor.shape) == [2, 3]
    assert np.array_equal(from_tensor(tensor), floats.astype(np.float32))
    ints = to_tensor(np.array([[1, 2]]))
    assert ints.dtype == "int64" and from_tensor(ints).tolist() == [[1, 2]]


def event(kind: str, message: str, state: int, epoch: int = 0, **metrics: float) -> Any:
    job = common_pb2.Job(id="j1", state=state, details=struct_pb2.Struct())
    if state == common_pb2.JOB_STATE_SUCCEEDED:
        job.details.update({"run_id": "r1"})
    return common_pb2.JobEvent(
        job_id="j1", state=state, type=kind, message=message, epoch=epoch, metrics=metrics, job=job
    )


RUNNING = common_pb2.JOB_STATE_RUNNING


def test_follow_prints_each_epoch_and_the_end() -> None:
    events = [
        event("started", "started", RUNNING),
        event("progress", "epoch 1/2", RUNNING, 1, loss=0.5, accuracy=0.8),
        event("progress", "epoch 2/2", RUNNING, 2, loss=0.25, accuracy=0.9),
        event("completed", "runs/r1", common_pb2.JOB_STATE_SUCCEEDED, 2),
        event("never", "read", RUNNING),
    ]
    console = Console(record=True, width=120, force_terminal=False)
    job = watch.follow(iter(events), console)
    assert job is not None and watch.summary(job) == "job j1 SUCCEEDED (run r1)"
    assert console.export_text().splitlines() == [
        "started",
        "epoch 1/2  loss 0.5000  accuracy 0.8000",
        "epoch 2/2  loss 0.2500  accuracy 0.9000",
        "completed: runs/r1",
    ]


def interrupted() -> Any:
    yield event("progress", "epoch 1/9", RUNNING, 1, loss=1.0)
    raise KeyboardInterrupt


def test_ctrl_c_with_yes_cancels_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClient()
    monkeypatch.setattr(fake, "watch", lambda job_id, kind: interrupted(), raising=False)
    with pytest.raises(cmd_jobs.typer.Exit) as exit_:
        cmd_jobs.watch_job(fake, "j1", "training", yes=True, no_input=False)  # type: ignore[arg-type]
    assert exit_.value.exit_code == 130
    assert fake.calls == [("cancel", ("j1", "training"))]


def test_ctrl_c_with_no_input_leaves_the_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClient()
    monkeypatch.setattr(fake, "watch", lambda job_id, kind: interrupted(), raising=False)
    with pytest.raises(cmd_jobs.typer.Exit):
        cmd_jobs.watch_job(fake, "j1", "training", yes=False, no_input=True)  # type: ignore[arg-type]
    assert fake.calls == []
    assert "neural jobs cancel j1" in capsys.readouterr().err


def test_compare_table_marks_the_best() -> None:
    summary = tracker_pb2.MetricSummary
    answer = tracker_pb2.CompareRunsResponse(
        runs=[
            tracker_pb2.RunComparison(run_id="a", metrics={"acc": summary(last=0.9)}),
            tracker_pb2.RunComparison(run_id="b", metrics={"acc": summary(last=0.8)}),
        ],
        best_runs={"acc": tracker_pb2.BestRun(metric_key="acc", run_id="a", value=0.9)},
    )
    console = Console(record=True, width=120)
    console.print(render.compare_table(answer))
    text = console.export_text()
    assert "0.9 *" in text and "0.8 *" not in text


def test_deployments_list_and_delete(fake: FakeClient) -> None:
    table = runner.invoke(app, ["deployments", "list"])
    assert table.exit_code == 0
    assert "digits" in table.stdout and "READY" in table.stdout and "1/2" in table.stdout
    listed = json.loads(runner.invoke(app, ["deployments", "list", "--json"]).stdout)
    assert [d["name"] for d in listed] == ["digits"]
    deleted = runner.invoke(app, ["deployments", "delete", "digits"])
    assert deleted.exit_code == 0 and "deployment digits (d-1) deleting" in deleted.stdout
    assert ("delete", ("digits",)) in fake.calls


def test_a_deployment_not_ready_in_time_is_not_called_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pending = deployer_pb2.Deployment(
        id="d-1", name="slow", state=deployer_pb2.DEPLOYMENT_STATE_PENDING
    )
    monkeypatch.setattr(Client, "get_deployment", lambda self, d: pending)
    monkeypatch.setenv("NEURAL_API_KEY", "nk_test")
    with pytest.raises(NeuralError) as caught:
        Client().wait_ready("slow", timeout_s=0, poll_s=0)
    assert not caught.value.unreachable
    assert error_message(caught.value, "http://x")[1] == 1
    assert "not ready after 0 s (DEPLOYMENT_STATE_PENDING" in str(caught.value)
