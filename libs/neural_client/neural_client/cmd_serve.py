"""`neural deploy`, `neural scale`, `neural predict`, `neural deployments list|get|delete` and
`neural keys create|list|revoke`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import JsonOption, app, client, console, deployments_app, emit_json, keys_app
from .client import ROLES, from_tensor
from .inputs import load_array
from .render import (
    deployment_state,
    deployment_table,
    deployments_table,
    keys_table,
    predictions_table,
    to_dict,
)


@app.command()
def deploy(
    run_id: str,
    name: Annotated[str, typer.Option(help="The deployment's name (run-<id> by default).")] = "",
    path: Annotated[str, typer.Option(help="The run's ONNX artifact.")] = "model.onnx",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until READY.")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for READY.")] = 300,
    json: JsonOption = False,
) -> None:
    """Serve a run's model; waits until a replica is READY."""
    api = client()
    created = api.deploy(run_id, name, path)
    if not json:
        print(f"deployment {created.name} ({created.id}) created", flush=True)
    found = api.wait_ready(created.id, timeout) if wait else created
    if json:
        emit_json(found)
        return
    state = deployment_state(found.state)
    print(f"deployment {found.name} {state}: {found.ready_replicas} replica(s) ready")


@app.command()
def scale(
    deployment: str, replicas: Annotated[int, typer.Argument(min=0)], json: JsonOption = False
) -> None:
    """Set a deployment's replica count (by id or name)."""
    found = client().scale(deployment, replicas)
    emit_json(found) if json else console.print(deployment_table(found))


@app.command()
def predict(
    deployment: str,
    input: Annotated[
        Path,
        typer.Option("--input", "-i", exists=True, dir_okay=False, help="A .npy or .json file."),
    ],
    json: JsonOption = False,
) -> None:
    """Predict a batch (one row per example) with a deployment (by id or name)."""
    answer = client().predict_response(deployment, load_array(input))
    outputs = [from_tensor(t) for t in answer.outputs]
    if json:
        emit_json(
            {
                "model_version": answer.model_version,
                "outputs": [
                    {"name": t.name, "shape": list(a.shape), "data": a.tolist()}
                    for t, a in zip(answer.outputs, outputs, strict=True)
                ],
            }
        )
        return
    for tensor, array in zip(answer.outputs, outputs, strict=True):
        print(f"output {tensor.name or 0}: shape {tuple(array.shape)}")
    if outputs and outputs[0].ndim >= 1 and len(outputs[0]):
        console.print(predictions_table(outputs[0]))


@deployments_app.command("list")
def deployments_list(json: JsonOption = False) -> None:
    """Your deployments: state, ready replicas, the version serving."""
    found = client().deployments()
    emit_json(found) if json else console.print(deployments_table(found))


@deployments_app.command("get")
def deployments_get(deployment: str, json: JsonOption = False) -> None:
    """One deployment (by id or name), with its endpoint and any error."""
    found = client().get_deployment(deployment)
    emit_json(found) if json else console.print(deployment_table(found))


@deployments_app.command("delete")
def deployments_delete(deployment: str, json: JsonOption = False) -> None:
    """Stop serving a deployment (by id or name) and remove it."""
    found = client().delete_deployment(deployment)
    if json:
        emit_json(found)
        return
    print(f"deployment {found.name} ({found.id}) deleting: its replicas stop, then it is gone")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")] = "user",
    json: JsonOption = False,
) -> None:
    """Create a key; it is printed once."""
    if role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    answer = client().create_key(name, role)
    if json:
        emit_json({"key": answer.key, "api_key": to_dict(answer.api_key)})
        return
    print(f"id:  {answer.api_key.id}")
    print(f"key: {answer.key}")
    print("(shown once: keep it; export NEURAL_API_KEY=<key> to use it)")


@keys_app.command("list")
def keys_list(
    all: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False,
    json: JsonOption = False,
) -> None:
    """The keys (never their secrets)."""
    keys = client().keys(all)
    emit_json(keys) if json else console.print(keys_table(keys))


@keys_app.command("revoke")
def keys_revoke(key_id: str, json: JsonOption = False) -> None:
    """Revoke a key by id: it stops working at once."""
    key = client().revoke_key(key_id)
    emit_json(key) if json else print(f"key {key.id} ({key.name}) revoked")
