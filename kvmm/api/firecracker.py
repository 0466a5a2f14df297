"""Firecracker's REST API, served by kvmm.

Kata Containers, flintlock, firecracker-containerd and the Firecracker SDKs
drive a `firecracker` process over HTTP/1.1 on a Unix socket; kvmm answers the
same paths, with the same status codes and the same `fault_message` texts, so
that it can stand in for it. The paths, pre-/post-boot rules and messages
follow Firecracker's `src/firecracker/swagger/firecracker.yaml`,
`src/firecracker/src/api_server/parsed_request.rs` (and `request/*.rs`) and
`src/vmm/src/rpc_interface.rs`; `kvmm/api/openapi.yaml` documents exactly what
is served here.

This layer checks what Firecracker's API thread checks: the body is a JSON
object, the id in the path matches the id in the body, the operation is
allowed before/after boot, and `action_type` / `state` take known values.
Everything else (field names, types, ranges) is the lifecycle object's job:
its spec and action errors are ValueErrors and come back as 400 with the
error text; any other exception is a 500, logged, and the server goes on.

kvmm's own extensions live under `/kvmm/` (allowed only after boot):
    GET   /kvmm/stats                    counters of the running guest
    PATCH /kvmm/rate-limiters/{target}   replace a rate limiter; target is
          drives, nets:rx, nets:tx, drive:ID, net:ID:rx, net:ID:tx...; the
          body is Firecracker's RateLimiter object
"""
from __future__ import annotations

import json

from kvmm.api.http import DEFAULT_MAX_BODY, HttpServer, Response, fault
from kvmm.spec.base import json_kind



def _logging_configured() -> bool:
    """A logger was configured (--log-path, PUT /logger); without one, logging
    is never imported on the API's path."""
    import sys
    module = sys.modules.get("kvmm.api.logger")
    return module is not None and module.active()


def _log():
    """This module's logger (logging is imported on first use: the API's start-up
    path stays lean)."""
    import logging
    return logging.getLogger(__name__)

# Messages as Firecracker words them (parsed_request.rs, request/*.rs, rpc_interface.rs).
MSG_POST_BOOT = "The requested operation is not supported after starting the microVM."
MSG_PRE_BOOT = "The requested operation is not supported before starting the microVM."
MSG_ID_MISMATCH = "The id from the path does not match the id from the body!"
MSG_EMPTY_ID = "The ID cannot be empty."
MSG_INVALID_ID = "API Resource IDs can only contain alphanumeric characters and underscores."
MSG_GET_BODY = "GET request cannot have a body."
MSG_EMPTY_PUT = "Empty PUT request."
MSG_EMPTY_PATCH = "Empty PATCH request."
MSG_DESERIALIZE = "An error occurred when deserializing the json body of a request: {}."


def msg_invalid_path(method: str, resource: str) -> str:
    # RequestError::InvalidPathMethod; Firecracker names the first path segment.
    return f"Invalid request method and/or path: {method} {resource}."


def msg_net_id_mismatch(path_id: str, body_id: str) -> str:
    # request/net.rs words the network-interface mismatch with both ids.
    return f"The id from the path [{path_id}] does not match the id from the body [{body_id}]!"


# Firecracker resources kvmm does not implement: every method on them is answered 400.
UNSUPPORTED = {
    "balloon": "the balloon device",
    "vsock": "the vsock device",
    "entropy": "the entropy device",
    "pmem": "the pmem device",
    "snapshot": "snapshots",
    "cpu-config": "custom CPU templates",
    "hotplug": "memory hotplug",
    "serial": "configuring the serial console through the API",
}


def _split(path: str) -> list[str]:
    """Path segments as Firecracker takes them: leading slashes trimmed, one trailing
    empty segment dropped ("/" -> [], "/drives/" -> ["drives"])."""
    segments = path.lstrip("/").split("/")
    if segments and segments[-1] == "":
        segments.pop()
    return segments


class Phase:
    """When a route may be used, relative to InstanceStart."""
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def allows(self, started: bool) -> bool:
        return self is Phase.ANY or (self is Phase.PRE) != started

    def __repr__(self) -> str:
        return f"Phase({self.name!r})"


