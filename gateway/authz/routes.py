"""Which RPC a request through Envoy asks for, and the role it needs, from the protos.

A gRPC request names its RPC in the path (`/neural.v1.CompilerService/Validate`); a REST one
matches one of the RPCs' google.api.http rules (`POST /v1/programs:validate`). Both lead to
the same gRPC path, whose `(neural.v1.required_role)` says who may call it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool
from service_kit.interceptors import ALWAYS_PUBLIC
from service_kit.roles import INFERENCE_ROLES, load_all, service_roles

VERBS = ("get", "put", "post", "delete", "patch")
Rule = tuple[re.Pattern[str], "Route"]


@dataclass(frozen=True)
class Route:
    rpc: str  # the gRPC path
    role: str  # "" when public


def _segment(pattern: str) -> str:
    """A path template's segment pattern (google/api/http.proto) as a regular expression."""
    if pattern == "**":
        return ".+"
    if pattern == "*":
        return "[^/]+"
    return re.escape(pattern)


def template_regex(template: str) -> re.Pattern[str]:
    """`/v1/runs/{run_id}/artifacts/{path=**}:download` -> a regex matching such paths."""
    out = []
    pos = 0
    for m in re.finditer(r"\{[a-zA-Z_][\w.]*(?:=([^{}]+))?\}", template):
        out.append(_literal(template[pos : m.start()]))
        inner = m.group(1)
        out.append("/".join(_segment(p) for p in inner.split("/")) if inner else "[^/:]+")
        pos = m.end()
    out.append(_literal(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def _literal(text: str) -> str:
    return "/".join(_segment(p) if p in ("*", "**") else re.escape(p) for p in text.split("/"))


def _head(path: str) -> tuple[str, str]:
    """A path's first two segments, the second without a custom verb (`/v1/runs:search` and
    `/v1/runs/r1` -> ("v1", "runs")): what a request must share with a template whose first
    two segments are literal to match it."""
    parts = path.split("/", 3)
    first = parts[1] if len(parts) > 1 else ""
    second = parts[2].split(":", 1)[0] if len(parts) > 2 else ""
    return first, second


class Routes:
    """Every neural.v1 RPC: by gRPC path, and by REST method and path."""

    def __init__(self) -> None:
        # Health and reflection are public everywhere (Envoy skips ext_authz for them too).
        self.by_rpc: dict[str, Route] = {path: Route(path, "") for path in ALWAYS_PUBLIC}
        # Predictions (the Open Inference Protocol), gRPC only: no HTTP rules of ours.
        self.by_rpc.update({path: Route(path, role) for path, role in INFERENCE_ROLES.items()})
        self.rest: list[tuple[str, re.Pattern[str], Route]] = []
        self._templates: list[str] = []  # beside self.rest
        pool = descriptor_pool.Default()
        for service in load_all():
            roles = service_roles(service)
            for method in pool.FindServiceByName(service).methods:
                path = f"/{service}/{method.name}"
                route = Route(path, roles.get(path, ""))
                self.by_rpc[path] = route
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    self._add(binding, route)
        self._index()

    def _add(self, rule: http_pb2.HttpRule, route: Route) -> None:
        kind = rule.WhichOneof("pattern")
        if kind is None:
            return
        if kind == "custom":
            verb, template = rule.custom.kind.upper(), rule.custom.path
        else:
            verb, template = kind.upper(), getattr(rule, kind)
        self.rest.append((verb, template_regex(template), route))
        self._templates.append(template)

    def _index(self) -> None:
        """The REST rules a request can match, by its verb and the head of its path, in the
        rules' order (the first match wins, as in a scan of them all): a template with a
        variable in its head is a candidate for every head."""
        literal: dict[tuple[str, str, str], list[int]] = {}
        anywhere: dict[str, list[int]] = {}
        for i, ((verb, _, _), template) in enumerate(zip(self.rest, self._templates, strict=True)):
            head = _head(template)
            if any(c in part for part in head for c in "{*") or not all(head):
                anywhere.setdefault(verb, []).append(i)
            else:
                literal.setdefault((verb, *head), []).append(i)
        # verb, head -> candidates; verb -> the candidates of any other head
        self._by_head: dict[tuple[str, str, str], list[Rule]] = {}
        self._by_verb: dict[str, list[Rule]] = {}
        for verb, found in anywhere.items():
            self._by_verb[verb] = [self.rest[i][1:] for i in found]
        for key, found in literal.items():
            merged = sorted(found + anywhere.get(key[0], []))
            self._by_head[key] = [self.rest[i][1:] for i in merged]

    def find(self, method: str, path: str) -> Route | None:
        """The RPC an HTTP request asks for (gRPC or REST), or None when it names none."""
        path = path.split("?", 1)[0]
        hit = self.by_rpc.get(path)
        if hit is not None:
            return hit
        verb = method.upper()
        candidates = self._by_head.get((verb, *_head(path)))
        if candidates is None:
            candidates = self._by_verb.get(verb, [])
        for regex, route in candidates:
            if regex.match(path):
                return route
        return None
