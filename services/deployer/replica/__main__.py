"""`python -m services.deployer.replica`: serve one ONNX model until SIGTERM.

Prints `PORT <n>` as the first line on stdout once listening; logs go to stderr. A model file
onnxruntime cannot load ends the process with exit code 3 and the loader's reason as the last
line on stderr; an address it cannot listen on, with exit code 1 and the reason likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys

from service_kit import logs
from service_kit.internal_token import Verifier

from .auth import Gate
from .model import Model, ModelError
from .server import Settings, serve

EXIT_BAD_MODEL = 3


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not >= 0")
    return value


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.deployer.replica", description=__doc__)
    p.add_argument("--model", required=True, help="the .onnx file")
    p.add_argument("--model-name", required=True, help="the deployment name (OIP model_name)")
    p.add_argument("--model-version", required=True, help="the version id (OIP model_version)")
    p.add_argument("--port", type=_not_negative, default=0, help="0: pick a free one")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-batch-size", type=_positive, default=1, help="1: no batching")
    p.add_argument("--max-batch-delay-us", type=_not_negative, default=0)
    p.add_argument("--threads", type=_positive, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--concurrency", type=_positive, default=2, help="model runs at once")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logs.setup("replica", os.environ.get("NEURAL_LOG_LEVEL", "INFO"))
    key_file = os.environ.get("NEURAL_AUTHZ_PUBLIC_KEY_FILE", "")
    gate = Gate(Verifier.from_file(key_file) if key_file else None, args.model_name)
    try:
        model = Model(args.model, threads=args.threads)
    except ModelError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_MODEL)
    settings = Settings(
        model_name=args.model_name,
        model_version=args.model_version,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_batch_delay_us=args.max_batch_delay_us,
        threads=args.threads,
        concurrency=args.concurrency,
    )
    gc.freeze()  # what is loaded now lives as long as the process: out of the collector's way
    try:
        asyncio.run(serve(model, settings, gate))
    except OSError as exc:  # the port is taken, the host is not this machine's
        print(str(exc), file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