Phase.PRE = Phase("pre-boot")
Phase.POST = Phase("post-boot")
Phase.ANY = Phase("any")
Phase.PER_ACTION = Phase("per action")     # PUT /actions: each action_type has its own rule


class Route:
    """One route: `pattern` "/drives/{drive_id}" (one {name} stands for one path
    segment), the FirecrackerApi method that serves it, and the body field that
    must repeat the path id."""
    __slots__ = ("method", "pattern", "phase", "handler", "id_field", "segments")

    def __init__(self, method: str, pattern: str, phase: Phase, handler: str,
                 id_field: str | None = None):
        self.method = method
        self.pattern = pattern
        self.phase = phase
        self.handler = handler
        self.id_field = id_field
        self.segments = _split(pattern)

    def __repr__(self) -> str:
        return f"Route({self.method} {self.pattern})"


ROUTES: tuple[Route, ...] = (
    Route("GET", "/", Phase.ANY, "get_instance_info"),
    Route("GET", "/version", Phase.ANY, "get_version"),
    Route("GET", "/vm/config", Phase.ANY, "get_vm_config"),
    Route("GET", "/machine-config", Phase.ANY, "get_machine_config"),
    Route("GET", "/mmds", Phase.ANY, "get_mmds"),
    Route("PUT", "/actions", Phase.PER_ACTION, "put_actions"),
    Route("PUT", "/boot-source", Phase.PRE, "put_boot_source"),
    Route("PUT", "/machine-config", Phase.PRE, "put_machine_config"),
    Route("PATCH", "/machine-config", Phase.PRE, "patch_machine_config"),
    Route("PUT", "/drives/{drive_id}", Phase.PRE, "put_drive", "drive_id"),
    Route("PATCH", "/drives/{drive_id}", Phase.POST, "patch_drive", "drive_id"),
    Route("PUT", "/network-interfaces/{iface_id}", Phase.PRE, "put_network_interface",
          "iface_id"),
    Route("PATCH", "/network-interfaces/{iface_id}", Phase.POST, "patch_network_interface",
          "iface_id"),
    Route("PUT", "/logger", Phase.PRE, "put_logger"),
    Route("PUT", "/metrics", Phase.PRE, "put_metrics"),
    Route("PUT", "/mmds", Phase.ANY, "put_mmds"),
    Route("PATCH", "/mmds", Phase.ANY, "patch_mmds"),
    Route("PUT", "/mmds/config", Phase.PRE, "put_mmds_config"),
    Route("PATCH", "/vm", Phase.POST, "patch_vm"),
    # kvmm's own extensions.
    Route("GET", "/kvmm/stats", Phase.POST, "get_stats"),
    Route("PATCH", "/kvmm/rate-limiters/{target}", Phase.POST, "patch_rate_limiter"),
)

# PUT /actions: action_type -> (when it is allowed, the vmm method it calls).
ACTIONS: dict[str, tuple[Phase, str]] = {
    "FlushMetrics": (Phase.ANY, "flush_metrics"),
    "InstanceStart": (Phase.PRE, "instance_start"),
    "SendCtrlAltDel": (Phase.POST, "send_ctrl_alt_del"),
}

# PATCH /vm: state -> the vmm method it calls.
VM_STATES: dict[str, str] = {"Paused": "pause", "Resumed": "resume"}

NO_CONTENT = Response(204)


