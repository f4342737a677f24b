"""The rate limits: a YAML file read and checked once at start, and the rules that map what
Envoy sends about a call (its descriptors' entries) to the window it counts against and what
it costs there.

A call that names a subject (authz passed it: entries `subject` and `role`) counts against that
subject's own window, sized by the subject's entry under `subjects` or else by its role's; a
call without a subject counts against its remote address's window (`anonymous`). The call's
`path` (and, when sent, its HTTP `method`) decides its cost: the heavy RPCs cost more than one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_FILE = Path(__file__).with_name("limits.yaml")
MAX_WINDOW_SECONDS = 86_400
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class ConfigError(ValueError):
    """The limits file cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Limit:
    """At most `requests` units of cost in any `window_seconds` long stretch of time."""

    requests: int
    window_seconds: int


@dataclass(frozen=True)
class Cost:
    """What one call to any of `paths` costs. A path ending in `*` matches by prefix; the
    query string of a REST path is never part of the match. `methods`, when given, narrows
    the rule to those HTTP methods (REST lists and submits share a path)."""

    name: str
    paths: tuple[str, ...]
    cost: int
    methods: frozenset[str] = frozenset()

    def matches(self, path: str, method: str | None) -> bool:
        # A descriptor without a method entry is charged as if it matched: a call can cost
        # more than it should, never less.
        if self.methods and method is not None and method.upper() not in self.methods:
            return False
        return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in self.paths)


@dataclass(frozen=True)
class Bucket:
    """One sliding window in Redis: `key` names whose calls it counts, `name` says which rule
    sized it (reported to Envoy in the quota policy)."""

    key: str
    name: str
    limit: Limit


@dataclass(frozen=True)
class Config:
    domain: str
    shadow_mode: bool
    roles: Mapping[str, Limit]
    default_role: str
    subjects: Mapping[str, Limit]
    anonymous: Limit
    costs: tuple[Cost, ...]

    def bucket(self, entries: Mapping[str, str]) -> Bucket | None:
        """The window a descriptor counts against: its subject's, else its remote address's;
        None for a descriptor that names neither (nothing to count)."""
        subject = entries.get("subject")
        if subject:
            if subject in self.subjects:
                return Bucket(f"subject:{subject}", f"subject:{subject}", self.subjects[subject])
            role = entries.get("role", "")
            if role not in self.roles:
                role = self.default_role
            return Bucket(f"subject:{subject}", f"role:{role}", self.roles[role])
        address = entries.get("remote_address")
        if address:
            return Bucket(f"address:{address}", "anonymous", self.anonymous)
        return None

    def cost(self, path: str | None, method: str | None = None) -> int:
        """The cost of one call to `path`: the first matching rule's, else 1."""
        if not path:
            return 1
        path = path.split("?", 1)[0]
        for rule in self.costs:
            if rule.matches(path, method):
                return rule.cost
        return 1


