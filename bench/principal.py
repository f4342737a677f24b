"""Internal tokens for benchmarks that call services straight, signed as the authz service would.

Services accept only the authz service's signed token (x-neural-principal). A benchmark that
starts services of its own gives them the public key of a keypair it generated
(NEURAL_AUTHZ_PUBLIC_KEY_FILE) and signs, with the private key, a token for the caller it
measures; one token serves the whole run, as a service checks each call's token the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service_kit.auth import Principal
from service_kit.internal_token import HEADER, Signer, load_private_key

ROOT = Path(__file__).resolve().parent.parent
LIFETIME = 4 * 3600  # outlives any benchmark run


def keypair(folder: Path) -> tuple[Path, Path]:
    """The (private, public) key files written into `folder` by `gateway.authz.keys generate`.

    Run as its own process: a script in bench/ has bench/gateway.py, not the gateway package,
    first on its import path."""
    subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", "generate", str(folder)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder / "authz_private.pem", folder / "authz_public.pem"


def metadata(private_key: Path, subject: str, role: str) -> tuple[tuple[str, str], ...]:
    """Call metadata naming `subject` with `role`, as Envoy passes it to a service."""
    signer = Signer(load_private_key(private_key), ttl_seconds=LIFETIME)
    return ((HEADER, signer.sign(Principal(subject, role))),)