class ApiError(Exception):
    """A request this layer refuses before it reaches the vmm."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class FirecrackerApi:
    """Maps Firecracker's REST requests onto a kvmm lifecycle object `vmm`.

    `handle` is the HttpServer handler; it runs on the event-loop thread and
    never raises.
    """

    def __init__(self, vmm):
        self.vmm = vmm

    def handle(self, method: str, target: str, body: bytes) -> Response:
        path = _path_of(target)
        if _logging_configured():       # Firecracker logs every request it receives
            _log().info("The API server received a %s request on \"%s\" with body %r.",
                        method.capitalize(), path, body.decode("utf-8", "replace")[:200])
        try:
            route, params = self._route(method, path, body)
            if route.phase is not Phase.PER_ACTION and not route.phase.allows(self.vmm.started):
                # Firecracker's API thread parses the body before the VMM refuses the
                # phase, so a bad body is reported first.
                self._body_of(route, params, body)
                raise ApiError(MSG_POST_BOOT if self.vmm.started else MSG_PRE_BOOT)
            return getattr(self, route.handler)(params, self._body_of(route, params, body))
        except ApiError as e:
            _log().info("%s %s: %d %s", method, path, e.status, e)
            return fault(e.status, str(e))
        except ValueError as e:
            _log().info("%s %s: 400 %s", method, path, e)
            return fault(400, str(e) or type(e).__name__)
        except Exception as e:
            _log().exception("%s %s: internal error", method, path)
            return fault(500, f"Internal error in kvmm while handling {method} {path}: "
                              f"{type(e).__name__}: {e}")

    # Routing. --------------------------------------------------------------
    def _route(self, method: str, path: str, body: bytes) -> tuple[Route, dict[str, str]]:
        segments = _split(path)
        resource = segments[0] if segments else ""
        # parsed_request.rs checks the body's presence against the method first.
        if method == "GET" and body:
            raise ApiError(MSG_GET_BODY)
        if method == "PUT" and not body:
            raise ApiError(MSG_EMPTY_PUT)
        if method == "PATCH" and not body:
            raise ApiError(MSG_EMPTY_PATCH)
        if resource in UNSUPPORTED:
            raise ApiError(f"kvmm does not support {UNSUPPORTED[resource]} yet "
                           f"({method} {path}).")
        for route in ROUTES:
            if route.method != method:
                continue
            params = _match(route.segments, segments)
            if params is not None:
                return route, params
        # Firecracker answers a missing id ("/drives") with EmptyID.
        if any(route.method == method and route.id_field
               and route.segments[:-1] == segments for route in ROUTES):
            raise ApiError(MSG_EMPTY_ID)
        raise ApiError(msg_invalid_path(method, resource))

    def _body_of(self, route: Route, params: dict[str, str], body: bytes) -> dict | None:
        if route.method == "GET":
            return None
        obj = parse_body(body)
        if route.id_field is not None:
            path_id = params[route.id_field]
            check_id(path_id)
            body_id = _required_str(obj, route.id_field)
            if body_id != path_id:
                if route.id_field == "iface_id":
                    raise ApiError(msg_net_id_mismatch(path_id, body_id))
                raise ApiError(MSG_ID_MISMATCH)
        return obj

    # Handlers: each takes the path parameters and the parsed body. ---------
    def get_instance_info(self, params, body) -> Response:
        return Response(200, self.vmm.instance_info())

    def get_version(self, params, body) -> Response:
        return Response(200, {"firecracker_version": self.vmm.version()})

    def get_vm_config(self, params, body) -> Response:
        return Response(200, self.vmm.get_vm_config())

    def get_machine_config(self, params, body) -> Response:
        return Response(200, self.vmm.get_machine_config())

    def get_mmds(self, params, body) -> Response:
        value = self.vmm.get_mmds()
        return Response(200, {} if value is None else value)   # Firecracker: null reads as {}

    def put_actions(self, params, body) -> Response:
        unknown = sorted(set(body) - {"action_type"})
        if unknown:
            raise ApiError(MSG_DESERIALIZE.format(
                f"unknown field `{unknown[0]}`, expected `action_type`"))
        action = _required_str(body, "action_type")
        if action not in ACTIONS:
            raise ApiError(MSG_DESERIALIZE.format(
                f"unknown variant `{action}`, expected one of "
                + ", ".join(f"`{name}`" for name in ACTIONS)))
        phase, vmm_method = ACTIONS[action]
        if not phase.allows(self.vmm.started):
            raise ApiError(MSG_POST_BOOT if self.vmm.started else MSG_PRE_BOOT)
        getattr(self.vmm, vmm_method)()
        return NO_CONTENT

    def put_boot_source(self, params, body) -> Response:
        self.vmm.put_boot_source(body)
        return NO_CONTENT

    def put_machine_config(self, params, body) -> Response:
        self.vmm.put_machine_config(body)
        return NO_CONTENT

    def patch_machine_config(self, params, body) -> Response:
        if not body:
            raise ApiError(MSG_EMPTY_PATCH)    # request/machine_configuration.rs
        self.vmm.patch_machine_config(body)
        return NO_CONTENT

    def put_drive(self, params, body) -> Response:
        self.vmm.put_drive(params["drive_id"], body)
        return NO_CONTENT

    def patch_drive(self, params, body) -> Response:
        self.vmm.patch_drive(params["drive_id"], body)
        return NO_CONTENT

    def put_network_interface(self, params, body) -> Response:
        self.vmm.put_network_interface(params["iface_id"], body)
        return NO_CONTENT

    def patch_network_interface(self, params, body) -> Response:
        self.vmm.patch_network_interface(params["iface_id"], body)
        return NO_CONTENT

    def put_logger(self, params, body) -> Response:
        self.vmm.put_logger(body)
        return NO_CONTENT

    def put_metrics(self, params, body) -> Response:
        self.vmm.put_metrics(body)
        return NO_CONTENT

    def put_mmds(self, params, body) -> Response:
        self.vmm.put_mmds(body)
        return NO_CONTENT

    def patch_mmds(self, params, body) -> Response:
        self.vmm.patch_mmds(body)
        return NO_CONTENT

    def put_mmds_config(self, params, body) -> Response:
        self.vmm.put_mmds_config(body)
        return NO_CONTENT

    def patch_vm(self, params, body) -> Response:
        state = _required_str(body, "state")
        if state not in VM_STATES:
            raise ApiError(MSG_DESERIALIZE.format(
                f"unknown variant `{state}`, expected `Paused` or `Resumed`"))
        getattr(self.vmm, VM_STATES[state])()
        return NO_CONTENT

    def get_stats(self, params, body) -> Response:
        return Response(200, self.vmm.stats())

    def patch_rate_limiter(self, params, body) -> Response:
        self.vmm.patch_rate_limiter(params["target"], body)
        return NO_CONTENT


def serve(path: str, loop, vmm, max_body: int = DEFAULT_MAX_BODY) -> HttpServer:
    """Serve Firecracker's API for `vmm` on the Unix socket `path`, on `loop`."""
    return HttpServer(path, loop, FirecrackerApi(vmm).handle, max_body)


