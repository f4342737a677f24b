"""A training worker warms the training path before its consumers start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_warm_up_trains_through_the_job_path_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    # a fresh interpreter, as a worker process starts: nothing imported yet
    code = (
        "import json, sys, tempfile\n"
        "tempfile.tempdir = sys.argv[1]\n"
        "from service_kit.settings import load\n"
        "from services.trainer.warmup import WarmUp\n"
        "before = {'torch', 'torch._dynamo', 'sklearn.datasets'} & set(sys.modules)\n"
        "WarmUp(load('trainer').limits()).before_worker_boot(None, None)\n"
        "after = {'torch', 'torch._dynamo', 'sklearn.datasets'} & set(sys.modules)\n"
        "print(json.dumps([sorted(before), sorted(after)]))\n"
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"PATH": str(Path(sys.executable).parent), "NEURAL_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(scratch)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == []
    # the first optimizer imports torch._dynamo: seconds a first job no longer pays
    assert after == ["sklearn.datasets", "torch", "torch._dynamo"]
    assert "warm-up failed" not in done.stderr
    assert not list(scratch.glob("neural-warmup-*"))  # its checkpoint directory is gone
