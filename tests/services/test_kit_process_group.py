"""service_kit.process_group's start checks, and health as a process of a group answers it:
NOT_SERVING until its own dependencies answer (grpc's health service starts out SERVING)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from service_kit import process_group
from service_kit.server import ServiceSpec

from tests.services.test_kit_warmup import NOT_SERVING, SERVING, kit_settings, running, status


@pytest.mark.unit
async def test_health_is_not_serving_until_the_checks_pass(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def blocked() -> bool:  # a database that has not answered yet
        await gate.wait()
        return True

    spec = ServiceSpec("kit", [], health_checks=[blocked])
    async with running(spec, tmp_path) as stub:
        assert await status(stub) == NOT_SERVING
        gate.set()
        deadline = time.monotonic() + 30
        while await status(stub) != SERVING:
            assert time.monotonic() < deadline, "never SERVING"
            await asyncio.sleep(0.02)


def listener(reuse_port: bool) -> socket.socket:
    s = socket.socket()
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.unit
@pytest.mark.parametrize("reuse_port", [False, True], ids=["a server", "another group"])
def test_a_port_in_use_is_refused(reuse_port: bool) -> None:
    with listener(reuse_port) as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError):
            process_group.claim_port("127.0.0.1", port)
    assert process_group.claim_port("127.0.0.1", port) == port  # free again
    assert process_group.claim_port("127.0.0.1", 0) > 0  # port 0: one port for all children


@pytest.mark.unit
def test_a_group_on_a_used_port_starts_nothing(tmp_path: Path) -> None:
    with listener(False) as held:
        settings = kit_settings(tmp_path)
        settings = type(settings)(**{**vars(settings), "port": held.getsockname()[1]})
        group = process_group.Group("kit", settings, ["false"])
        assert group.run(None) == 1
        assert group.children == []