# Helpers. ------------------------------------------------------------------
def parse_body(body: bytes) -> dict:
    """The request body as a JSON object, or an ApiError naming what is wrong."""
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(MSG_DESERIALIZE.format("the JSON nests too deeply")) from None
    except ValueError as e:      # includes UnicodeDecodeError and JSONDecodeError
        raise ApiError(MSG_DESERIALIZE.format(f"not valid JSON ({e})")) from None
    if not isinstance(obj, dict):
        raise ApiError(MSG_DESERIALIZE.format(
            f"expected a JSON object, got {json_kind(obj)}"))
    return obj


def check_id(resource_id: str) -> None:
    """parsed_request.rs checked_id: non-empty, alphanumerics and underscores only."""
    if not resource_id:
        raise ApiError(MSG_EMPTY_ID)
    if not all(c == "_" or c.isalnum() for c in resource_id):
        raise ApiError(MSG_INVALID_ID)


def _required_str(obj: dict, field: str) -> str:
    if field not in obj:
        raise ApiError(MSG_DESERIALIZE.format(f"missing field `{field}`"))
    value = obj[field]
    if not isinstance(value, str):
        raise ApiError(MSG_DESERIALIZE.format(
            f"invalid type for `{field}`: {json_kind(value)}, expected a string"))
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _path_of(target: str) -> str:
    """The path of a request target, origin form ("/a?q") or absolute form
    ("http://localhost/a"), without its query."""
    if not target.startswith("/") and "://" in target:
        rest = target.split("://", 1)[1]              # authority, then the path
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return target.split("?", 1)[0].split("#", 1)[0]


def _match(pattern: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params = {}
    for want, got in zip(pattern, segments):
        if want.startswith("{") and want.endswith("}"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params

