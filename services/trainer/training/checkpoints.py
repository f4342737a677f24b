"""The files of a training run: written atomically (temporary file, fsync, `os.replace`), so
a reader or a resumed worker sees the old file or the new one, never half of one; the
temporary files of writers that died are swept; and a checkpoint is resumed only when its
fingerprint says it was made from the same network, data and settings."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from neural_dsl.ir import Network, network_to_json

from .spec import TrainSpec
from .task import Task

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def fingerprint(network: Network, data: Task, spec: TrainSpec) -> str:
    """What a checkpoint must agree on to be resumed (the epoch count may grow)."""
    h = hashlib.blake2b(digest_size=16)
    fixed = {
        "format": CHECKPOINT_FORMAT,
        "network": network_to_json(network),
        "spec": [spec.backend, spec.batch_size, spec.validation_split, spec.seed, spec.shuffle],
        "data": [list(data.x.shape), str(data.x.dtype), data.n_train],
    }
    h.update(json.dumps(fixed, sort_keys=True).encode())
    for a in (data.x, data.target):
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def usable(meta: Mapping[str, Any], expected: str, path: Path) -> bool:
    """Whether the checkpoint at `path`, whose metadata is `meta`, may be resumed: it has this
    format and the `expected` fingerprint."""
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("fingerprint") != expected:
        log.warning("checkpoint %s is for other data or settings: starting afresh", path)
        return False
    return True


@contextlib.contextmanager
def atomic(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; once written, fsync it and move it into place,
    so readers (and a resumed worker) see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def sweep_partials(workdir: Path) -> None:
    """Remove the temporary files of writers that died mid-write (a SIGKILLed worker)."""
    for tmp in workdir.glob(".*.partial*"):
        found = re.search(r"\.(\d+)\.partial", tmp.name)
        if found and int(found[1]) != os.getpid() and not _alive(int(found[1])):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True
