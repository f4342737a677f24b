"""A worker thread's event loop and resources, kept from one message to the next."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest
from service_kit.actor_loop import ThreadLoop
from service_kit.settings import Settings, load

pytestmark = pytest.mark.unit


class Opened:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()  # opened on the loop it is used on
        self.closed = False


class Recorder:
    def __init__(self) -> None:
        self.opened: list[Opened] = []

    def open(self, settings: Settings) -> Opened:
        self.opened.append(Opened(settings))
        return self.opened[-1]

    async def close(self, res: Opened) -> None:
        res.closed = True


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("NEURAL_DATA_DIR", str(tmp_path))
    return load("trainer")


async def _loop_of(res: Opened) -> asyncio.AbstractEventLoop:
    assert asyncio.get_running_loop() is res.loop
    return res.loop


def test_messages_on_one_thread_share_the_loop_and_resources(settings: Settings) -> None:
    rec = Recorder()
    loops = ThreadLoop(rec.open, rec.close)
    first = loops.run(settings, _loop_of)
    second = loops.run(settings, _loop_of)
    assert first is second and len(rec.opened) == 1
    # other settings: the old resources are closed, new ones opened
    other = dataclasses.replace(settings, log_level="DEBUG")
    loops.run(other, _loop_of)
    assert len(rec.opened) == 2 and rec.opened[0].closed and not rec.opened[1].closed
    loops.close()
    assert rec.opened[1].closed


def test_each_thread_has_its_own(settings: Settings) -> None:
    rec = Recorder()
    loops = ThreadLoop(rec.open, rec.close)
    loops.run(settings, _loop_of)

    def other_thread() -> None:
        loops.run(settings, _loop_of)
        loops.close()

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(30)
    assert len(rec.opened) == 2 and rec.opened[0].loop is not rec.opened[1].loop
    assert rec.opened[1].closed and not rec.opened[0].closed
    loops.close()


def test_tasks_a_message_leaves_behind_are_cancelled_when_it_returns(settings: Settings) -> None:
    rec = Recorder()
    loops = ThreadLoop(rec.open, rec.close)
    left: list[asyncio.Task[None]] = []

    async def leaves_a_task(res: Opened) -> None:
        left.append(asyncio.create_task(asyncio.sleep(3600)))

    loops.run(settings, leaves_a_task)
    assert left[0].cancelled()
    loops.close()


def test_a_message_that_raises_closes_them_and_the_next_opens_anew(settings: Settings) -> None:
    rec = Recorder()
    loops = ThreadLoop(rec.open, rec.close)

    async def fails(res: Opened) -> None:
        raise OSError("the database went away")

    with pytest.raises(OSError, match="went away"):
        loops.run(settings, fails)
    assert rec.opened[0].closed
    loops.run(settings, _loop_of)
    assert len(rec.opened) == 2 and not rec.opened[1].closed
    loops.close()
