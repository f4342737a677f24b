"""Settings from `NEURAL_*` environment variables, validated once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neural_dsl import Limits

DEFAULT_PORTS = {
    "compiler": 50051,
    "trainer": 50052,
    "tracker": 50053,
    "deployer": 50054,
    "authz": 50055,
    "ratelimit": 50056,
}


class SettingsError(ValueError):
    """A NEURAL_* variable holds a value the platform cannot use."""


def _int(name: str, default: int, low: int = 0, high: int = 1 << 31) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw not in ("0", "1"):
        raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")
    return raw == "1"


@dataclass(frozen=True)
class Settings:
    service: str
    host: str
    port: int
    metrics_port: int
    database_url: str
    redis_url: str
    storage_dir: Path
    # Signs List/Search page tokens (pagination.configure); empty: a fixed, public key.
    page_token_secret: str
    log_level: str = "INFO"
    max_message_bytes: int = 8 * 1024 * 1024
    max_source_bytes: int = 1_000_000
    max_upload_bytes: int = 512 * 1024 * 1024  # one uploaded file (dataset, artifact)
    grace_seconds: int = 10
    # Envoy or a test may turn authentication off; never the default.
    auth_disabled: bool = False
    # How soon the broker gives a dead worker's unacknowledged messages to another worker.
    broker_heartbeat_timeout_ms: int = 15_000
    broker_maintenance_chance: int = 10_000  # broker commands per million that do maintenance
    # Training jobs: at most this long each; how many a worker process runs at once.
    training_time_limit_s: int = 6 * 3600
    worker_threads: int = 1
    # What one request may ask of a service (see neural_dsl.Limits, built by `limits()`).
    max_parameters: int = 100_000_000
    max_onnx_bytes: int = 512 << 20
    training_memory_bytes: int = 4 << 30  # a training worker's budget for one job
    max_dataset_values: int = 100_000_000  # samples x features of a synthetic dataset
    onnx_export_queue: int = 8  # ONNX compiles one compiler server holds (waiting, exporting)
    max_watches_per_principal: int = 20  # concurrent Watch* streams of one caller
    # The authz service's Ed25519 keys (PEM): it signs the gateway's internal tokens with the
    # private one; services check them with the public one. Empty: no internal tokens.
    authz_private_key_file: str = ""
    authz_public_key_file: str = ""
    # A worker's API key (a file: a mounted secret), an admin key scoped to
    # AuthService.IssueDelegatedToken: how it gets tokens to act for a job's owner.
    service_key_file: str = ""
    # The rate-limit service: its limits file ("" = gateway/ratelimit/limits.yaml), whether it
    # admits calls while Redis is unreachable, and how long it waits for Redis (well inside
    # Envoy's 0.25 s timeout for the whole decision).
    ratelimit_config: str = ""
    ratelimit_fail_open: bool = True
    ratelimit_redis_timeout_ms: int = 100
    # Whether a service migrates its tables at start (the default), or waits for
    # `python -m services.migrate` to have (a migration Job; services without DDL rights).
    migrate_at_start: bool = True
    # Server processes sharing the port (service_kit.process_group): 1 for every service but
    # those whose main() enables a group (the tracker: NEURAL_TRACKER_PROCESSES).
    processes: int = 1
    # The database pool of each process (service_kit.db.make_engine): connections kept open.
    db_pool_size: int = 10
    # Access logs: calls slower than this (ms) are always logged, as are errors; of the fast
    # successful ones, this fraction (per method, every 1/sample-th); a summary per method
    # every access_log_summary_s seconds (0: none).
    slow_call_ms: int = 500
    access_log_sample: float = 0.01
    access_log_summary_s: int = 60

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def limits(self) -> Limits:
        """The DSL's `Limits` with this service's settings: what a caller's program may ask."""
        from neural_dsl import Limits  # the kit itself does not need the DSL

        return Limits(
            max_source_bytes=self.max_source_bytes,
            max_parameters=self.max_parameters,
            max_onnx_bytes=self.max_onnx_bytes,
            max_training_bytes=self.training_memory_bytes,
            max_dataset_values=self.max_dataset_values,
        )


