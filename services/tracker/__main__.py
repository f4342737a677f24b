"""`python -m services.tracker`: the tracker's gRPC server."""

from __future__ import annotations

import asyncio
import gc

from service_kit import logs
from service_kit.server import serve
from service_kit.settings import load

from .app import build


async def main() -> None:
    settings = load("tracker")
    logs.setup("tracker", settings.log_level)
    app = await build(settings)
    # What is loaded by now (modules, metadata, stubs) lives as long as the process: out of
    # the collector's full passes, which otherwise walk all of it, for tens of milliseconds,
    # while a long history page allocates its rows.
    gc.freeze()
    try:
        await serve(app.spec, settings, app.auth)
    finally:
        await app.store.close()


if __name__ == "__main__":
    asyncio.run(main())
