"""The rate-limit service's YAML model and how descriptors map to windows and costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from service_kit import settings

from gateway.ratelimit import config
from gateway.ratelimit.config import Bucket, ConfigError, Limit

BASE: dict[str, Any] = {
    "domain": "neural",
    "window_seconds": 60,
    "roles": {"viewer": {"requests": 10}, "user": {"requests": 20, "window_seconds": 1}},
    "default_role": "viewer",
    "subjects": {"ci": {"requests": 500}},
    "anonymous": {"requests": 5},
    "costs": [
        {
            "name": "compile",
            "paths": ["/neural.v1.CompilerService/Compile", "/v1/models:compile"],
            "cost": 3,
        },
        {
            "name": "submit",
            "paths": ["/neural.v1.TrainerService/SubmitTraining", "/v1/training-jobs"],
            "methods": ["POST"],
            "cost": 4,
        },
        {"name": "admin", "paths": ["/v1/admin/*"], "cost": 2},
    ],
}


def parse(**changes: Any) -> config.Config:
    return config.parse({**BASE, **changes}, "limits.yaml")


def test_the_packaged_file_loads_and_makes_the_heavy_rpcs_cost_more() -> None:
    limits = config.load()
    assert limits.domain == "neural"
    assert not limits.shadow_mode
    for path in (
        "/neural.v1.CompilerService/Compile",
        "/v1/models:compile",
        "/neural.v1.TrainerService/SubmitTraining",
        "/neural.v1.TrainerService/SubmitSearch",
    ):
        assert limits.cost(path, "POST") > 1, path
    assert limits.cost("/v1/training-jobs", "POST") > 1
    assert limits.cost("/v1/training-jobs", "GET") == 1  # listing jobs is a cheap read
    assert limits.cost("/neural.v1.CompilerService/Validate", "POST") == 1


def test_limits_take_the_default_window_unless_they_give_their_own() -> None:
    limits = parse()
    assert limits.roles == {"viewer": Limit(10, 60), "user": Limit(20, 1)}
    assert limits.anonymous == Limit(5, 60)
    assert limits.subjects == {"ci": Limit(500, 60)}


def test_a_subject_counts_in_its_own_window_sized_by_its_role() -> None:
    limits = parse()
    assert limits.bucket({"subject": "alice", "role": "user"}) == Bucket(
        "subject:alice", "role:user", Limit(20, 1)
    )
    # No role, or one without a limit: the default role's size, still alice's own window.
    for entries in ({"subject": "alice"}, {"subject": "alice", "role": "root"}):
        assert limits.bucket(entries) == Bucket("subject:alice", "role:viewer", Limit(10, 60))


def test_a_subject_listed_under_subjects_gets_its_own_limit_whatever_its_role() -> None:
    assert parse().bucket({"subject": "ci", "role": "user"}) == Bucket(
        "subject:ci", "subject:ci", Limit(500, 60)
    )


def test_calls_without_a_subject_count_per_remote_address() -> None:
    limits = parse()
    assert limits.bucket({"remote_address": "10.0.0.7", "path": "/x"}) == Bucket(
        "address:10.0.0.7", "anonymous", Limit(5, 60)
    )
    # A subject wins over the address: authenticated calls are not counted per address.
    assert limits.bucket({"subject": "bob", "remote_address": "10.0.0.7"}).key == "subject:bob"  # type: ignore[union-attr]
    assert limits.bucket({"path": "/x"}) is None
    assert limits.bucket({"subject": "", "remote_address": ""}) is None


def test_costs_match_the_grpc_and_the_rest_path_of_an_rpc() -> None:
    limits = parse()
    assert limits.cost("/neural.v1.CompilerService/Compile") == 3
    assert limits.cost("/v1/models:compile") == 3
    assert limits.cost("/v1/models:compile?view=full") == 3  # the query string is no part
    assert limits.cost("/neural.v1.CompilerService/CompileAsync") == 1  # exact, not a prefix
    assert limits.cost("/v1/admin/keys") == 2  # a trailing * is a prefix
    assert limits.cost("/v1/other") == 1
    assert limits.cost(None) == 1
    assert limits.cost("") == 1


def test_a_cost_rule_with_methods_charges_only_those_methods() -> None:
    limits = parse()
    assert limits.cost("/v1/training-jobs", "POST") == 4
    assert limits.cost("/v1/training-jobs", "post") == 4
    assert limits.cost("/v1/training-jobs", "GET") == 1
    # Envoy may send no method entry: charged the heavier cost rather than let it pass cheap.
    assert limits.cost("/v1/training-jobs", None) == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"roles": {"user": {"requests": 0}}}, "roles.user.requests: must be between 1"),
        ({"roles": {"user": {"requests": "ten"}}}, "roles.user.requests: must be an integer"),
        ({"roles": {"user": {"requests": True}}}, "roles.user.requests: must be an integer"),
        ({"roles": {"user": {"window_seconds": 5}}}, "roles.user: needs 'requests'"),
        ({"roles": {"user": {"requests": 5, "per": 1}}}, "roles.user: unknown key 'per'"),
        ({"roles": {}}, "roles: needs a limit for at least one role"),
        ({"roles": [1]}, "roles: must be a mapping"),
        ({"default_role": "admin"}, "default_role: 'admin' has no limit under roles"),
        ({"window_seconds": 0}, "window_seconds: must be between 1 and 86400"),
        ({"shadow_mode": "yes"}, "shadow_mode: must be true or false"),
        ({"anonymous": None}, "anonymous: needs 'requests'"),
        ({"costs": {"compile": 3}}, "costs: must be a list of rules"),
        ({"costs": [{"name": "c", "paths": [], "cost": 2}]}, "costs[0].paths: must be a non"),
        ({"costs": [{"name": "c", "paths": ["v1/x"], "cost": 2}]}, "costs[0].paths[0]: must"),
        ({"costs": [{"name": "c", "paths": ["/x"]}]}, "costs[0]: needs 'cost'"),
        (
            {"costs": [{"name": "c", "paths": ["/x"], "cost": 2, "methods": ["FETCH"]}]},
            "costs[0].methods[0]: must be one of",
        ),
        (
            {"costs": [{"name": "c", "paths": ["/x"], "cost": 6}]},
            "costs[0].cost: c costs 6, more than anonymous admits in a window (5)",
        ),
        ({"rolez": {}}, "top level: unknown key 'rolez'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**changes)
    assert str(caught.value).startswith("limits.yaml: ")
    assert message in str(caught.value)


def test_anonymous_is_required() -> None:
    data = {k: v for k, v in BASE.items() if k != "anonymous"}
    with pytest.raises(ConfigError, match="anonymous: needs the per-address limit"):
        config.parse(data, "limits.yaml")


def test_load_names_the_file_for_unreadable_empty_or_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the limits file"):
        config.load(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=f"{empty}: top level: the file is empty"):
        config.load(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("roles: {viewer: [\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        config.load(broken)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert config.load(good) == parse()


def test_the_services_settings_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "CONFIG", "FAIL_OPEN", "REDIS_TIMEOUT_MS"):
        monkeypatch.delenv(f"NEURAL_RATELIMIT_{name}", raising=False)
    defaults = settings.load("ratelimit")
    assert (defaults.port, defaults.ratelimit_config) == (50056, "")
    assert defaults.ratelimit_fail_open is True
    assert defaults.ratelimit_redis_timeout_ms == 100
    monkeypatch.setenv("NEURAL_RATELIMIT_FAIL_OPEN", "0")
    monkeypatch.setenv("NEURAL_RATELIMIT_CONFIG", "/etc/neural/limits.yaml")
    chosen = settings.load("ratelimit")
    assert chosen.ratelimit_fail_open is False
    assert chosen.ratelimit_config == "/etc/neural/limits.yaml"
    monkeypatch.setenv("NEURAL_RATELIMIT_FAIL_OPEN", "yes")
    with pytest.raises(settings.SettingsError, match="NEURAL_RATELIMIT_FAIL_OPEN must be 1 or 0"):
        settings.load("ratelimit")
