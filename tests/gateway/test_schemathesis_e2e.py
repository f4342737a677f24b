"""schemathesis against /openapi.json through the gateway, with an admin key: every operation
is called with generated requests, and no answer may be a 5xx or stray from the document."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from scripts.local_stack import admin_key, running_stack
from tests.waiting import until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# What the issue asks of every answer: no server error, and status, content type, headers and
# body as the document says.
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
EXAMPLES = os.environ.get("NEURAL_SCHEMATHESIS_EXAMPLES", "10")
# Watch streams last until their job or run ends, which a generated run never does: they are
# tested over REST by the gateway's own stream tests, not here.
EXCLUDED_PATHS = r":watch$"


def _excluded_tags() -> list[str]:
    """Services whose protos exist but whose server `make run` does not start yet: every call
    to them is rightly a 503 (UNAVAILABLE)."""
    return ["DeployerService"] if not (ROOT / "services" / "deployer").is_dir() else []


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """`make run`'s stack (scripts/run_stack.py) on free ports in a folder of its own."""
    with tempfile.TemporaryDirectory(prefix="neural-schemathesis-") as tmp:
        # The admin key's calls are limited like anyone's; this test makes many more than a
        # person would, so its admin role gets a window large enough for all of them.
        limits = yaml.safe_load((ROOT / "gateway" / "ratelimit" / "limits.yaml").read_text())
        limits["roles"]["admin"] = {"requests": 1_000_000}
        limits_file = Path(tmp) / "limits.yaml"
        limits_file.write_text(yaml.safe_dump(limits))
        with running_stack(Path(tmp), {"NEURAL_RATELIMIT_CONFIG": str(limits_file)}) as env:
            yield env


# Calls that would end the test's own credentials: the stateful phase links ListApiKeys' ids to
# these, and a revoked or rotated admin key turns every later call into a 401. They run in a
# second pass without that phase (unknown ids: each answer is still checked).
KEY_ENDING = ("AuthService_RevokeApiKey", "AuthService_RotateApiKey")


def _schemathesis(base: str, key: str, out: Path, selection: list[str]) -> str:
    """One schemathesis run over the selected operations; its summary, after failing the test
    with the first failures when any answer was a 5xx or strayed from the document."""
    out.mkdir()
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{base}/openapi.json",
            "--url",
            base,
            "--header",
            f"authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--max-examples",
            EXAMPLES,
            "--generation-deterministic",
            "--exclude-path-regex",
            EXCLUDED_PATHS,
            *[arg for tag in _excluded_tags() for arg in ("--exclude-tag", tag)],
            *selection,
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(out),
        ],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    (out / "schemathesis.out").write_text(result.stdout + result.stderr)
    summary = result.stdout[result.stdout.rfind("=== SUMMARY ===") :]
    # The summary is the evidence: printed with -s, and in the failure message with
    # the first failures (all of them in schemathesis.out beside the JUnit report).
    print(summary)
    assert result.returncode == 0, result.stdout[:6000] + summary + result.stderr[-2000:]
    return summary


def test_every_operation_conforms_through_the_gateway(
    stack: dict[str, str], tmp_path: Path
) -> None:
    port = int(stack["NEURAL_GATEWAY_PORT"])
    base = f"http://127.0.0.1:{port}"
    until(
        lambda: httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200,
        timeout=30,
        what="the gateway serves /openapi.json",
    )
    key = admin_key(stack, "st")
    others = [arg for op in KEY_ENDING for arg in ("--exclude-operation-id", op)]
    summary = _schemathesis(base, key, tmp_path / "all", others)
    # The admin key stayed valid throughout: the services were reached, not refused at the door.
    assert "Authentication failed" not in summary
    key_ending = [arg for op in KEY_ENDING for arg in ("--include-operation-id", op)]
    _schemathesis(
        base, key, tmp_path / "keys", [*key_ending, "--phases", "examples,coverage,fuzzing"]
    )