# ------------------------------------------------------------------------------ reading
class _Reader:
    """Walks the parsed YAML, naming the file and the field in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {problem}")

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(
                where, f"unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}"
            )
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        # bool is an int to Python; `requests: yes` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(where, f"must be between {low} and {high}, got {value}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def limit(self, value: Any, where: str, default_window: int) -> Limit:
        data = self.mapping(value, where, {"requests", "window_seconds"})
        if "requests" not in data:
            raise self.fail(where, "needs 'requests'")
        return Limit(
            self.integer(data["requests"], f"{where}.requests", 1, 1 << 31),
            self.integer(
                data.get("window_seconds", default_window),
                f"{where}.window_seconds",
                1,
                MAX_WINDOW_SECONDS,
            ),
        )

    def limits(self, value: Any, where: str, default_window: int) -> dict[str, Limit]:
        data = value if value is not None else {}
        if not isinstance(data, dict):
            raise self.fail(where, f"must be a mapping, got {type(data).__name__}")
        return {
            self.string(name, f"{where} key"): self.limit(limit, f"{where}.{name}", default_window)
            for name, limit in data.items()
        }

    def cost(self, value: Any, where: str) -> Cost:
        data = self.mapping(value, where, {"name", "paths", "methods", "cost"})
        for key in ("name", "paths", "cost"):
            if key not in data:
                raise self.fail(where, f"needs {key!r}")
        paths = data["paths"]
        if not isinstance(paths, list) or not paths:
            raise self.fail(f"{where}.paths", "must be a non-empty list of paths")
        for i, path in enumerate(paths):
            if not self.string(path, f"{where}.paths[{i}]").startswith("/"):
                raise self.fail(f"{where}.paths[{i}]", f"must start with '/', got {path!r}")
        methods = data.get("methods", [])
        if not isinstance(methods, list):
            raise self.fail(f"{where}.methods", "must be a list of HTTP methods")
        for i, method in enumerate(methods):
            if method not in HTTP_METHODS:
                raise self.fail(
                    f"{where}.methods[{i}]",
                    f"must be one of {', '.join(sorted(HTTP_METHODS))}, got {method!r}",
                )
        return Cost(
            self.string(data["name"], f"{where}.name"),
            tuple(paths),
            self.integer(data["cost"], f"{where}.cost", 1, 1 << 31),
            frozenset(methods),
        )


TOP_LEVEL = {
    "domain",
    "shadow_mode",
    "window_seconds",
    "roles",
    "default_role",
    "subjects",
    "anonymous",
    "costs",
}


def parse(data: Any, source: str = "limits") -> Config:
    """The configuration in `data` (parsed YAML), or a ConfigError naming what is wrong."""
    r = _Reader(source)
    top = r.mapping(data, "top level", TOP_LEVEL)
    if not top:
        raise r.fail("top level", "the file is empty")
    window = r.integer(top.get("window_seconds", 60), "window_seconds", 1, MAX_WINDOW_SECONDS)
    shadow = top.get("shadow_mode", False)
    if not isinstance(shadow, bool):
        raise r.fail("shadow_mode", f"must be true or false, got {shadow!r}")
    roles = r.limits(top.get("roles"), "roles", window)
    if not roles:
        raise r.fail("roles", "needs a limit for at least one role")
    default_role = r.string(top.get("default_role", "viewer"), "default_role")
    if default_role not in roles:
        raise r.fail(
            "default_role", f"{default_role!r} has no limit under roles ({', '.join(roles)})"
        )
    if "anonymous" not in top:
        raise r.fail("anonymous", "needs the per-address limit of calls without a subject")
    anonymous = r.limit(top["anonymous"], "anonymous", window)
    costs_data = top.get("costs") or []
    if not isinstance(costs_data, list):
        raise r.fail("costs", "must be a list of rules")
    costs = tuple(r.cost(rule, f"costs[{i}]") for i, rule in enumerate(costs_data))
    config = Config(
        domain=r.string(top.get("domain", "neural"), "domain"),
        shadow_mode=shadow,
        roles=roles,
        default_role=default_role,
        subjects=r.limits(top.get("subjects"), "subjects", window),
        anonymous=anonymous,
        costs=costs,
    )
    _check_costs_fit(config, r)
    return config


def _check_costs_fit(config: Config, r: _Reader) -> None:
    """A call that costs more than a window holds could never be admitted: refuse to start
    rather than refuse those calls forever."""
    limits = {f"roles.{k}": v for k, v in config.roles.items()}
    limits |= {f"subjects.{k}": v for k, v in config.subjects.items()}
    limits["anonymous"] = config.anonymous
    for i, rule in enumerate(config.costs):
        for where, limit in limits.items():
            if rule.cost > limit.requests:
                raise r.fail(
                    f"costs[{i}].cost",
                    f"{rule.name} costs {rule.cost}, more than {where} admits in a window "
                    f"({limit.requests}): such calls could never pass",
                )


def load(path: str | Path | None = None) -> Config:
    """The limits file at `path` (the packaged limits.yaml when empty), checked."""
    file = Path(path) if path else DEFAULT_FILE
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the limits file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return parse(data, str(file))