def _fraction(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number between 0 and 1, got {raw!r}") from None
    if not 0 <= value <= 1:
        raise SettingsError(f"{name} must be between 0 and 1, got {value}")
    return value


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's cpuset, taskset),
    not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load(service: str, multiprocess: bool = False) -> Settings:
    """The settings of `service` from the environment (NEURAL_<SERVICE>_PORT and friends).
    `multiprocess`: the service may run as a group of processes, NEURAL_<SERVICE>_PROCESSES
    of them (default: one per available CPU)."""
    env = os.environ
    data_dir = Path(env.get("NEURAL_DATA_DIR", ".run")).resolve()
    port = _int(f"NEURAL_{service.upper()}_PORT", DEFAULT_PORTS.get(service, 50050), 0, 65535)
    database_url = env.get("NEURAL_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir / 'neural.db'}"
    if not database_url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        raise SettingsError(
            "NEURAL_DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://"
        )
    redis_url = env.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("NEURAL_REDIS_URL must be a redis:// URL")
    level = env.get("NEURAL_LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"NEURAL_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level}")
    secret = env.get("NEURAL_PAGE_TOKEN_SECRET", "")
    if secret and len(secret) < 32:
        raise SettingsError("NEURAL_PAGE_TOKEN_SECRET must be at least 32 characters")
    return Settings(
        service=service,
        host=env.get("NEURAL_HOST", "127.0.0.1"),
        port=port,
        metrics_port=_int(
            f"NEURAL_{service.upper()}_METRICS_PORT", port + 1000 if port else 0, 0, 65535
        ),
        database_url=database_url,
        redis_url=redis_url,
        storage_dir=Path(env.get("NEURAL_STORAGE_DIR", str(data_dir / "storage"))).resolve(),
        page_token_secret=secret,
        service_key_file=env.get("NEURAL_SERVICE_KEY_FILE", ""),
        log_level=level,
        max_message_bytes=_int("NEURAL_MAX_MESSAGE_BYTES", 8 * 1024 * 1024, 1024, 256 << 20),
        max_source_bytes=_int("NEURAL_MAX_SOURCE_BYTES", 1_000_000, 100, 16 << 20),
        max_upload_bytes=_int("NEURAL_MAX_UPLOAD_BYTES", 512 << 20, 1024, 1 << 40),
        grace_seconds=_int("NEURAL_GRACE_SECONDS", 10, 0, 600),
        auth_disabled=env.get("NEURAL_AUTH_DISABLED", "") == "1",
        broker_heartbeat_timeout_ms=_int(
            "NEURAL_BROKER_HEARTBEAT_TIMEOUT_MS", 15_000, 1000, 3_600_000
        ),
        broker_maintenance_chance=_int("NEURAL_BROKER_MAINTENANCE_CHANCE", 10_000, 1, 1_000_000),
        training_time_limit_s=_int("NEURAL_TRAINING_TIME_LIMIT_S", 6 * 3600, 1, 7 * 86400),
        worker_threads=_int("NEURAL_WORKER_THREADS", 1, 1, 64),
        max_parameters=_int("NEURAL_MAX_PARAMETERS", 100_000_000, 1, 10**12),
        max_onnx_bytes=_int("NEURAL_MAX_ONNX_BYTES", 512 << 20, 1024, 2**31 - 1),
        training_memory_bytes=_int("NEURAL_TRAINING_MEMORY_BYTES", 4 << 30, 1 << 20, 1 << 44),
        max_dataset_values=_int("NEURAL_MAX_DATASET_VALUES", 100_000_000, 1, 10**12),
        onnx_export_queue=_int("NEURAL_ONNX_EXPORT_QUEUE", 8, 1, 10_000),
        max_watches_per_principal=_int("NEURAL_MAX_WATCHES_PER_PRINCIPAL", 20, 1, 100_000),
        authz_private_key_file=env.get("NEURAL_AUTHZ_PRIVATE_KEY_FILE", ""),
        authz_public_key_file=env.get("NEURAL_AUTHZ_PUBLIC_KEY_FILE", ""),
        ratelimit_config=env.get("NEURAL_RATELIMIT_CONFIG", ""),
        ratelimit_fail_open=_flag("NEURAL_RATELIMIT_FAIL_OPEN", True),
        ratelimit_redis_timeout_ms=_int("NEURAL_RATELIMIT_REDIS_TIMEOUT_MS", 100, 1, 10_000),
        migrate_at_start=_flag("NEURAL_MIGRATE_AT_START", True),
        processes=(
            _int(f"NEURAL_{service.upper()}_PROCESSES", available_cpus(), 1, 256)
            if multiprocess
            else 1
        ),
        db_pool_size=_int("NEURAL_DB_POOL_SIZE", 10, 1, 1000),
        slow_call_ms=_int("NEURAL_SLOW_CALL_MS", 500, 0, 3_600_000),
        access_log_sample=_fraction("NEURAL_ACCESS_LOG_SAMPLE", 0.01),
        access_log_summary_s=_int("NEURAL_ACCESS_LOG_SUMMARY_S", 60, 0, 86_400),
    )


def service_address(name: str) -> str:
    """Where another service listens: NEURAL_<NAME>_ADDRESS, else localhost and its port."""
    default = f"127.0.0.1:{DEFAULT_PORTS[name]}"
    return os.environ.get(f"NEURAL_{name.upper()}_ADDRESS", default)
