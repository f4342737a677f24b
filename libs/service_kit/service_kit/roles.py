"""The role each RPC needs, read from the protos' `(neural.v1.required_role)` method option,
and the one resource it acts on, from `(neural.v1.resource)`.

The protos are the one place roles are declared: the services' interceptor and the authz
service both read them here, from the descriptors the generated stubs register, so there is
no second table to keep in step. An RPC without the option is public.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from neural.v1 import options_pb2

ROLES = ("viewer", "user", "admin")  # each includes the ones before it
PACKAGE = "neural.v1"


def _service(name: str) -> ServiceDescriptor:
    try:
        return descriptor_pool.Default().FindServiceByName(name)
    except KeyError:
        raise LookupError(f"no service {name} among the loaded protos") from None


def _declared(service: ServiceDescriptor) -> dict[str, str]:
    """gRPC path -> declared role ("" for public) of every RPC of the service."""
    table = {}
    for method in service.methods:
        role = method.GetOptions().Extensions[options_pb2.required_role]
        if role and role not in ROLES:
            # A typo in a proto must stop the server, not quietly make an RPC public.
            raise ValueError(f"{method.full_name}: required_role {role!r} is not one of {ROLES}")
        table[f"/{service.full_name}/{method.name}"] = role
    return table


@cache
def service_roles(name: str) -> dict[str, str]:
    """gRPC path ("/neural.v1.X/Method") -> role, for each RPC of service `name` that needs one.

    The service's generated module must be imported first (its servicer's module does)."""
    return {path: role for path, role in _declared(_service(name)).items() if role}


@cache
def public_methods(name: str) -> frozenset[str]:
    """The gRPC paths of service `name` that declare no role: callable without credentials."""
    return frozenset(path for path, role in _declared(_service(name)).items() if not role)


# The Open Inference Protocol's RPCs (a protocol of others: no options of ours in its proto),
# as the model replicas and the authz service both hold them. "" is public, as health is.
INFERENCE_SERVICE = "inference.GRPCInferenceService"
INFERENCE_ROLES = {
    f"/{INFERENCE_SERVICE}/{name}": role
    for name, role in (
        ("ServerLive", ""),
        ("ServerReady", ""),
        ("ModelReady", "viewer"),
        ("ServerMetadata", "viewer"),
        ("ModelMetadata", "viewer"),
        ("ModelInfer", "user"),
    )
}


_TEMPLATE = re.compile(r"^([a-z][a-z-]*)/\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\}$")


@dataclass(frozen=True)
class Resource:
    """`runs/{run_id}`: a collection and the request field (a dotted path) holding the id."""

    collection: str
    field: tuple[str, ...]

    @classmethod
    def parse(cls, template: str, request: Descriptor, where: str) -> Resource:
        m = _TEMPLATE.match(template)
        if m is None:
            raise ValueError(f"{where}: resource {template!r} is not like 'runs/{{run_id}}'")
        path = tuple(m.group(2).split("."))
        message: Descriptor | None = request
        for name in path:
            found = message.fields_by_name.get(name) if message is not None else None
            if found is None:
                raise ValueError(f"{where}: resource {template!r} names no field {name!r}")
            message = found.message_type
        if message is not None:
            raise ValueError(f"{where}: resource {template!r} must end at a string field")
        return cls(m.group(1), path)

    def of(self, request: Any) -> str:
        """The resource name the request asks for, e.g. `runs/3f2a...`."""
        value = request
        for name in self.field:
            value = getattr(value, name)
        return f"{self.collection}/{value}"


@cache
def service_resources(name: str) -> dict[str, Resource]:
    """gRPC path -> the resource of each RPC of service `name` that declares one."""
    table = {}
    for method in _service(name).methods:
        template = method.GetOptions().Extensions[options_pb2.resource]
        if template:
            # A malformed template must stop the server, not quietly lift a key's limits.
            where = method.full_name
            table[f"/{name}/{method.name}"] = Resource.parse(template, method.input_type, where)
    return table


@cache
def collections() -> frozenset[str]:
    """Every collection a resource template names ("runs", "jobs", ...): what a key may be
    limited to."""
    return frozenset(
        r.collection for service in load_all() for r in service_resources(service).values()
    )


def load_all() -> list[str]:
    """Import every generated module of neural.v1 and return the full names of its services:
    for a server that answers for all of them (the authz service, reflection)."""
    import neural.v1 as package

    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"{PACKAGE}.{info.name}")
            names.extend(s.full_name for s in module.DESCRIPTOR.services_by_name.values())
    return sorted(names)


__all__ = [
    "INFERENCE_ROLES",
    "INFERENCE_SERVICE",
    "ROLES",
    "Resource",
    "collections",
    "load_all",
    "public_methods",
    "service_resources",
    "service_roles",
]
